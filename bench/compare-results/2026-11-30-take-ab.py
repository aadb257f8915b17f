"""In-process A/B of the thread team's taking (session 12): the caller runs the tasks
no worker has started (take) or waits for those workers (wait). Alternating blocks
(bench/fusing_ab.timed_ab), medians in ms, x = wait / take; `taken`: tasks the caller
took during the row. `load` runs one busy process beside it (_harness.load.Load).

    python 2026-11-30-take-ab.py quiet|load rnn,gru,lstm fwd,fb 100,16,64,128 ...
"""
import sys, numpy as np
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__import__("os").path.abspath(__file__)), ".."))
from fusing_ab import timed_ab
from weight_grads_ab import make_model
from threadpoolctl import threadpool_limits
from rnncore._kernels import gru, lngru, lnlstm, lstm, rnn
mods = (rnn, gru, lstm, lngru, lnlstm)
def set_kernel(on):
    for m in mods: m._set_thread_team(True, -1, bool(on))
load = None
if sys.argv[1] == "load":
    from _harness.load import Load
    load = Load(1)
cells = sys.argv[2].split(","); passes = sys.argv[3].split(",")
shapes = [tuple(int(v) for v in s.split(",")) for s in sys.argv[4:]]
try:
  with threadpool_limits(2):
    for cell in cells:
        for T, N, D, H in shapes:
            x = np.random.default_rng(0).standard_normal((N, T, D)).astype(np.float32)
            dout = np.ones((N, T, H), np.float32)
            m = make_model(cell, D, H)
            for p in passes:
                if p == "fwd":
                    m.eval()
                    def run(): m(x)
                else:
                    m.train()
                    def run(): m(x); m.backward(dout)
                t0 = rnn._thread_team_taken() + gru._thread_team_taken() + lstm._thread_team_taken()
                d, c = timed_ab(run, set_kernel, 10, 200)
                t1 = rnn._thread_team_taken() + gru._thread_team_taken() + lstm._thread_team_taken()
                print(f"{sys.argv[1]} {cell} {T},{N},{D},{H} {p}: take {d*1e3:.3f} wait {c*1e3:.3f} wait/take {c/d:.3f} taken {t1-t0}", flush=True)
finally:
    if load: load.stop()
    set_kernel(True)
