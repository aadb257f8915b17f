"""What ``rnncore train`` shows and how it stops: progress, time formats, signals, threads.

Terminal plumbing for :mod:`rnncore.cli`, kept apart from its commands.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout

__all__ = ["fmt_time", "rate", "Progress", "StopOnSignal", "thread_limit", "silenced",
           "available_memory", "fmt_bytes"]


def available_memory():
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def fmt_bytes(n) -> str:
    """``1.5 GB``, ``12.0 MB`` ..."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def fmt_time(seconds) -> str:
    """``1h02m03s``, ``2m03s`` or ``3s``."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def rate(cps) -> str:
    """Characters per second, in thousands from 1000 on."""
    return f"{cps / 1000:.1f}k chars/s" if cps >= 1000 else f"{cps:.0f} chars/s"


class Progress:
    """A tqdm bar on stderr, or plain progress lines when tqdm is missing.

    ``write`` prints a message on stdout without breaking the bar.
    """

    def __init__(self, total, initial):
        self.total, self.initial = total, initial
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
            print("(tqdm is not installed: plain progress lines; pip install tqdm for a "
                  "progress bar)", file=sys.stderr)
        else:
            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.05, mininterval=0.25)

    def update(self, step, loss, cps):
        text = f"loss {loss / math.log(2):.3f} bits/char, {rate(cps)}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last_print >= 5.0 or step == self.total:
            done = step - self.initial
            eta = (now - self.t0) / done * (self.total - step) if done else 0.0
            print(f"step {step}/{self.total} | {text} | ETA {fmt_time(eta)}",
                  file=sys.stderr, flush=True)
            self.last_print = now

    def write(self, msg):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)
        sys.stdout.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class StopOnSignal:
    """Records SIGINT/SIGTERM so the loop can finish its step and save.

    A second signal interrupts at once (KeyboardInterrupt for SIGINT, the
    default action for SIGTERM); the checkpoint on disk stays intact because
    saving is atomic.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, extra=()):
        self.signals = self.SIGNALS + tuple(extra)
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for s in self.signals:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)

    def _handle(self, signum, frame):
        self.signum = signum
        for s in self.signals:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def thread_limit(n):
    """Limit the BLAS threads to ``n`` for a ``with`` block (0: BLAS's own choice)."""
    if not n:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("rnncore: warning: --threads needs threadpoolctl (pip install threadpoolctl); "
              "ignored", file=sys.stderr)
        return nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


@contextmanager
def silenced(quiet):
    """Send stdout and stderr to os.devnull while ``quiet`` (ranks other than 0)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as null, redirect_stdout(null), redirect_stderr(null):
        yield
