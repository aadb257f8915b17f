"""A finite-difference gradient check for any :class:`~rnncore.module.Module` (yours included).

:func:`gradcheck` compares a module's ``backward`` with central differences in
float64, element by element -- the check of Karpathy's min-char-rnn and of the
cs231n assignments, made general -- and that ``backward`` accumulates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["gradcheck", "GradcheckReport", "GradcheckEntry"]


@dataclass
class GradcheckEntry:
    """Result of one checked tensor.

    Attributes
    ----------
    name : str
        ``"inputs[i]"`` or ``"grads['<param>']"``.
    max_abs_err : float
        ``max |analytic - numerical|``.
    index : tuple
        Where that maximum occurs.
    analytic, numerical : float
        The two values at ``index``.
    passed : bool
        ``|analytic - numerical| <= atol + rtol * |numerical|`` everywhere.
    labels : tuple of str
        How ``str`` names the two values (``("got", "expected")`` for the
        accumulation check).
    """

    name: str
    max_abs_err: float
    index: tuple
    analytic: float
    numerical: float
    passed: bool
    labels: tuple = ("analytic", "numerical")

    def __str__(self) -> str:
        status = "ok" if self.passed else "FAILED"
        a, n = self.labels
        return (f"{self.name}: max abs err {self.max_abs_err:.3g} at {self.index} "
                f"({a} {self.analytic:.10g}, {n} {self.numerical:.10g}) {status}")


@dataclass
class GradcheckReport:
    """All checked tensors; ``passed`` is True when every entry passed."""

    entries: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries)

    @property
    def failures(self) -> list:
        return [e for e in self.entries if not e.passed]

    def __getitem__(self, name: str) -> GradcheckEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def __str__(self) -> str:
        return "\n".join([str(e) for e in self.entries] + list(self.notes))


def _first_output(out):
    """The output that receives the upstream gradient (first of a tuple)."""
    if isinstance(out, (tuple, list)):
        if not out:
            raise TypeError("gradcheck: forward returned an empty tuple")
        out = out[0]
    if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
        raise TypeError(
            f"gradcheck: forward must return a floating array (or a tuple whose first "
            f"item is one), got {type(out).__name__}"
        )
    return out


def _copy_input(a):
    """float64 copies of the floating arrays of an input (tuples kept as tuples)."""
    if a is None:
        return None
    if isinstance(a, (tuple, list)):
        return tuple(_copy_input(x) for x in a)
    arr = np.asarray(a)
    return arr.astype(np.float64, copy=True) if arr.dtype.kind == "f" else arr


def _input_pairs(d, x, name):
    """Yield ``(name, analytic, input array)`` for the floating leaves of ``x``.

    ``d`` is what ``backward`` returned for input ``x``; it mirrors ``x``'s
    structure (a tuple for a tuple input such as LSTM's ``(h0, c0)``), with
    ``None`` meaning "no gradient returned".
    """
    if d is None or x is None:
        return
    if isinstance(x, tuple):
        if not isinstance(d, (tuple, list)) or len(d) != len(x):
            raise AssertionError(
                f"gradcheck: the gradient of {name} must be a tuple of {len(x)} items like "
                f"the input, got {type(d).__name__}")
        for j, (dj, xj) in enumerate(zip(d, x)):
            yield from _input_pairs(dj, xj, f"{name}[{j}]")
    elif x.dtype.kind == "f":
        yield name, d, x


def _compare(name, analytic, numerical, rtol, atol,
             labels=("analytic", "numerical")) -> GradcheckEntry:
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != numerical.shape:
        raise AssertionError(
            f"gradcheck: {name} has shape {analytic.shape}, expected {numerical.shape}"
        )
    if numerical.size == 0:
        return GradcheckEntry(name, 0.0, (), 0.0, 0.0, True, labels)
    err = np.abs(analytic - numerical)
    if not np.all(np.isfinite(analytic)):
        err = np.where(np.isfinite(analytic), err, np.inf)
    index = np.unravel_index(int(np.argmax(err)), err.shape)
    passed = bool(np.all(err <= atol + rtol * np.abs(numerical)))
    return GradcheckEntry(name, float(err[index]), tuple(int(i) for i in index),
                          float(analytic[index]), float(numerical[index]), passed, labels)


def gradcheck(module, inputs, *, forward_kwargs=None, backward_kwargs=None, eps=1e-6,
              rtol=1e-5, atol=1e-7, seed=0, params=None, check_inputs=True,
              check_accumulation=True, before_forward=None,
              raise_exception=True) -> GradcheckReport:
    """Compare a module's ``backward`` with central finite differences (float64).

    The check, for any :class:`~rnncore.module.Module` (including your own):

    1. ``out = module.forward(*inputs, train=True, **forward_kwargs)``; if the
       forward returns a tuple (e.g. an RNN's ``(out, h_n)``), only the first
       item gets an upstream gradient.
    2. A fixed random upstream gradient ``dout ~ N(0, 1)`` (from ``seed``)
       defines the scalar ``L = sum(out * dout)``.
    3. ``module.zero_grad()``, then ``din = module.backward(dout,
       **backward_kwargs)`` gives the analytic gradients: ``din`` for the
       inputs and ``module.grads`` for the parameters.
    4. Every element of every checked parameter and floating input is moved
       by ``+-eps`` in turn and ``(L+ - L-) / (2 eps)`` is compared with the
       analytic value: ``|analytic - numerical| <= atol + rtol |numerical|``.

    Parameters and gradients are restored on return (the module's
    ``grads`` hold what they held before the call).

    Parameters
    ----------
    module : Module
        Its parameters must be float64 (build it with ``dtype=np.float64``).
    inputs : ndarray or tuple
        Positional inputs of ``forward``: arrays, ``None``, or tuples of
        arrays (e.g. an LSTM's ``(h0, c0)``). Floating arrays are copied to
        float64 and checked; integer arrays (e.g. token ids) are passed
        unchanged and never perturbed.
    forward_kwargs, backward_kwargs : dict, optional
        Extra keyword arguments of ``forward`` (e.g. ``lengths=``) and of
        ``backward``. ``train=True`` is always passed to ``forward``.
    eps : float, default 1e-6
        Finite-difference step.
    rtol, atol : float
        Tolerances of the comparison above.
    seed : int, default 0
        Seed of the upstream gradient.
    params : iterable of str, optional
        Names of the parameters to check (default: all of ``module.grads``).
    check_inputs : bool, default True
        Also check the input gradient(s) returned by ``backward``. A single
        array is the gradient of ``inputs[0]``; a tuple is matched to the
        inputs by position (``(dx, dh0)`` for ``(x, h0)``; a tuple input
        gets a tuple, e.g. ``(dx, (dh0, dc0))``); ``None`` (or a ``None``
        item) skips that input. Names in the report: ``inputs[1][0]``.
    check_accumulation : bool, default True
        Run forward/backward a second time without ``zero_grad`` and check
        that the parameter gradients doubled (``backward`` must accumulate).
    before_forward : callable, optional
        ``before_forward(module)`` is called before *every* forward call. Use
        it to make a random module deterministic, e.g. reseed its dropout:
        ``before_forward=lambda m: m.reseed(0)`` for a
        :class:`~rnncore.nn.Dropout`, or ``lambda m: m[1].reseed(0)`` for
        the Dropout at index 1 of a :class:`~rnncore.nn.Sequential`.
    raise_exception : bool, default True
        Raise ``AssertionError`` when a check fails; otherwise only report.

    Returns
    -------
    GradcheckReport
        One :class:`GradcheckEntry` per checked tensor (``report.passed``,
        ``report["grads['weight']"]``, ``str(report)``).

    Raises
    ------
    TypeError
        For a non-float64 module or a non-array output.
    RuntimeError
        When two train-mode forwards with the same inputs disagree: the
        module is random (e.g. dropout); pass ``before_forward``.
    AssertionError
        With ``raise_exception=True``, naming each offending tensor, its max
        abs error, where it occurs and both values there.

    Notes
    -----
    The module must be deterministic in train mode across calls: the check
    runs ``2 * (number of checked elements) + 3`` forwards and assumes they
    all compute the same function. This is verified once up front.
    Cost grows with the number of elements: use tiny shapes.

    Examples
    --------
    >>> import numpy as np
    >>> from rnncore.nn import Linear
    >>> lin = Linear(3, 2, dtype=np.float64, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> gradcheck(lin, x).passed
    True
    """
    if not (hasattr(module, "params") and hasattr(module, "grads")):
        raise TypeError(f"gradcheck: module must be a Module, got {type(module).__name__}")
    forward_kwargs = dict(forward_kwargs or {})
    backward_kwargs = dict(backward_kwargs or {})
    forward_kwargs.pop("train", None)
    names = list(module.grads) if params is None else list(params)
    for k in names:
        if k not in module.params or k not in module.grads:
            raise KeyError(f"gradcheck: no parameter/gradient named {k!r}")
    for k, p in module.params.items():
        if p.dtype != np.float64:
            raise TypeError(
                f"gradcheck needs a float64 module: parameter {k!r} has dtype {p.dtype}; "
                "build the module with dtype=np.float64"
            )
    raw = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    args = [_copy_input(a) for a in raw]

    def run():
        if before_forward is not None:
            before_forward(module)
        return module.forward(*args, train=True, **forward_kwargs)

    saved_grads = {k: g.copy() for k, g in module.grads.items()}
    try:
        out = _first_output(run()).copy()
        out_again = _first_output(run())
        if out_again.shape != out.shape or not np.array_equal(out, out_again, equal_nan=True):
            raise RuntimeError(
                "gradcheck: two train-mode forward calls with the same inputs gave different "
                "outputs, so the module is not deterministic (dropout?). Make it deterministic "
                "with before_forward=, e.g. lambda m: m.reseed(0) for a Dropout."
            )
        dout = np.random.default_rng(seed).standard_normal(out.shape)

        # analytic (the forward above is the one backward follows)
        module.zero_grad()
        din = module.backward(dout, **backward_kwargs)
        analytic = {k: module.grads[k].astype(np.float64, copy=True) for k in names}
        report = GradcheckReport()

        if check_accumulation and names:
            run()
            module.backward(dout, **backward_kwargs)
            for k in names:
                # expected: exactly twice the first gradient (up to reduction-order noise)
                tol = 1e-12 * max(1.0, float(np.max(np.abs(analytic[k]), initial=0.0)))
                entry = _compare(f"accumulation of grads[{k!r}]", module.grads[k],
                                 2 * analytic[k], rtol=0.0, atol=tol,
                                 labels=("got", "expected 2x"))
                if not entry.passed:
                    report.entries.append(entry)
                    report.notes.append(
                        f"grads[{k!r}] did not double after a second backward without "
                        "zero_grad: backward must accumulate (+=), not overwrite")

        def loss() -> float:
            return float(np.sum(_first_output(run()) * dout))

        def numerical(x: np.ndarray) -> np.ndarray:
            grad = np.zeros(x.shape, dtype=np.float64)
            for ix in np.ndindex(*x.shape):  # x is perturbed in place and restored
                old = x[ix]
                x[ix] = old + eps
                plus = loss()
                x[ix] = old - eps
                minus = loss()
                x[ix] = old
                grad[ix] = (plus - minus) / (2 * eps)
            return grad

        if check_inputs and din is not None:
            din_t = din if isinstance(din, (tuple, list)) else (din,)
            if len(din_t) > len(args):
                raise AssertionError(
                    f"gradcheck: backward returned {len(din_t)} input gradients for "
                    f"{len(args)} inputs")
            for i, d in enumerate(din_t):
                for name, d_leaf, x_leaf in _input_pairs(d, args[i], f"inputs[{i}]"):
                    report.entries.append(
                        _compare(name, d_leaf, numerical(x_leaf), rtol, atol))
        for k in names:
            report.entries.append(
                _compare(f"grads[{k!r}]", analytic[k], numerical(module.params[k]), rtol, atol))
    finally:
        for k, g in module.grads.items():
            if k in saved_grads and saved_grads[k].shape == g.shape:
                g[...] = saved_grads[k]

    if raise_exception and not report.passed:
        lines = [str(e) for e in report.failures] + report.notes
        raise AssertionError(
            f"gradcheck failed for {type(module).__name__} (rtol={rtol:g}, atol={atol:g}):\n"
            + "\n".join(lines))
    return report
