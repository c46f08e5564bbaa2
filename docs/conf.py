"""Sphinx configuration of fastopt's documentation site.

Build it from the repository root with the installed fastopt (``pip install ".[docs]"``)::

    sphinx-build -W -b html docs docs/_build/html

Nothing here puts the source tree on ``sys.path``: the pages document, and the gallery runs,
the fastopt that is installed (a source checkout's ``fastopt/`` has no compiled extensions).
Generated at build time, never committed: ``api/generated/`` (one page per optimizer and the
reference of every other public name, ``_ext/fastopt_api.py``), ``auto_examples/`` (the gallery,
every script of ``examples/`` run), ``performance/_generated/`` (``performance/render.py``, when
that page set exists) and ``_build/``.
"""
import datetime
import importlib.util
import os
import sys

import fastopt

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
# The site's own Sphinx extensions (not part of the package).
sys.path.insert(0, os.path.join(DOCS_DIR, "_ext"))

project = "fastopt"
author = "the fastopt developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = fastopt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "fastopt_api",        # api/generated/: the optimizer pages and the public API, from the declarations
    "fastopt_index",      # the landing page's cards and toctrees of pages that may not exist yet
    "offline_mathjax",    # MathJax from an installed package, copied into the site (no CDN)
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store",
                    # performance/render.py's output: parts that the performance pages include
                    "performance/_generated"]
templates_path = []

# Every internal cross-reference must resolve (a broken one is a warning, so an error under -W).
# References to other projects' objects (torch, NumPy, SciPy, ...) are not checked: the build is
# offline, so there is no intersphinx inventory to check them against.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|scipy|bitsandbytes|deepspeed|transformers|lightning|accelerate"
               r"|ml_dtypes|threadpoolctl|sklearn|matplotlib)(\..*)?"),
    # builtins and typing words numpydoc and autodoc may turn into references
    (r"py:.*", r"(optional|callable|iterable|sequence|array_like|array-like|ndarray|tensor|Tensor"
               r"|dict|list|tuple|int|float|bool|str|bytes|None|object|type)"),
]

# -- autodoc / numpydoc ---------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- MyST -----------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3

# -- math: MathJax 3 from the django-static-mathjax package (see _ext/offline_mathjax.py) ----------
mathjax_path = "mathjax/tex-chtml.js"
# \text{...} in the declared formulas escapes underscores (decoupled\_weight\_decay): textmacros
# reads them as text-mode macros (the component is copied with the rest of MathJax). Without
# noundefined, an unknown macro is a TeX error MathJax shows as such (not red text), which
# tests/tooling/test_docs.py looks for.
mathjax3_config = {"loader": {"load": ["[tex]/textmacros"]},
                   "tex": {"packages": {"[+]": ["textmacros"], "[-]": ["noundefined"]}}}

# -- sphinx-gallery -------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # every script is an example, and every one runs at every build: a script that raises stops
    # the build (abort_on_example_error), so the gallery shows only outputs that were produced
    "filename_pattern": r".*\.py$",
    "ignore_pattern": r"(^|/)_",
    "run_stale_examples": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "image_scrapers": ("matplotlib",),
    # the examples run one after another in this process: each starts from a clean state
    "reset_modules": ("matplotlib", "gallery_reset.reset_process_state"),
    "within_subsection_order": "FileNameSortKey",
    "remove_config_comments": True,
    "download_all_examples": False,
    "show_memory": False,
    # (its execution-times pages load jQuery and DataTables from a CDN: the site loads nothing remote)
    "write_computation_times": False,
    "show_signature": False,
}

# -- HTML -----------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"fastopt {release}"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
# the theme's light/dark switch starts from the reader's system setting ("auto")
html_context = {"default_mode": "auto"}
html_css_files = ["fastopt.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 8,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": []}


def _render_performance_pages(app):
    """docs/performance/render.py (when that page set exists) writes performance/_generated/ from
    the benchmark data before the pages are read."""
    script = os.path.join(DOCS_DIR, "performance", "render.py")
    if not os.path.exists(script):
        return
    spec = importlib.util.spec_from_file_location("fastopt_docs_performance_render", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.render_all(DOCS_DIR)


def setup(app):
    app.connect("builder-inited", _render_performance_pages)
