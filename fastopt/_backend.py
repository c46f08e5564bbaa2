"""Choose the compiled kernel module for this CPU, and present the compiled core as one namespace.

A default build (``pip install .``) compiles ``fastopt._core._kernels`` for the building CPU's
vector ISA and that is what runs. A portable build (``FASTOPT_PORTABLE=1``) compiles it for baseline
x86-64 and adds ``_kernels_avx2``; the AVX2/FMA module is chosen here when the running CPU has both,
unless ``FASTOPT_FORCE_BASELINE=1``. Both compile the same source with ``-ffp-contract=off``, so they
give bit-identical results. The drivers (``_bucket``, ``_reduce``) are compiled once and call the
chosen module through its kernel table.
"""
import os
import types

from . import _build_config
from ._core import _bucket, _fastopt_threads as _threads, _reduce, _table
from ._core import _kernels as baseline
from .algorithms import KERNELS

selected = baseline
if (_build_config.PORTABLE and baseline.cpu_has_avx2_fma()
        and os.environ.get("FASTOPT_FORCE_BASELINE", "0") not in ("1", "true", "yes")):
    try:
        from ._core import _kernels_avx2 as selected  # noqa: F811
    except ImportError:  # built without the AVX2 module (non-x86 compiler)
        selected = baseline

if tuple(selected.KERNEL_NAMES) != tuple(a.kernel for a in KERNELS):
    raise ImportError(
        "fastopt's compiled kernels were built from other algorithm declarations than the ones in "
        f"fastopt/algorithms ({list(selected.KERNEL_NAMES)} vs {[a.kernel for a in KERNELS]}); "
        "rebuild it (pip install ., or python setup.py build_ext --inplace)")
_table.use(selected)

_KERNEL_INDEX = {name: i for i, name in enumerate(selected.KERNEL_NAMES)}


def kernel_index(name):
    """The position of kernel ``name`` in the kernel table."""
    return _KERNEL_INDEX[name]


_CONFIG_INDEX = {tuple(key): i for i, key in enumerate(selected.STORAGE_CONFIGS)}
_CODEGEN_NAMES = {0: "f32", 1: "f64", 2: "bf16", 3: "f16"}


def config_index(param, grad, state, master, stochastic):
    """The kernel table's storage configuration for these storage codes (-1: not built)."""
    key = (_CODEGEN_NAMES[param], _CODEGEN_NAMES[grad], _CODEGEN_NAMES[state], bool(master),
           bool(stochastic))
    return _CONFIG_INDEX.get(key, -1)


def bucket_class(driver):
    """The bucket class that runs an algorithm: its declared driver, or the generic ParamBucket."""
    return _bucket.ParamBucket if driver is None else getattr(_bucket, driver)


def pack(name, values):
    """Kernel ``name``'s hyperparameter struct, filled from ``values`` by field name."""
    return selected.PACKERS[_KERNEL_INDEX[name]](values)


#: The compiled core as one namespace (what the rest of fastopt and the tests use).
kernels = types.SimpleNamespace(
    __name__=selected.__name__,
    module=selected,
    vector_isa=selected.vector_isa,
    cpu_has_avx2_fma=baseline.cpu_has_avx2_fma,
    has_threads=_threads.has_threads,
    calibration=_threads.calibration,
    recalibrate=_threads.recalibrate,
    _set_helper_delay_us=_threads._set_helper_delay_us,
    set_num_threads=_threads.set_num_threads,
    get_num_threads=_threads.get_num_threads,
    set_parallel_min_size=_threads.set_parallel_min_size,
    get_parallel_min_size=_threads.get_parallel_min_size,
    ParamBucket=_bucket.ParamBucket,
    ArraySet=_reduce.ArraySet,
    gather_arrays=_reduce.gather_arrays,
    kernel_index=kernel_index,
    config_index=config_index,
    pack=pack,
    bucket_class=bucket_class,
)


def build_info():
    """A dict describing the compiled kernels in use: ISA, OpenMP, portability, flags."""
    return {
        "module": selected.__name__,
        "vector_isa": selected.vector_isa(),
        "threads": "fastopt pool" if _threads.has_threads() else "none",
        "portable_build": _build_config.PORTABLE,
        "cpu_has_avx2_fma": baseline.cpu_has_avx2_fma(),
        "cflags": list(_build_config.CFLAGS),
        # added for fastopt._lbfgs only (FMA contraction, wide vectors); see setup.py
        "lbfgs_cflags": list(getattr(_build_config, "LBFGS_CFLAGS", [])),
        "num_threads": _threads.get_num_threads(),
    }
