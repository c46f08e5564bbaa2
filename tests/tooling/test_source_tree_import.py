"""``import fastopt`` from a source checkout without compiled extensions says what to do.

The package's sources (no compiled modules, no ``_build_config.py``) are copied into a temporary
directory and imported from there in a subprocess, as ``python -c`` / ``python -m`` at the root of a
fresh clone would. The subprocess runs with ``-S`` and gets only NumPy's and SciPy's site directory
on ``sys.path``: an editable install's import hook would otherwise serve the compiled modules of the
development tree.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

PACKAGE = Path(fastopt.__file__).resolve().parent
COMPILED = ["*" + suffix for suffix in __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES]


def _source_copy(root, keep_compiled=()):
    shutil.copytree(PACKAGE, root / "fastopt",
                    ignore=shutil.ignore_patterns(*COMPILED, "*.c", "*.html", "_build_config.py",
                                                  "__pycache__"))
    for pattern in keep_compiled:
        for path in PACKAGE.rglob(pattern):     # the compiled core lives in subpackages too
            target = root / "fastopt" / path.relative_to(PACKAGE)
            shutil.copy(path, target)
    return root


def _run(root, code, *args):
    sites = sorted({str(Path(m.__file__).resolve().parents[1]) for m in (np, __import__("scipy"))})
    prelude = f"import sys; sys.path.extend({sites!r}); "
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-S", "-c", prelude + code, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_unbuilt_source_tree_says_what_to_do(tmp_path):
    root = _source_copy(tmp_path)
    done = _run(root, "import fastopt")
    assert done.returncode != 0
    err = done.stderr
    assert "ImportError: fastopt is being imported from its source directory" in err
    assert "compiled extensions are not built for this Python" in err
    assert "python -m pip install ." in err and "build_ext --inplace" in err and "pip install -e ." in err
    assert "circular import" not in err and "partially initialized" not in err


def test_python_m_fastopt_in_unbuilt_source_tree(tmp_path):
    root = _source_copy(tmp_path)
    done = _run(root, "import runpy; runpy.run_module('fastopt', run_name='__main__', alter_sys=True)",
                "info")
    assert done.returncode != 0
    assert "source directory" in done.stderr and "circular import" not in done.stderr


def _compiled_modules():
    """{module name: file} of the package's compiled modules that ``import fastopt`` loaded."""
    found = {}
    for pattern in COMPILED:
        for path in PACKAGE.rglob(pattern):
            rel = path.relative_to(PACKAGE).with_name(path.name[:-len(pattern) + 1])
            name = ".".join(("fastopt",) + rel.parts)
            if name in sys.modules:
                found[name] = path
    return found


def test_stale_in_place_build_names_the_missing_module(tmp_path):
    compiled = _compiled_modules()
    if len(compiled) < 2 or not (PACKAGE / "_build_config.py").exists():
        pytest.skip("needs two compiled modules and _build_config.py next to the package's sources")
    keep, *dropped = sorted(compiled)
    root = _source_copy(tmp_path)
    target = root / "fastopt" / compiled[keep].relative_to(PACKAGE)
    shutil.copy(compiled[keep], target)
    shutil.copy(PACKAGE / "_build_config.py", root / "fastopt")
    done = _run(root, "import fastopt")
    assert done.returncode != 0
    assert "some compiled extensions are missing (" in done.stderr
    named = done.stderr.split("some compiled extensions are missing (", 1)[1].split(")", 1)[0]
    assert set(named.split(", ")) <= set(dropped) and named, named
    assert "circular import" not in done.stderr


def test_built_copy_imports(tmp_path):
    """The same copy with its compiled modules imports normally: the check never fires there."""
    root = _source_copy(tmp_path, keep_compiled=COMPILED + ["_build_config.py"])
    done = _run(root, "import fastopt; print(fastopt.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(root / "fastopt" / "__init__.py")
