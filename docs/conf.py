"""Sphinx configuration of the sb3-mamba documentation.

Build (warnings are errors, as in CI)::

    pip install torch==2.13.0 -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Pages are Markdown (MyST). Files that live elsewhere in the repository (CHANGELOG.md,
CONTRIBUTING.md, benchmarks/results/*.md) are included, not copied. The API pages are autodoc of
the checkout: ``sb3_mamba`` is imported from the repository root, so its docstrings are the ones
documented.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document the checkout, not some installed copy

# -- project ------------------------------------------------------------------
project = "sb3-mamba"
author = "sb3-mamba developers"
copyright = "2026, sb3-mamba developers"
# one source for the version: sb3_mamba/version.txt (pyproject.toml and sb3_mamba.__version__ read it)
release = (ROOT / "sb3_mamba" / "version.txt").read_text(encoding="utf-8").strip()
version = release

# -- general --------------------------------------------------------------------
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: ``:::`` fences for directives, anchors for ``##`` and ``###`` headings
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# -- autodoc --------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"show-inheritance": True}
# No intersphinx: CI builds offline, and a missing inventory is a warning (-W makes it an error).

# -- HTML -------------------------------------------------------------------------
html_theme = "furo"
html_title = f"sb3-mamba {release}"
html_static_path: list[str] = []
