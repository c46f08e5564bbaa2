"""Build fastopt's Cython extensions.

The extensions are declared here; how they are built lives in ``build_tools/`` (build-time code,
not installed): the generated loops (``build_tools/codegen.py``), the compiler flags and why each
is there (``build_tools/flags.py``), the build command (``build_tools/build_ext.py``). Each module
of ``fastopt/_core/_isa.py``'s ``DISPATCHED`` is also built once per instruction-set variant the
compiler supports (``<module>_avx2``, ``<module>_avx512``), from the same .pyx.

Environment: ``FASTOPT_NATIVE=1`` (a build for this CPU only), ``FASTOPT_BUILD_JOBS`` and
``FASTOPT_CYTHON_JOBS`` (parallel jobs; default: the usable CPUs).
"""
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_tools import build_ext_fastopt, extension  # noqa: E402

ext_modules = [
    # the compiled core (fastopt/_core)
    extension("fastopt._core._kernels"),    # the element loops and reductions (dispatched)
    extension("fastopt._core._bucket"),     # the bucket driver and compiled drivers (dispatched)
    extension("fastopt._core._contracts"),
    extension("fastopt._core._cpu"),
    extension("fastopt._core._fastopt_threads", "fastopt/_core/pool.c"),   # the thread pool
    extension("fastopt._core._gather"),
    extension("fastopt._core._reduce"),
    extension("fastopt._core._table"),
    extension("fastopt._core._tensor_gather"),
    # L-BFGS / L-BFGS-B (dispatched; contracts to FMA: build_tools/flags.py says why)
    extension("fastopt.minimize._lbfgs", contract=True),
]

setup(cmdclass={"build_ext": build_ext_fastopt}, ext_modules=ext_modules)
