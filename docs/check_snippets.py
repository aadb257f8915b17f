"""Run every ```python block of the landing page and the user guide, page by page (one namespace per page).

    python docs/check_snippets.py          # from the repository root; exit 1 on a failure

Blocks that import an optional package which is not installed (torch, onnxruntime,
keras) are reported as skipped, with the rest of their page.
"""
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

OPTIONAL = ("torch", "onnxruntime", "keras", "onnx")
os.environ.setdefault("MPLBACKEND", "Agg")


def blocks(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def main():
    docs = Path(__file__).resolve().parent
    failed = 0
    for page in [docs / "index.md"] + sorted((docs / "guide").glob("*.md")):
        ns = {"__name__": "__snippet__"}
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)                                    # files written by a block go here
            try:
                for i, code in enumerate(blocks(page)):
                    missing = [m for m in OPTIONAL if re.search(rf"^\s*import {m}\b", code, re.M)
                               and importlib.util.find_spec(m) is None]
                    if missing:
                        print(f"{page.relative_to(docs)} block {i}: skipped (needs {', '.join(missing)})")
                        break
                    try:
                        exec(compile(code, f"{page.name}[{i}]", "exec"), ns)
                    except Exception as e:                   # report and go on
                        print(f"{page.relative_to(docs)} block {i}: FAILED {type(e).__name__}: {e}")
                        failed += 1
                        break
                else:
                    print(f"{page.relative_to(docs)}: {len(blocks(page))} blocks ok")
            finally:
                os.chdir(cwd)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
