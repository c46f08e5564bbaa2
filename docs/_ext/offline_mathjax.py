"""MathJax served from the built site itself, so math renders with no network.

``conf.py`` sets ``mathjax_path = "mathjax/tex-chtml.js"``, a path under the site's ``_static/``.
This extension fills ``_static/mathjax/`` of the output with the MathJax 3 build ("es5") that the
``django-static-mathjax`` package installs (the ``docs`` extra requires it): the combined TeX to
CommonHTML component, the components it may load on demand and its web fonts. No page then
refers to a CDN; MathJax finds its fonts and components relative to its own script.
"""
import os
import shutil

from sphinx.errors import ExtensionError

#: What the site needs from MathJax's es5 folder: the script conf.py names, the TeX extensions and
#: accessibility/menu components it loads on demand, the CommonHTML fonts, and its licence.
#: (The speech-rule maps, sre/, are 20 MB that only the "speech" menu options load.)
NEEDED = ("tex-chtml.js", "input/tex/extensions", "a11y", "ui", "output/chtml/fonts/woff-v2")
EXCLUDED = ("sre",)


def mathjax_es5_dir():
    """The es5 folder of the installed django-static-mathjax package."""
    try:
        import mathjax
    except ImportError:
        raise ExtensionError(
            "the docs render math with the MathJax copy of the django-static-mathjax package, "
            "which is not installed: pip install '.[docs]'") from None
    path = os.path.join(os.path.dirname(mathjax.__file__), "static", "mathjax", "es5")
    if not os.path.isfile(os.path.join(path, "tex-chtml.js")):
        raise ExtensionError(f"no MathJax es5 build in {path} (django-static-mathjax's layout changed?)")
    return path


def copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    source = mathjax_es5_dir()
    target = os.path.join(app.outdir, "_static", "mathjax")
    for item in NEEDED:
        src, dst = os.path.join(source, item), os.path.join(target, item)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*EXCLUDED))
        elif os.path.isfile(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
    licence = os.path.join(source, os.pardir, "LICENSE")
    if os.path.isfile(licence):
        shutil.copy2(licence, os.path.join(target, "LICENSE"))


def check_installed(app):
    if app.config.mathjax_path.startswith(("http://", "https://", "//")):
        raise ExtensionError(f"mathjax_path {app.config.mathjax_path!r} is remote: the site must "
                             "render math offline")
    mathjax_es5_dir()


def setup(app):
    app.connect("builder-inited", check_installed)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
