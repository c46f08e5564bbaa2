# What the running CPU supports (cpu.h: cpuid, and the register state the OS saves), for
# fastopt._backend to choose each dispatched module's instruction-set variant. Compiled once, for
# the baseline (it is not dispatched itself).
cdef extern from "cpu.h":
    unsigned fo_cpu_features() nogil
    enum:
        FO_CPU_AVX2
        FO_CPU_FMA
        FO_CPU_F16C
        FO_CPU_AVX512F
        FO_CPU_AVX512CD
        FO_CPU_AVX512VL
        FO_CPU_AVX512BW
        FO_CPU_AVX512DQ
        FO_CPU_BMI
        FO_CPU_BMI2
        FO_CPU_LZCNT
        FO_CPU_MOVBE
        FO_CPU_POPCNT

_BITS = {"avx2": FO_CPU_AVX2, "fma": FO_CPU_FMA, "f16c": FO_CPU_F16C, "avx512f": FO_CPU_AVX512F,
         "avx512cd": FO_CPU_AVX512CD, "avx512vl": FO_CPU_AVX512VL, "avx512bw": FO_CPU_AVX512BW,
         "avx512dq": FO_CPU_AVX512DQ, "bmi": FO_CPU_BMI, "bmi2": FO_CPU_BMI2, "lzcnt": FO_CPU_LZCNT,
         "movbe": FO_CPU_MOVBE, "popcnt": FO_CPU_POPCNT}


def cpu_features():
    """The features of fastopt's variants (``avx2``, ``fma``, ``bmi2``, ..., ``avx512vl``) that the running
    CPU has and its OS enables, as a frozenset of names (empty on other architectures)."""
    cdef unsigned bits = fo_cpu_features()
    return frozenset(name for name, bit in _BITS.items() if bits & bit)
