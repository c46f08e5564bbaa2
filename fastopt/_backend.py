"""Choose each compiled module's instruction-set variant for this CPU, and present the compiled core
as one namespace.

A portable build (the default) holds the modules with vector code -- the update kernels
``fastopt._core._kernels``, L-BFGS ``fastopt.minimize._lbfgs`` and the bucket driver
``fastopt._core._bucket`` -- compiled for baseline x86-64 and once per
variant the compiler supported (``fastopt/_core/_isa.py``: ``avx2``, ``avx512``). Here, once per
process, the best variant whose CPU features the running CPU has (``fastopt._core._cpu``: cpuid,
with the OS saving the registers) is chosen for every module; ``FASTOPT_FORCE_ISA=baseline|avx2|
avx512`` (or ``FASTOPT_FORCE_BASELINE=1``) chooses one instead, for tests and for comparing
variants. A native build (``FASTOPT_NATIVE=1``) has one target and nothing to choose.

Every variant compiles the same source with ``-ffp-contract=off``, so optimizer steps are
bit-identical whatever is chosen. The bucket driver ``_bucket`` (with the compiled drivers' own
loops) is dispatched too; it and ``_reduce`` (compiled once) call the chosen kernel module through
its kernel table. ``fastopt.minimize`` imports the chosen L-BFGS module itself
(``fastopt/minimize/_compiled.py``); L-BFGS is built with FMA contraction, so its last bits depend on the variant.

The bucket driver is imported when the first bucket is built (:func:`bucket_module`), not here,
as nothing before that needs it; its import is cheap and imports no SciPy. Muon's driver in it
calls SciPy's BLAS (``scipy.linalg.cython_blas``, whose import brings all of ``scipy.linalg`` --
more than the rest of ``import fastopt`` costs), but takes those functions from SciPy's exported
function pointers when the first Muon bucket is built (``fastopt/_core/_driver_muon.pxi``), so
only Muon pays for it.
"""
import functools
import importlib
import importlib.util
import os
import types

from . import _build_config
from ._core import _contracts, _cpu, _fastopt_threads as _threads, _isa, _reduce, _table
from .algorithms import KERNELS

_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def forced_variant(environ=os.environ):
    """The variant the environment forces (``FASTOPT_FORCE_ISA``, ``FASTOPT_FORCE_BASELINE``), or None."""
    names = [_isa.BASELINE] + [v.name for v in _isa.VARIANTS]
    isa = environ.get("FASTOPT_FORCE_ISA", "").strip().lower() or None
    if isa is not None and isa not in names:
        raise ImportError(f"FASTOPT_FORCE_ISA={environ['FASTOPT_FORCE_ISA']!r} names no "
                          f"instruction-set variant; use one of {', '.join(names)} (or unset it)")
    baseline = environ.get("FASTOPT_FORCE_BASELINE", "").strip().lower()
    if baseline not in _TRUE + _FALSE:
        raise ImportError(f"FASTOPT_FORCE_BASELINE={environ['FASTOPT_FORCE_BASELINE']!r}: use 1 or 0")
    if baseline in _TRUE:
        if isa not in (None, _isa.BASELINE):
            raise ImportError(f"FASTOPT_FORCE_BASELINE=1 and FASTOPT_FORCE_ISA={isa} contradict "
                              "each other; set one of them")
        isa = _isa.BASELINE
    return isa


def choose_variant(built, cpu_features, forced=None):
    """The variant to run: ``forced`` if given, else the best of ``built`` (names, best first) whose
    features are all in ``cpu_features``. ImportError, saying why, when ``forced`` cannot run."""
    if list(built) == [_isa.NATIVE]:
        if forced is not None:
            raise ImportError(f"the environment asks for fastopt's {forced!r} instruction-set variant, "
                              "but this is a native build (FASTOPT_NATIVE=1): it has one target and "
                              "no variants. Build the default (portable) one to choose variants.")
        return _isa.NATIVE
    if forced is not None:
        if forced not in built:
            raise ImportError(f"the environment asks for fastopt's {forced!r} instruction-set variant, "
                              f"but this build has {', '.join(built)} only (its compiler could not "
                              "build the others)")
        missing = sorted(_required(forced) - set(cpu_features))
        if missing:
            raise ImportError(f"the environment asks for fastopt's {forced!r} instruction-set variant, "
                              f"but this CPU lacks {', '.join(missing)}: it would crash on an "
                              "illegal instruction")
        return forced
    for name in built:
        if _required(name) <= set(cpu_features):
            return name
    raise ImportError(f"no built variant ({', '.join(built)}) runs on this CPU")


def _required(name):
    return set() if name in (_isa.BASELINE, _isa.NATIVE) else set(_isa.by_name(name).features)


CPU_FEATURES = _cpu.cpu_features()
VARIANT = choose_variant(_build_config.VARIANTS, CPU_FEATURES, forced_variant())
FORCED = forced_variant() is not None


