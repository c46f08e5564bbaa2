"""fastopt's instruction-set variants, as data: setup.py reads it (what to compile, with which
flags) and so does :mod:`fastopt._backend` (which variant the running CPU takes).

A portable build (the default, and what a wheel holds) compiles every module for baseline x86-64,
so it imports on any x86-64 CPU, and compiles each module with vector code (:data:`DISPATCHED`)
once more per variant the compiler supports, as ``<module>_<variant>`` (a one-line ``.pyx`` that
includes the module's source). At import the best variant whose features the running CPU has (with
the OS saving their registers) is chosen once, the same for every module, as NumPy dispatches its
loops. A native build (``FASTOPT_NATIVE=1``) has one target, the building CPU, and no variants.

Each feature name is the GCC/Clang flag without its ``-m`` (``avx2`` -> ``-mavx2``), the macro the
compiler then defines (``__AVX2__``) and the name :func:`fastopt._core._cpu.cpu_features` reports.
"""
from collections import namedtuple

#: The compiler's default x86-64 target (SSE2): every x86-64 CPU runs it. Non-x86 builds have this
#: variant only, compiled for the compiler's default target there.
BASELINE = "baseline"
#: The single target of a ``FASTOPT_NATIVE=1`` build.
NATIVE = "native"

Variant = namedtuple("Variant", "name features msvc_flags")
Variant.__doc__ = """An instruction-set variant: its name, the CPU features it is compiled for and
needs at run time, and MSVC's flag for them (GCC and Clang get ``-m<feature>`` for each)."""

#: The variants beyond the baseline, best first: the x86-64 psABI's microarchitecture levels.
#: ``avx2`` is x86-64-v3 (Haswell, Zen and later: AVX2, FMA, F16C and the scalar BMI1/BMI2, LZCNT,
#: MOVBE, POPCNT a native build on those CPUs also uses); ``avx512`` is x86-64-v4 (Skylake-X and
#: later: v3 and AVX-512 F/CD/VL/BW/DQ).
_X86_64_V3 = ("avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe", "popcnt")
VARIANTS = (
    Variant("avx512", _X86_64_V3 + ("avx512f", "avx512cd", "avx512vl", "avx512bw", "avx512dq"),
            ("/arch:AVX512",)),
    Variant("avx2", _X86_64_V3, ("/arch:AVX2",)),
)

#: The compiled modules with vector code, built once per variant: the element loops, L-BFGS, and the
#: bucket driver (the compiled drivers' own loops: Adafactor's row and column statistics, Muon's
#: bfloat16 rounding between BLAS products; Adafactor was ~30% slower with them at the baseline).
#: The others (reductions' bookkeeping, gathers, the thread pool) are compiled once, for the baseline.
DISPATCHED = ("fastopt._core._kernels", "fastopt.minimize._lbfgs", "fastopt._core._bucket")


def variant_module(module, variant):
    """The module that holds ``module`` compiled for ``variant``."""
    return module if variant in (BASELINE, NATIVE) else f"{module}_{variant}"


def by_name(name):
    """The :class:`Variant` called ``name`` (a name of :data:`VARIANTS`)."""
    return {v.name: v for v in VARIANTS}[name]


def gcc_flags(variant):
    """GCC/Clang flags of a variant of :data:`VARIANTS`."""
    return ["-m" + feature for feature in by_name(variant).features]


def compiler_macros(variant, msvc=False):
    """The macros a compiler defines when it compiles for ``variant`` (MSVC's ``/arch`` defines
    those of the AVX2 and AVX-512 families only)."""
    features = by_name(variant).features
    if msvc:
        features = [f for f in features if f.startswith("avx")]
    return ["__%s__" % f.upper() for f in features]
