"""Draw the static figures of the user guide (run by hand; the PNGs are committed).

    python docs/make_figures.py      # writes docs/_static/shapes.png
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def grid(ax, x0, y0, rows, cols, label_row, label_col, color, title, cell=0.5):
    """A rows x cols block of cells with axis labels; returns its right edge."""
    for i in range(rows):
        for j in range(cols):
            ax.add_patch(Rectangle((x0 + j * cell, y0 - (i + 1) * cell), cell, cell,
                                   facecolor=color(i, j), edgecolor="white", linewidth=1.5))
    ax.text(x0 + cols * cell / 2, y0 + 0.25, title, ha="center", va="bottom", fontsize=10)
    ax.text(x0 + cols * cell / 2, y0 - rows * cell - 0.3, label_col, ha="center", va="top",
            fontsize=9)
    ax.text(x0 - 0.25, y0 - rows * cell / 2, label_row, ha="right", va="center", fontsize=9,
            rotation=90)
    return x0 + cols * cell


def main():
    fig, ax = plt.subplots(figsize=(9.5, 4.2), dpi=110)
    ax.set_xlim(0, 19)
    ax.set_ylim(-3.7, 1.4)
    ax.axis("off")
    cmap = plt.get_cmap("tab10")
    T, N = 4, 3

    def by_seq(i, j):      # colour = sequence n, shade = step t
        return (*cmap(i % 10)[:3], 0.35 + 0.65 * (j + 1) / T)

    def by_seq_tm(i, j):   # time-major: rows are steps, columns sequences
        return (*cmap(j % 10)[:3], 0.35 + 0.65 * (i + 1) / T)

    # models, batch_first=False: x (T, N, D)
    grid(ax, 1.0, 0.6, T, N, "T steps", "N sequences", by_seq_tm,
         "x (T, N, D)\nbatch_first=False", cell=0.6)
    # models, batch_first=True / functional: x (N, T, D)
    grid(ax, 5.6, 0.6, N, T, "N sequences", "T steps", by_seq,
         "x (N, T, D)\nbatch_first=True, functional API", cell=0.6)
    ax.text(4.2, -1.2, "the same\nsequences", ha="center", va="center", fontsize=8,
            color="0.35")
    # the hidden states and the states h0/h_n
    grid(ax, 11.0, 0.6, N, T, "N", "T", by_seq, "out (N, T, dirs*H)", cell=0.6)
    grid(ax, 15.6, 0.6, 2, N, "L*dirs", "N", lambda i, j: (*cmap(j)[:3], 0.9),
         "h0, h_n (L*dirs, N, H)\nwhatever batch_first", cell=0.6)
    ax.add_patch(FancyArrowPatch((8.3, -0.9), (10.8, -0.9), arrowstyle="-|>",
                                 mutation_scale=14, color="0.3"))
    ax.text(9.55, -0.75, "model(x)", ha="center", va="bottom", fontsize=9)
    ax.text(9.5, -3.6,
            "Colour: one sequence (row n of the batch); shade: its step t. Each cell is a "
            "feature vector (D, or H wide).\nWeights: models store PyTorch's weight_ih (G*H, D), "
            "weight_hh (G*H, H); the functional API takes Wx = weight_ih.T (D, G*H), "
            "Wh = weight_hh.T (H, G*H).",
            ha="center", va="bottom", fontsize=8, color="0.25")
    fig.tight_layout()
    out = os.path.join(HERE, "_static", "shapes.png")
    fig.savefig(out)
    print("wrote", out)


if __name__ == "__main__":
    main()
