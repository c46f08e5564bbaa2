"""fastopt's build-time code (not installed; in the sdist, so that ``pip install`` from it builds).

* :mod:`build_tools.codegen` and ``templates/``: the element loops, structs and kernel table of every
  algorithm declared in ``fastopt/algorithms``, generated into ``fastopt/_core`` (untracked).
* :mod:`build_tools.flags`: the compiler flags, probed, and why each is there.
* :mod:`build_tools.build_ext`: the build_ext command that runs them, cythonizes, builds each module
  of ``fastopt/_core/_isa.py``'s ``DISPATCHED`` once per instruction-set variant, compiles in
  parallel and never recompiles what did not change.

setup.py declares the extensions with :func:`extension` and hands :class:`build_ext_fastopt` to
setuptools. Environment: ``FASTOPT_NATIVE=1`` (a native build), ``FASTOPT_BUILD_JOBS`` (parallel
compiler jobs; default: the CPUs this process may use), ``FASTOPT_CYTHON_JOBS`` (parallel Cython
jobs; default the same).
"""
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from . import codegen  # noqa: E402  (codegen loads the source tree's modules by path)

#: fastopt/_core/_isa.py: the instruction-set variants and the modules built for each
isa = codegen._load("_fastopt_isa_for_build", os.path.join(ROOT, "fastopt", "_core", "_isa.py"))

from .build_ext import build_ext_fastopt  # noqa: E402


def extension(name, *c_sources, contract=False):
    """The extension module ``name`` (``fastopt.a._b``, from ``fastopt/a/_b.pyx``), with hand-written
    C files ``c_sources`` compiled into it; ``contract``: it takes L-BFGS's floating-point
    contraction flags (build_tools/flags.py). A module of ``_isa.DISPATCHED`` is also built once per
    instruction-set variant."""
    import numpy as np
    from setuptools import Extension

    pyx = os.path.join(*name.split(".")) + ".pyx"
    # every header of the compiled core (hand-written and generated): a change in one recompiles the
    # modules (Cython's own dependency check sees .pyx/.pxd/.pxi files, not the headers they include)
    headers = sorted(glob.glob(os.path.join("fastopt", "_core", "*.h")))
    ext = Extension(name, [pyx, *c_sources],
                    include_dirs=[np.get_include(), os.path.join("fastopt", "_core")],
                    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                    depends=headers)
    ext.fastopt_contract = contract
    return ext


__all__ = ["ROOT", "build_ext_fastopt", "extension", "isa"]
