"""A default build compiles without a single compiler warning.

Each compiled module is cythonized from the source tree (the generated loops rendered afresh by
build_tools/codegen.py into a temporary folder) and compiled with the flags of a default build
(Python's own CFLAGS, which hold -Wall, and the project's: build_tools/flags.py, as recorded in
fastopt/_build_config.py) plus ``-Werror``: a warning fails the test and shows in its message. The
kernel module, whose generated loops take the longest, is compiled with ``-fsyntax-only`` (every
warning of the C front end: qualifiers, types, unused code) in the default run and in full in the
slow one.
"""
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fastopt import _build_config

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "fastopt" / "_core"



def _declared_modules():
    """module -> (its .pyx, hand-written C compiled into it, whether it takes L-BFGS's flags), read
    from setup.py's ``extension(...)`` declarations."""
    out = {}
    for name, args in re.findall(r'^\s*extension\("([\w.]+)"([^)]*)\)', (REPO / "setup.py").read_text(), re.M):
        c_sources = tuple(re.findall(r'"([^"]+\.c)"', args))
        out[name] = ("/".join(name.split(".")) + ".pyx", c_sources, "contract=True" in args)
    return out


MODULES = _declared_modules()


def test_every_compiled_module_is_declared_and_checked():
    """setup.py declares every .pyx of the source tree (each then checked here)."""
    found = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "fastopt").rglob("*.pyx")}
    assert found == set(MODULES)
    assert "fastopt._core._kernels" in MODULES


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """The source tree's fastopt/ (no build output) with the generated files rendered into it."""
    pytest.importorskip("Cython")
    if not (REPO / "build_tools").is_dir():
        pytest.skip("not a source tree (build_tools/ is missing)")
    if _build_config.COMPILER != "unix" or shutil.which(sysconfig.get_config_var("CC").split()[0]) is None:
        pytest.skip("needs the Unix compiler this fastopt was built with")
    dest = tmp_path_factory.mktemp("warnings")

    def build_outputs(folder, names):
        generated = {n[:-4] + ".c" for n in names if n.endswith(".pyx")}
        return {n for n in names if n.endswith((".so", ".pyd", ".html")) or n in generated
                or n == "__pycache__"}

    shutil.copytree(REPO / "fastopt", dest / "fastopt", ignore=build_outputs)
    sys.path.insert(0, str(REPO))
    try:
        from build_tools import codegen
        codegen.render(str(dest / "fastopt" / "_core"))
    finally:
        sys.path.pop(0)
    return dest


def _flags(contract):
    """The flags a default build compiles a module with (the best variant this build has)."""
    variant = _build_config.VARIANTS[0]
    flags = list(_build_config.CFLAGS) + list(_build_config.VARIANT_CFLAGS.get(variant, []))
    return flags + list(_build_config.LBFGS_CFLAGS) if contract else flags


def _compile(source_copy, module, extra):
    import numpy as np

    pyx, c_sources, contract = MODULES[module]
    c_file = source_copy / (pyx[:-4] + ".c")
    done = subprocess.run(
        [sys.executable, "-m", "cython", "-3", "--module-name", module, "-I", str(source_copy),
         "-X", "boundscheck=False,wraparound=False,cdivision=True,initializedcheck=False,"
               "nonecheck=False,embedsignature=True", pyx, "-o", str(c_file)],
        cwd=str(source_copy), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    command = (sysconfig.get_config_var("CC").split() + sysconfig.get_config_var("CFLAGS").split()
               + ["-fPIC", "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION",
                  f"-I{np.get_include()}", f"-I{source_copy / 'fastopt' / '_core'}",
                  f"-I{sysconfig.get_paths()['include']}"]
               + _flags(contract) + ["-Werror"] + extra)
    for source in [c_file, *(source_copy / c for c in c_sources)]:
        out = source_copy / (source.name + ".o")
        done = subprocess.run(command + ["-c", str(source), "-o", str(out)], cwd=str(source_copy),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "warning" not in done.stderr, \
            f"{module}: {source.name} compiles with warnings:\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "fastopt._core._kernels"])
def test_module_compiles_without_warnings(source_copy, module):
    _compile(source_copy, module, [])


def test_generated_loops_compile_without_front_end_warnings(source_copy):
    """Every generated loop and the kernel module: the C front end's warnings (seconds)."""
    _compile(source_copy, "fastopt._core._kernels", ["-fsyntax-only"])


@pytest.mark.slow
def test_generated_loops_compile_without_warnings(source_copy):
    """The kernel module in full (-O3: the optimizer's warnings too; about a minute)."""
    _compile(source_copy, "fastopt._core._kernels", [])

