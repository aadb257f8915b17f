"""In-process A/B of one kernel hook, session 11: the thread team (`team`: on, or
threads started per call) or packing on threads (`pack`: at any size, or from the
default 1 MiB). Alternating blocks, medians in microseconds, x = off / on.

    python 2026-11-30-hook-ab.py team|pack LSTM,GRU,RNN 8x16x64x128,100x32x256x256 [spin_ns]
"""
import sys
import time

import numpy as np

import rnncore
from rnncore._kernels import gru, lstm, rnn

MODS = (rnn, gru, lstm)
HOOK, CELLS = sys.argv[1], sys.argv[2].split(",")
SHAPES = [tuple(int(v) for v in s.split("x")) for s in sys.argv[3].split(",")]
SPIN = int(sys.argv[4]) if len(sys.argv) > 4 else -1
NAMES = {"team": ("spawn", "team"), "pack": ("default", "any-size")}[HOOK]


def set_hook(on):
    for m in MODS:
        if HOOK == "team":
            m._set_thread_team(on, SPIN)
        else:
            m._set_pack_threads(0 if on else None)


def times(f, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return out


for cell in CELLS:
    for T, N, D, H in SHAPES:
        x = np.random.default_rng(0).standard_normal((N, T, D)).astype(np.float32)
        d = np.ones((N, T, H), np.float32)
        m = getattr(rnncore, cell)(D, H, seed=0, batch_first=True)

        def inf():
            m.eval()
            m(x)

        def fb():
            m.train()
            m(x)
            m.backward(d)
        n = max(5, int(0.05 / (T * N * (D + H) * H * 4 * 2e-11 + 2e-5)))
        r = {}
        for name, f in (("inf", inf), ("fb", fb)):
            res = {True: [], False: []}
            for b in range(6):
                on = b % 2 == 0
                set_hook(on)
                f()
                res[on] += times(f, n)
            set_hook(HOOK == "team")    # back to the default
            r[name] = (np.median(res[False]) * 1e6, np.median(res[True]) * 1e6)
        off, on = NAMES
        print(f"{cell:4s} ({T},{N},{D},{H})  inf {off} {r['inf'][0]:8.0f} {on} {r['inf'][1]:8.0f} "
              f"x{r['inf'][0] / r['inf'][1]:.2f} | fb {off} {r['fb'][0]:8.0f} {on} "
              f"{r['fb'][1]:8.0f} x{r['fb'][0] / r['fb'][1]:.2f}", flush=True)
