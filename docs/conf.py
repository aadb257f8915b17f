"""Sphinx configuration of rnncore's documentation site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (offline by default).

Two choices keep that command working without network:

* intersphinx (links to NumPy, SciPy, PyTorch) is only configured when
  ``RNNCORE_DOCS_INTERSPHINX=1``: offline, Sphinx's failed inventory fetches are
  warnings, which ``-W`` turns into errors.
* MathJax: by default the page loads MathJax 3 from its CDN (what an online
  reader gets). ``RNNCORE_DOCS_MATHJAX=local`` copies a local MathJax
  (Debian's ``libjs-mathjax``, ``/usr/share/javascript/mathjax``) into the
  site, so equations render with no network at all.
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
exclude_patterns = ["_build", "RELIABILITY.md", "SCALE_OUT.md", "**/README.md",
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
_local_mathjax = Path(os.environ.get("RNNCORE_DOCS_MATHJAX_DIR", "/usr/share/javascript/mathjax"))
if os.environ.get("RNNCORE_DOCS_MATHJAX") == "local":
    if not (_local_mathjax / "MathJax.js").exists():
        raise RuntimeError(f"RNNCORE_DOCS_MATHJAX=local: no MathJax.js in {_local_mathjax} "
                           "(apt-get install libjs-mathjax fonts-mathjax, or set "
                           "RNNCORE_DOCS_MATHJAX_DIR)")
    # MathJax 2 (Debian's package); copied into the site after the build (see setup)
    mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML"

# -- sphinx-gallery -----------------------------------------------------------------
os.environ.setdefault("MPLBACKEND", "Agg")
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples" / "gallery"),
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reference_url": {"rnncore": None},
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
doctest_global_setup = """
import numpy as np
import rnncore
"""


def _copy_mathjax(app, exception):
    if exception is None and app.builder.format == "html" \
            and os.environ.get("RNNCORE_DOCS_MATHJAX") == "local":
        dest = Path(app.outdir) / "_static" / "mathjax"
        if not dest.exists():
            shutil.copytree(_local_mathjax, dest, symlinks=False)


def setup(app):
    app.connect("build-finished", _copy_mathjax)
