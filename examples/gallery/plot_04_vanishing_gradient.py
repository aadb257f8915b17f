r"""
Vanishing gradients: RNN, GRU and LSTM
======================================

How much does the output at the last step depend on an input :math:`k` steps
earlier? Back-propagate a gradient from the last step only and measure
:math:`\lVert \partial L / \partial x_{T-k} \rVert` for each distance :math:`k`.
For a vanilla RNN this is a product of :math:`k` Jacobians
:math:`\operatorname{diag}(1 - h_t^2) W_h^\top` and decays geometrically; the
LSTM's additive cell update :math:`c_t = f_t \odot c_{t-1} + i_t \odot g_t`
carries it further — when the forget gate is open. At PyTorch's default
initialisation the forget gate sits near :math:`\sigma(0) = 0.5` and the LSTM
forgets as fast as the RNN; the common remedy (Gers et al. 2000; Jozefowicz et
al. 2015) is a positive forget-gate bias, which keeps :math:`f_t` near one.
"""
import matplotlib.pyplot as plt
import numpy as np

import rnncore

T, N, D, H = 200, 16, 32, 64
rng = np.random.default_rng(0)
x = rng.standard_normal((T, N, D))                     # (T, N, D), float64


def gradient_by_distance(model):
    """Norm of dL/dx_t against the distance T-1-t, L = <v, h_T>."""
    out, _ = model(x)                                   # training mode: keeps activations
    dout = np.zeros_like(out)
    dout[-1] = rng.standard_normal(out[-1].shape)       # a loss on the last step only
    dx, _ = model.backward(dout)                        # (T, N, D)
    norms = np.linalg.norm(dx, axis=2).mean(axis=1)     # mean over the batch
    return norms[::-1]                                  # index = distance


def lstm_forget_bias(bias, seed):
    """An LSTM whose forget-gate bias (gate block 2 of i, f, g, o) is raised."""
    lstm = rnncore.LSTM(D, H, dtype=np.float64, seed=seed)
    lstm.bias_ih_l0[H:2 * H] += bias                    # the parameter, in place
    return lstm


# %%
# Three seeds per model, float64 (no underflow down to 1e-300).
makers = {
    "RNN (tanh)": lambda s: rnncore.RNN(D, H, dtype=np.float64, seed=s),
    "GRU": lambda s: rnncore.GRU(D, H, dtype=np.float64, seed=s),
    "LSTM": lambda s: rnncore.LSTM(D, H, dtype=np.float64, seed=s),
    "LSTM, forget bias +1": lambda s: lstm_forget_bias(1.0, s),
    "LSTM, forget bias +3": lambda s: lstm_forget_bias(3.0, s),
}
curves = {}
for name, make in makers.items():
    curves[name] = np.mean([gradient_by_distance(make(s)) for s in range(3)], axis=0)
    print(f"{name:21s} |dL/dx| at distance 1: {curves[name][1]:.2e}, "
          f"50: {curves[name][50]:.2e}, 199: {curves[name][199]:.2e}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, norms in curves.items():
    ax.semilogy(np.arange(T), norms, lw=2, label=name)
ax.set_xlabel("distance k from the last step")
ax.set_ylabel(r"$\Vert \partial L / \partial x_{T-k} \Vert$ (mean over batch)")
ax.set_title(f"Gradient reaching earlier inputs (H = {H}, untrained)")
ax.legend()
ax.grid(True, which="major", alpha=0.3)
fig.tight_layout()

# %%
# With random weights the slope of each line is the per-step decay rate. Training
# changes it, but the geometric decay is why a vanilla RNN struggles with long
# dependencies, and the LSTM's open forget gate is what lets it learn them; gradient clipping (:func:`rnncore.clip_grad_norm_`) handles the
# opposite case, gradients that explode.
