# The instruction-set-dependent half of fastopt's compiled core: every element loop and every
# reduction loop. Included by _kernels.pyx and its instruction-set variants (_kernels_avx2.pyx, ...),
# which differ only in their compiler flags; compiler directives come from setup.py.
#
# Design
# ------
# * Point helpers (below) are ``cdef inline ... noexcept nogil``: torch's elementwise formulas,
#   written so the loops that use them stay branch-free and vectorize.
# * The element loops are generated (_algorithms.pxi, from the declarations in fastopt/algorithms):
#   one straight-line loop per combination of an algorithm's switches and per dtype, so no compiler
#   has to unswitch a loop on a runtime option (GCC's default limit was too small for Adam, which
#   fell back to a masked loop at 3 ns/element instead of 0.55).
# * Reductions sum fixed blocks with 16 accumulators in index order (lane j takes the elements with
#   index % 16 == j), so their result does not depend on the vector width or the thread count.
# * Everything is reached through one KernelTable (table_capsule()): the drivers in _bucket and
#   _reduce are compiled once and call whichever instruction-set variant was chosen at import.
#
# Every module is built with -O3 -fno-math-errno -ffp-contract=off: sqrt vectorizes, and no FMA is
# contracted, so every variant rounds exactly alike (bit-identical steps on any CPU).

cimport cython
from libc.math cimport sqrt, sqrtf, fabs, fabsf, pow, NAN
from libc.float cimport FLT_EPSILON, DBL_EPSILON
from cpython.pycapsule cimport PyCapsule_New

from fastopt._core._kernel_api cimport (
    AlgorithmKernels, KernelTable, loop_f32_fn, loop_f64_fn,
    RED_SUMSQ, RED_MAXABS, RED_SUMPOW, RED_NONFINITE, TR_SCALE, TR_CLAMP)

