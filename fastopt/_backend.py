"""Choose the compiled kernel module for this CPU.

A default build (``pip install .``) compiles ``fastopt._step`` for the building CPU's vector ISA and
that is what runs. A portable build (``FASTOPT_PORTABLE=1``) compiles ``_step`` for baseline x86-64
and adds ``_step_avx2``; the AVX2/FMA module is chosen here when the running CPU has both, unless
``FASTOPT_FORCE_BASELINE=1``. Both compile the same source with ``-ffp-contract=off``, so they give
bit-identical results.
"""
import os

from . import _build_config
from . import _step as baseline

kernels = baseline
if (_build_config.PORTABLE and baseline.cpu_has_avx2_fma()
        and os.environ.get("FASTOPT_FORCE_BASELINE", "0") not in ("1", "true", "yes")):
    try:
        from . import _step_avx2 as kernels  # noqa: F811
    except ImportError:  # built without the AVX2 module (non-x86 compiler)
        kernels = baseline


def build_info():
    """A dict describing the compiled kernels in use: ISA, OpenMP, portability, flags."""
    return {
        "module": kernels.__name__,
        "vector_isa": kernels.vector_isa(),
        "openmp": kernels.has_openmp(),
        "portable_build": _build_config.PORTABLE,
        "cpu_has_avx2_fma": baseline.cpu_has_avx2_fma(),
        "cflags": list(_build_config.CFLAGS),
        # added for fastopt._lbfgs only (FMA contraction, wide vectors); see setup.py
        "lbfgs_cflags": list(getattr(_build_config, "LBFGS_CFLAGS", [])),
        "num_threads": kernels.get_num_threads(),
    }