def _load(module):
    """``module`` compiled for the chosen variant."""
    return importlib.import_module(_isa.variant_module(module, VARIANT))


selected = _load("fastopt._core._kernels")

_BUCKET_MODULE = _isa.variant_module("fastopt._core._bucket", VARIANT)
if importlib.util.find_spec(_BUCKET_MODULE) is None:
    # a build without it fails here, at import, as it did when the module was imported here
    raise ImportError(f"No module named {_BUCKET_MODULE!r}: fastopt's build is incomplete; rebuild "
                      "it (pip install ., or python setup.py build_ext --inplace)")


@functools.cache
def bucket_module():
    """The bucket drivers compiled for the chosen variant, imported on first use (see above)."""
    return importlib.import_module(_BUCKET_MODULE)


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


def config_index(param, grad, state, master, stochastic, kernel=None):
    """The kernel table's storage configuration for these storage codes (-1: not built), and
    with ``kernel`` (a kernel name) -1 as well when that kernel has no loops for it (the build
    generates only the configurations the Python layer can select for each kernel)."""
    index = _CONFIG_INDEX.get((param, grad, state, bool(master), bool(stochastic)), -1)
    if kernel is not None and index not in selected.KERNEL_CONFIGS[_KERNEL_INDEX[kernel]]:
        return -1
    return index


def bucket_class(driver):
    """The bucket class that runs an algorithm: its declared driver, or the generic ParamBucket."""
    bucket = bucket_module()
    return bucket.ParamBucket if driver is None else getattr(bucket, driver)


def pack(name, values):
    """Kernel ``name``'s hyperparameter struct, filled from ``values`` by field name, in a
    :class:`~fastopt._core._contracts.PackedHyperparameters` that names the kernel (a bucket of
    another kernel refuses it)."""
    return _contracts.PackedHyperparameters(_KERNEL_INDEX[name], values)


class _CompiledCore(types.SimpleNamespace):
    """A namespace whose ``ParamBucket`` imports the bucket drivers when first asked for."""

    @property
    def ParamBucket(self):
        return bucket_module().ParamBucket


#: The compiled core as one namespace (what the rest of fastopt and the tests use).
kernels = _CompiledCore(
    __name__=selected.__name__,
    module=selected,
    vector_isa=selected.vector_isa,
    has_threads=_threads.has_threads,
    calibration=_threads.calibration,
    recalibrate=_threads.recalibrate,
    _set_helper_delay_us=_threads._set_helper_delay_us,
    set_num_threads=_threads.set_num_threads,
    get_num_threads=_threads.get_num_threads,
    set_parallel_min_size=_threads.set_parallel_min_size,
    get_parallel_min_size=_threads.get_parallel_min_size,
    ArraySet=_reduce.ArraySet,
    gather_arrays=_reduce.gather_arrays,
    kernel_index=kernel_index,
    config_index=config_index,
    pack=pack,
    PackedHyperparameters=_contracts.PackedHyperparameters,
    BucketSpec=_contracts.BucketSpec,
    bucket_class=bucket_class,
)


def build_info():
    """How the installed fastopt was built and what runs here, as a dict.

    ``build`` is ``"portable"`` (baseline plus instruction-set variants chosen at import) or
    ``"native"``; ``variant`` the variant chosen for this CPU (or forced by ``FASTOPT_FORCE_ISA`` /
    ``FASTOPT_FORCE_BASELINE``: ``variant_forced``) and ``modules`` the module that runs for each
    dispatched one; ``vector_isa`` what the kernels in use were compiled for; the flags are those
    of every module, plus ``variant_cflags`` for a variant's and ``lbfgs_cflags`` for L-BFGS.

    Examples
    --------
    >>> import fastopt
    >>> info = fastopt.build_info()
    >>> info["build"] in ("portable", "native")
    True
    >>> sorted(info)[:4]
    ['build', 'cflags', 'cpu_features', 'lbfgs_cflags']
    >>> info["num_threads"] == fastopt.get_num_threads()
    True
    """
    return {
        "build": _build_config.BUILD,
        "variant": VARIANT,
        "variant_forced": FORCED,
        "variants_built": list(_build_config.VARIANTS),
        "modules": {name: _isa.variant_module(name, VARIANT) for name in _isa.DISPATCHED},
        "cpu_features": sorted(CPU_FEATURES),
        "module": selected.__name__,
        "vector_isa": selected.vector_isa(),
        "threads": "fastopt pool" if _threads.has_threads() else "none",
        "cflags": list(_build_config.CFLAGS),
        "variant_cflags": dict(_build_config.VARIANT_CFLAGS).get(VARIANT, []),
        # added for fastopt.minimize._lbfgs only (FMA contraction, wide vectors); see build_tools/flags.py
        "lbfgs_cflags": list(_build_config.LBFGS_CFLAGS),
        "num_threads": _threads.get_num_threads(),
    }
