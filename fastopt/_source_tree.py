"""Say what to do when ``import fastopt`` finds a source checkout whose extensions are not built.

``python -m ...``, ``python -c ...`` and an interactive ``python`` put the current directory first on
``sys.path``, so at the root of a clone the folder ``fastopt/`` (Python and Cython sources only) is
imported instead of an installed fastopt. Its first compiled import then fails, and the bare error
("cannot import name '_step' from partially initialized module 'fastopt' (most likely due to a
circular import)") names neither the cause nor the fix. :func:`raise_if_unbuilt` replaces it, as
NumPy does, with a message that says what to do. It decides from the files alone: the package
directory holds Cython sources (``*.pyx``: a source checkout) and either no compiled module for this
Python at all, or none for a module the failed import names (a stale in-place build). Any other
ImportError is left as it is.
"""
import importlib.machinery
import os

_PACKAGE = __name__.rpartition(".")[0]


def _modules(package_dir, suffixes):
    """Dotted names of the modules under ``package_dir`` with a file ending in one of ``suffixes``."""
    found = set()
    for root, _, files in os.walk(package_dir):
        rel = os.path.relpath(root, package_dir)
        prefix = _PACKAGE if rel == os.curdir else ".".join([_PACKAGE] + rel.split(os.sep))
        for name in files:
            for suffix in suffixes:
                if name.endswith(suffix):
                    found.add(f"{prefix}.{name[:-len(suffix)]}")
    return found


def _installed_elsewhere(package_dir):
    """``(version, directory)`` of an installed fastopt that lives outside ``package_dir``, or None."""
    try:
        from importlib import metadata
        dist = metadata.distribution(_PACKAGE)
        init = os.path.abspath(str(dist.locate_file(os.path.join(_PACKAGE, "__init__.py"))))
    except Exception:   # no distribution, or metadata we cannot read: say nothing about it
        return None
    if os.path.isfile(init) and os.path.dirname(init) != os.path.abspath(package_dir):
        return dist.version, os.path.dirname(init)
    return None


def raise_if_unbuilt(package_dir, error):
    """Raise an ImportError that says what to do if ``error`` (raised while importing the package
    at ``package_dir``) comes from a source checkout without compiled extensions; else return."""
    sources = _modules(package_dir, (".pyx",))
    if not sources:
        return
    built = _modules(package_dir, tuple(importlib.machinery.EXTENSION_SUFFIXES))
    text = str(error)
    unbuilt = sorted(sources - built)
    if built:   # a stale in-place build: only a module the failed import names counts
        unbuilt = [m for m in unbuilt if f"'{m}'" in text or f"'{m.rpartition('.')[2]}'" in text]
        if not unbuilt:
            return
    state = ("its compiled extensions are not built for this Python" if not built else
             f"some compiled extensions are missing ({', '.join(unbuilt)}): a stale in-place build")
    lines = [
        f"fastopt is being imported from its source directory {package_dir}, and {state}.",
        "You should not import fastopt from the source directory. Either",
        "  * install it, `python -m pip install .`, and use the `fastopt` command (`fastopt bench`,",
        "    `fastopt info`) or run Python from another directory; or",
        "  * build it in place for development: `python -m pip install -e .` or",
        "    `python setup.py build_ext --inplace -j 2` at the repository root.",
    ]
    installed = _installed_elsewhere(package_dir)
    if installed is not None:
        lines.append(f"An installed fastopt {installed[0]} ({installed[1]}) is shadowed here: "
                     "`python -m`, `python -c` and an interactive `python` put the current "
                     "directory first on sys.path.")
    raise ImportError("\n".join(lines), name=_PACKAGE, path=package_dir) from None
