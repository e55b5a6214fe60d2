"""Sphinx configuration of the wakesleep documentation site.

Build (from the repository root)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

``WAKESLEEP_TUTORIAL_SMALL=1`` runs the tutorials at their small test size.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(DOCS / "_ext"))

import wakesleep  # noqa: E402

project = "wakesleep"
author = "the wakesleep authors"
copyright = "the wakesleep authors, MIT licence"  # noqa: A001
version = release = wakesleep.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "wakesleep_options",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
    "auto_examples/*.pickle",
    "bench/**",
]

# the existing Markdown pages (docs/*.md) are used as they are
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# the Markdown pages name files of the repository in backticks; links inside docs/ resolve as documents

# ---------------------------------------------------------------------------------------------- API
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# ---------------------------------------------------------------------------------------------- gallery
SMALL = os.environ.get("WAKESLEEP_TUTORIAL_SMALL") == "1"
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"tutorial_",
    "ignore_pattern": r"^(?!.*tutorial_)|__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "plot_gallery": "True",
    "remove_config_comments": True,
    "only_warn_on_example_error": False,
    "abort_on_example_error": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "seaborn"),
    "capture_repr": ("_repr_html_", "__repr__"),
    "min_reported_time": 0,
    "show_memory": False,
    "show_signature": False,
}

# ---------------------------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"wakesleep {release}"
html_static_path: list[str] = []
html_theme_options = {
    "source_repository": "",
    "navigation_with_keys": True,
}
