"""Every ```python block of README.md runs as written.

Blocks run in order in one namespace per test, as a reader pastes them into
one session: the test for block i runs blocks 0..i-1 first (those that can
run here), then block i. A block that imports a module not installed here
(torch, onnx, keras, mpi4py, ...) is skipped, and so are the later blocks
that fail only because of it; nothing else is skipped. Each runs in a fresh
temporary directory, so blocks that write files write there.
"""
import ast
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python[^\n]*\n(.*?)^```", README.read_text(encoding="utf-8"),
                    flags=re.M | re.S)


def _missing_imports(source):
    """Top-level modules a block imports that are not installed."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


def _run(i, namespace):
    code = compile(BLOCKS[i], f"README.md python block {i}", "exec")
    exec(code, namespace)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, tmp_path, monkeypatch):
    missing = _missing_imports(BLOCKS[i])
    if missing:
        pytest.skip(f"block {i} needs {', '.join(missing)} (not installed)")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"readme_block_{i}"}
    skipped_before = False
    for j in range(i):
        if _missing_imports(BLOCKS[j]):
            skipped_before = True
            continue
        _run(j, namespace)
    try:
        _run(i, namespace)
    except NameError as exc:
        if skipped_before:  # it needs a name from a block that cannot run here
            pytest.skip(f"block {i} depends on a skipped block: {exc}")
        raise
