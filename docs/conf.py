"""Sphinx configuration of rnncore's documentation site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (offline by default).

Two choices keep that command working without network:

* intersphinx (links to NumPy, SciPy, PyTorch) is only configured when
  ``RNNCORE_DOCS_INTERSPHINX=1``: offline, Sphinx's failed inventory fetches are
  warnings, which ``-W`` turns into errors.
* MathJax: when Debian's ``libjs-mathjax`` is installed
  (``/usr/share/javascript/mathjax``) its MathJax 2 is copied into the site, so
  equations render with no network at all; otherwise pages load MathJax 3 from
  its CDN when read. ``RNNCORE_DOCS_MATHJAX=local|cdn|auto`` forces a choice.
"""
import os
import shutil
import sys
from pathlib import Path

import rnncore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

project = "rnncore"
author = "the rnncore developers"
copyright = "2026, the rnncore developers"
version = release = rnncore.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "check_snippets.py", "RELIABILITY.md", "SCALE_OUT.md", "**/README.md",
                    "gallery/*.ipynb", "gallery/*.py", "gallery/*.md5", "gallery/*.json",
                    "gallery/*.zip"]

# -- autodoc / autosummary / numpydoc ---------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False      # autosummary lists the members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- myst (the Markdown notes RELIABILITY.md and SCALE_OUT.md) ----------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
# myst would mark its pages "mathjax_ignore" and configure MathJax 3 to process only
# the math nodes; the local MathJax 2 reads no such configuration (below)
myst_update_mathjax = False
suppress_warnings = ["myst.xref_missing"]   # links between the notes and repo files

# -- intersphinx: needs network, so only on request ---------------------------------
intersphinx_mapping = {}
if os.environ.get("RNNCORE_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "scipy": ("https://docs.scipy.org/doc/scipy/", None),
        "torch": ("https://pytorch.org/docs/stable/", None),
    }
intersphinx_timeout = 10

# -- math ---------------------------------------------------------------------------
# RNNCORE_DOCS_MATHJAX: "cdn" (MathJax 3 from jsDelivr, Sphinx's default: needs network
# when the page is read), "local" (copy a local MathJax 2 into the site: renders
# offline; fails if there is none) or "auto" (the default: local when Debian's
# libjs-mathjax is installed, else cdn).
_mathjax_dir = Path(os.environ.get("RNNCORE_DOCS_MATHJAX_DIR", "/usr/share/javascript/mathjax"))
_mathjax_mode = os.environ.get("RNNCORE_DOCS_MATHJAX", "auto")
if _mathjax_mode not in ("auto", "local", "cdn"):
    raise ValueError(f"RNNCORE_DOCS_MATHJAX: expected auto, local or cdn, got {_mathjax_mode!r}")
_has_local = (_mathjax_dir / "MathJax.js").is_file()
if _mathjax_mode == "local" and not _has_local:
    raise RuntimeError(f"RNNCORE_DOCS_MATHJAX=local: no MathJax.js in {_mathjax_dir} "
                       "(apt-get install libjs-mathjax fonts-mathjax, or set "
                       "RNNCORE_DOCS_MATHJAX_DIR)")
MATHJAX_LOCAL = _mathjax_mode == "local" or (_mathjax_mode == "auto" and _has_local)
if MATHJAX_LOCAL:
    # MathJax 2 with its CommonHTML output, relative to the site's _static/
    mathjax_path = "mathjax/MathJax.js?config=TeX-AMS_CHTML"

# -- sphinx-gallery -----------------------------------------------------------------
os.environ.setdefault("MPLBACKEND", "Agg")
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",   # plot_NN_*: the reading order
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "doc_module": ("rnncore",),
    "backreferences_dir": None,
    "show_memory": False,
}

# -- HTML ---------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"rnncore {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": []}
html_show_sourcelink = False

# -- doctest ------------------------------------------------------------------------
# The docstrings' examples are written for their own module's namespace (as
# ``python -m pytest --doctest-modules src/rnncore`` runs them); the doctest
# builder (``python -m sphinx -b doctest docs docs/_build/doctest``) gives them
# the same names.
doctest_global_setup = """
import numpy as np
import rnncore
from rnncore.reference import *
from rnncore.nn import *
from rnncore.gradcheck import gradcheck
"""


def _copy_mathjax(app, exception):
    """Copy the parts of the local MathJax 2 that TeX-AMS_CHTML loads."""
    if exception is None and app.builder.format == "html" and MATHJAX_LOCAL:
        dest = Path(app.outdir) / "_static" / "mathjax"
        if not (dest / "MathJax.js").exists():
            skip = shutil.ignore_patterns("unpacked", "test", "STIX-Web", "SVG", "NativeMML",
                                          "PlainSource", "PreviewHTML",
                                          "*.eot", "*.svg")
            shutil.copytree(_mathjax_dir, dest, symlinks=False, ignore=skip, dirs_exist_ok=True)


def setup(app):
    app.connect("build-finished", _copy_mathjax)