cdef extern from "simd.h":
    const char* FO_VECTOR_ISA
    const int FO_HAVE_AVX_REDUCE
    int fo_cpu_has_avx2_fma() noexcept nogil
    void fo_sumsq16_f32(const float* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_sumsq16_f64(const double* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_nonfinite16_f32(const float* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_nonfinite16_f64(const double* x, Py_ssize_t head, double* acc) noexcept nogil

ctypedef fused floating:
    float
    double


# ----------------------------------------------------------------------------------------------
# Point helpers for the update bodies
# ----------------------------------------------------------------------------------------------

cdef inline floating _sqrt(floating x) noexcept nogil:
    """Square root in the operand's own precision (sqrt on a float would widen to double)."""
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _lerp_low(floating start, floating end, floating weight) noexcept nogil:
    """torch.lerp for weight < 0.5: start + weight (end - start)."""
    return start + weight * (end - start)


cdef inline floating _lerp_high(floating start, floating end, floating weight) noexcept nogil:
    """torch.lerp for weight >= 0.5: end - (end - start)(1 - weight), the more accurate form there."""
    return end - (end - start) * (<floating>1 - weight)


cdef inline floating _max_nan(floating a, floating b) noexcept nogil:
    """torch.maximum(a, b): the larger, or NaN if either is NaN."""
    return b if (b > a or b != b) else a


cdef inline floating _sign(floating x) noexcept nogil:
    """torch.sign: -1, 0 or 1, and NaN for NaN (so non-finite values keep propagating)."""
    cdef floating s = <floating>((x > 0) - (x < 0))
    return x if x != x else s


cdef extern from "bf16.h":
    float fo_bf16(float x) noexcept nogil


cdef inline floating _bf16(floating x) noexcept nogil:
    """The nearest bfloat16 (ties to even), as torch's .bfloat16(); a double goes through float
    first, as torch converts it."""
    return <floating>fo_bf16(<float>x)


cdef inline floating _sign0(floating x) noexcept nogil:
    """torch.sign as torch 2.13 computes it on CPU: -1, 0 or 1, and 0 for NaN."""
    return <floating>((x > 0) - (x < 0))


include "_algorithms.pxi"


# ----------------------------------------------------------------------------------------------
# Reductions and transforms over one span
# ----------------------------------------------------------------------------------------------

cdef enum:
    # Independent accumulators in a reduction: enough to fill the vector units, and a fixed
    # summation order whatever the vector width.
    N_ACC = 16


cdef inline double _span_reduce(int kind, double p, const floating* x, Py_ssize_t n) noexcept nogil:
    """Reduce x[0:n] in a fixed order that does not depend on the vector width."""
    cdef double acc[N_ACC]
    cdef Py_ssize_t nan_count[N_ACC]
    cdef Py_ssize_t i, j, head = n - n % N_ACC
    cdef double a, r = 0.0
    for j in range(N_ACC):
        acc[j] = 0.0
        nan_count[j] = 0
    if kind == RED_SUMSQ:
        if FO_HAVE_AVX_REDUCE and N_ACC == 16:
            if floating is float:
                fo_sumsq16_f32(x, head, acc)
            else:
                fo_sumsq16_f64(x, head, acc)
        else:
            i = 0
            while i < head:
                for j in range(N_ACC):
                    a = <double>x[i + j]
                    acc[j] = acc[j] + a * a
                i += N_ACC
        for i in range(head, n):
            a = <double>x[i]
            acc[0] = acc[0] + a * a
    elif kind == RED_NONFINITE:
        # x - x is 0 for finite x and NaN for NaN and +-Inf; NaN survives the sum.
        if FO_HAVE_AVX_REDUCE and N_ACC == 16:
            if floating is float:
                fo_nonfinite16_f32(x, head, acc)
            else:
                fo_nonfinite16_f64(x, head, acc)
        else:
            i = 0
            while i < head:
                for j in range(N_ACC):
                    a = <double>x[i + j]
                    acc[j] = acc[j] + (a - a)
                i += N_ACC
        for i in range(head, n):
            a = <double>x[i]
            acc[0] = acc[0] + (a - a)
    elif kind == RED_MAXABS:
        # max |x| with torch's semantics (a NaN anywhere makes it NaN), branch-free so it
        # vectorizes: NaN never wins a comparison, so NaNs are counted on the side.
        i = 0
        while i < head:
            for j in range(N_ACC):
                a = fabs(<double>x[i + j])
                acc[j] = a if a > acc[j] else acc[j]
                nan_count[j] = nan_count[j] + (a != a)
            i += N_ACC
        for i in range(head, n):
            a = fabs(<double>x[i])
            acc[0] = a if a > acc[0] else acc[0]
            nan_count[0] = nan_count[0] + (a != a)
        for j in range(N_ACC):
            if nan_count[j] != 0:
                return NAN
            r = acc[j] if acc[j] > r else r
        return r
    else:
        for i in range(n):
            acc[0] = acc[0] + pow(fabs(<double>x[i]), p)
        return acc[0]
    for j in range(N_ACC):
        r = r + acc[j]
    return r


cdef double _reduce_f32(int kind, double p, const float* x, Py_ssize_t n) noexcept nogil:
    return _span_reduce(kind, p, x, n)


cdef double _reduce_f64(int kind, double p, const double* x, Py_ssize_t n) noexcept nogil:
    return _span_reduce(kind, p, x, n)


cdef inline void _span_transform(int kind, double a, floating* x, Py_ssize_t n) noexcept nogil:
    cdef floating s = <floating>a
    cdef floating lo = <floating>(-a)
    cdef Py_ssize_t i
    cdef floating v
    if kind == TR_SCALE:
        for i in range(n):
            x[i] = x[i] * s
    else:
        for i in range(n):
            v = x[i]
            # clamp that lets NaN through, as torch.clamp does
            if v < lo:
                v = lo
            if v > s:
                v = s
            x[i] = v


cdef void _transform_f32(int kind, double a, float* x, Py_ssize_t n) noexcept nogil:
    _span_transform(kind, a, x, n)


cdef void _transform_f64(int kind, double a, double* x, Py_ssize_t n) noexcept nogil:
    _span_transform(kind, a, x, n)


# ----------------------------------------------------------------------------------------------
# The table, and what this module tells about itself
# ----------------------------------------------------------------------------------------------

cdef KernelTable TABLE
TABLE.vector_isa = FO_VECTOR_ISA
TABLE.n_algorithms = len(KERNEL_NAMES)
TABLE.algorithms = ALGORITHMS
TABLE.reduce_f32 = _reduce_f32
TABLE.reduce_f64 = _reduce_f64
TABLE.transform_f32 = _transform_f32
TABLE.transform_f64 = _transform_f64


def table_capsule():
    """This module's KernelTable, for the drivers (``fastopt._core._table.use``)."""
    return PyCapsule_New(<void*>&TABLE, b"fastopt._core.KernelTable", NULL)


def vector_isa():
    """The vector instruction set this module was compiled for ("avx512", "avx2", "sse2", ...)."""
    return FO_VECTOR_ISA.decode("ascii")


def cpu_has_avx2_fma():
    """True if the running CPU supports AVX2 and FMA."""
    return bool(fo_cpu_has_avx2_fma())
