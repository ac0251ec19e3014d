"""Sphinx configuration for the trio_dtls_server documentation (``nox -s docs``)."""

from __future__ import annotations

project = "trio_dtls_server"
author = "trio_dtls_server developers"
copyright = "2026, trio_dtls_server developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build"]

# The API reference comes from the docstrings; signatures show the types, descriptions stay
# readable.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

# No network at build time: cross-references to Trio, pyOpenSSL and the standard library stay
# plain text rather than links (an intersphinx fetch would fail on a machine without internet).
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

html_theme = "alabaster"
html_title = "trio_dtls_server"
