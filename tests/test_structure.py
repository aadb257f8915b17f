"""The package's structure: who may import whom, and how big a file may grow.

Read from the sources with ``ast`` (every import statement, also those inside
functions), so the checks hold for code paths the other tests never run.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "rnncore"

#: files allowed over MAX_LINES: reference.py is the specification, one
#: document by design.
ALLOWED_OVER_600 = {"reference.py"}
MAX_LINES = 600

#: modules allowed to import upward from rnncore/__init__ (none)
ALLOWED_UPWARD = set()

#: the API layers that reach the compiled kernels only through rnncore._bindings
BOUND = ("rnncore.functional", "rnncore._stack", "rnncore.models", "rnncore.cells")

#: imported only on attribute access (PEP 562), never by `import rnncore`
LAZY = ("rnncore.charlm", "rnncore.cli", "rnncore.distributed", "rnncore.dask_inference",
        "rnncore.interop", "rnncore.onnx")


def _module_name(path):
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    """{dotted name: (path, is package)} for every .py file of rnncore."""
    return {_module_name(p): (p, p.name == "__init__.py") for p in sorted(PKG.rglob("*.py"))}


MODULES = _modules()


def _imports(name):
    """[(target module, imported names or None, line)] of every import in ``name``."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def _edges(name):
    """The rnncore modules ``name`` imports (a submodule named in `from P import m` counts)."""
    out = set()
    for base, names, _ in _imports(name):
        if not base.startswith("rnncore"):
            continue
        subs = [f"{base}.{n}" for n in names or () if f"{base}.{n}" in MODULES]
        out.update(subs or [base])
    return out - {name}


def test_no_import_cycles():
    graph = {m: _edges(m) & set(MODULES) for m in MODULES}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_upward_from_the_package_init():
    bad = []
    for m in MODULES:
        if m == "rnncore" or m in ALLOWED_UPWARD:
            continue
        for base, names, line in _imports(m):
            if base != "rnncore":
                continue
            upward = [n for n in names or ["rnncore"] if f"rnncore.{n}" not in MODULES]
            if upward:
                bad.append(f"{m}:{line} imports {upward} from rnncore/__init__")
    assert not bad, "\n".join(bad)


def test_api_layers_reach_kernels_only_through_bindings():
    bad = []
    for m in MODULES:
        if not any(m == b or m.startswith(b + ".") for b in BOUND):
            continue
        for base, names, line in _imports(m):
            targets = [base] + [f"{base}.{n}" for n in names or ()]
            if any(t == "rnncore._kernels" or t.startswith("rnncore._kernels.") for t in targets):
                bad.append(f"{m}:{line} imports {base} {names or ''}")
    assert not bad, "\n".join(bad)


def test_functional_never_imports_reference():
    bad = [f"{m}:{line}" for m in MODULES if m.split(".")[:2] == ["rnncore", "functional"]
           for base, names, line in _imports(m)
           if base == "rnncore.reference" or (base == "rnncore" and "reference" in (names or ()))]
    assert not bad, "functional imports rnncore.reference at " + ", ".join(bad)


def test_import_rnncore_loads_no_application():
    code = ("import sys, rnncore; "
            f"print(','.join(m for m in {LAZY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import rnncore loaded {out.stdout.strip()}"


def test_lazy_applications_load_on_attribute_access():
    import rnncore

    assert rnncore.charlm.__name__ == "rnncore.charlm"
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        rnncore.not_a_module  # noqa: B018


def test_registry_finds_lazy_classes_on_demand(tmp_path):
    """rnncore.load rebuilds a CharLM in a process that never imported rnncore.charlm."""
    from rnncore import save
    from rnncore.charlm import CharLM

    path = tmp_path / "lm.npz"
    save(path, CharLM(10, 4, 8, seed=0))
    code = (f"import sys, rnncore; m = rnncore.load({str(path)!r}); "
            "print(type(m).__name__, 'rnncore.charlm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CharLM", "True"]


def test_functional_docstrings_are_filled():
    """The shared docstring fragments (functional/_args.py) leave no ``$name`` behind."""
    import rnncore.functional as F

    left = [n for n in F.__all__ if "$" in (getattr(F, n).__doc__ or "")]
    assert not left, f"unfilled docstring fragments in {left}"


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_source_files_stay_small(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    if path.name in ALLOWED_OVER_600 and path.parent == PKG:
        pytest.skip(f"{path.name} ({n} lines) is on the ALLOWED_OVER_600 list")
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (at most {MAX_LINES})"
