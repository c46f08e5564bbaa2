# The instruction-set-dependent half of fastopt's compiled core: every element loop and every
# reduction loop. Like every module of fastopt/_core/_isa.py's DISPATCHED, it is compiled once for
# the build's baseline and once more per instruction-set variant, from this same file, as
# fastopt._core._kernels_<variant> (build_tools/extensions.py); the variants differ only in their
# compiler flags. Compiler directives come from build_tools.
#
# Design
# ------
# * The element loops are generated from the declarations in fastopt/algorithms, as C
#   (_algorithm_loops.h): one straight-line loop per combination of an algorithm's switches and per
#   storage configuration (float32, float64, bfloat16/float16 with or without a float32 master
#   copy), so no compiler has to unswitch a loop on a runtime option (GCC's default limit was too
#   small for Adam, which fell back to a masked loop at 3 ns/element instead of 0.55). Their point
#   helpers (torch.lerp's two forms, torch.maximum, torch.sign) are branch-free, so they vectorize.
# * Reductions sum fixed blocks with 16 accumulators in index order (lane j takes the elements with
#   index % 16 == j), so their result does not depend on the vector width or the thread count.
# * Everything is reached through one KernelTable (table_capsule()): the drivers in _bucket (whose
#   variant fastopt._backend chooses with this module's) and _reduce (compiled once) call whichever
#   instruction-set variant was chosen at import.
#
# Every module is built with -O3 -fno-math-errno -ffp-contract=off: sqrt vectorizes, and no FMA is
# contracted, so every variant rounds exactly alike (bit-identical steps on any CPU).

cimport cython
from libc.math cimport sqrt, sqrtf, fabs, fabsf, pow, exp, log, NAN   # per_array may call them
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.float cimport FLT_EPSILON, DBL_EPSILON     # for prologues (Adafactor's eps=None)
from cpython.pycapsule cimport PyCapsule_New

import numpy as np

from fastopt._core._kernel_api cimport (
    AlgorithmKernels, KernelTable, loop_fn, ST_F32, ST_F64, ST_BF16, ST_F16, Q8_BLOCK,
    RED_SUMSQ, RED_MAXABS, RED_SUMPOW, RED_NONFINITE, TR_SCALE, TR_CLAMP)

cdef extern from "simd.h":
    # half precision (see simd.h): bfloat16 and float16 as their bits
    ctypedef uint16_t fo_half
    float fo_bf16_load(uint16_t b) noexcept nogil
    uint16_t fo_bf16_rne(float f) noexcept nogil
    uint16_t fo_bf16_sr(float f, uint32_t random) noexcept nogil
    uint32_t fo_random_bits(uint64_t key, Py_ssize_t index) noexcept nogil
    float fo_f16_load(fo_half h) noexcept nogil
    fo_half fo_f16_round(float f) noexcept nogil
    const char* FO_VECTOR_ISA

cdef extern from "reduce16.h":
    const int FO_HAVE_AVX_REDUCE
    void fo_sumsq16_f32(const float* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_sumsq16_f64(const double* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_nonfinite16_f32(const float* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_nonfinite16_f64(const double* x, Py_ssize_t head, double* acc) noexcept nogil

ctypedef fused floating:
    float
    double


# The element loops (C, generated: _algorithm_loops.h) and their Cython half (the hyperparameter
# structs' packers, the prologues, the kernel table).
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


cdef enum:
    # Half-precision values are widened into float32 in pieces of this many, then reduced as
    # float32 (widening is exact, so the result is the one of a float32 copy of the data).
    WIDEN_PIECE = 512


cdef double _reduce_half(int storage, int kind, double p, const char* x, Py_ssize_t n) noexcept nogil:
    """A reduction over bfloat16/float16 data: its float32 values, a piece at a time, in the same
    order as a float32 array's (lanes of 16, pieces of a multiple of 16)."""
    cdef float buf[WIDEN_PIECE]
    cdef Py_ssize_t start = 0, m
    cdef double r = 0.0, part
    while start < n:
        m = n - start if n - start < WIDEN_PIECE else WIDEN_PIECE
        _widen(storage, x, buf, start, m)
        part = _span_reduce(kind, p, <const float*>buf, m)
        if kind == RED_MAXABS:
            if part != part or r != r:
                r = NAN
            elif part > r:
                r = part
        else:
            r = r + part
        start += m
    return r


cdef inline void _widen(int storage, const char* x, float* out, Py_ssize_t start,
                        Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    cdef const uint16_t* b = (<const uint16_t*>x) + start
    cdef const fo_half* h = (<const fo_half*>x) + start
    cdef const float* f = (<const float*>x) + start
    if storage == ST_BF16:
        for i in range(m):
            out[i] = fo_bf16_load(b[i])
    elif storage == ST_F16:
        for i in range(m):
            out[i] = fo_f16_load(h[i])
    else:
        for i in range(m):
            out[i] = f[i]


cdef double _reduce(int storage, int kind, double p, const char* x, Py_ssize_t n) noexcept nogil:
    if storage == ST_F32:
        return _span_reduce(kind, p, <const float*>x, n)
    if storage == ST_F64:
        return _span_reduce(kind, p, <const double*>x, n)
    return _reduce_half(storage, kind, p, x, n)


cdef void _widen_all(int storage, const char* x, float* out, Py_ssize_t n) noexcept nogil:
    """x (any storage but float64) as float32: a master copy's first values."""
    _widen(storage, x, out, 0, n)


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


cdef void _transform_half(int storage, int kind, double a, char* x, Py_ssize_t n) noexcept nogil:
    """A transform of bfloat16/float16 data: in float32, rounded back once (nearest, ties to even)."""
    cdef float s = <float>a, lo = <float>(-a), v
    cdef Py_ssize_t i
    cdef uint16_t* b = <uint16_t*>x
    cdef fo_half* h = <fo_half*>x
    if storage == ST_BF16:
        if kind == TR_SCALE:
            for i in range(n):
                b[i] = fo_bf16_rne(fo_bf16_load(b[i]) * s)
        else:
            for i in range(n):
                v = fo_bf16_load(b[i])
                v = lo if v < lo else v
                b[i] = fo_bf16_rne(s if v > s else v)
    else:
        if kind == TR_SCALE:
            for i in range(n):
                h[i] = fo_f16_round(fo_f16_load(h[i]) * s)
        else:
            for i in range(n):
                v = fo_f16_load(h[i])
                v = lo if v < lo else v
                h[i] = fo_f16_round(s if v > s else v)


cdef void _transform(int storage, int kind, double a, char* x, Py_ssize_t n) noexcept nogil:
    if storage == ST_F32:
        _span_transform(kind, a, <float*>x, n)
    elif storage == ST_F64:
        _span_transform(kind, a, <double*>x, n)
    else:
        _transform_half(storage, kind, a, x, n)


# ----------------------------------------------------------------------------------------------
# 8-bit blocks (q8.h), reachable from Python for the tests and for converting checkpoints
# ----------------------------------------------------------------------------------------------

cdef extern from "q8.h":
    void fo_q8_load_block(float* dst, const uint8_t* codes, float absmax, const float* qmap,
                          Py_ssize_t n) noexcept nogil
    void fo_q8_store_block_signed(uint8_t* codes, float* absmax, const float* v,
                                  Py_ssize_t n) noexcept nogil
    void fo_q8_store_block_unsigned(uint8_t* codes, float* absmax, const float* v,
                                    Py_ssize_t n) noexcept nogil
    const float* fo_q8_map_signed
    const float* fo_q8_map_unsigned


def quantize_blockwise(const float[::1] values not None, str code_map):
    """``(codes, absmax)`` of float32 ``values`` in 8-bit blocks, as the loops store a state:
    ``code_map`` is ``"signed"`` or ``"unsigned"``."""
    if code_map not in ("signed", "unsigned"):
        raise ValueError(f"code_map must be 'signed' or 'unsigned', got {code_map!r}")
    cdef Py_ssize_t n = values.shape[0], n_blocks = (n + Q8_BLOCK - 1) // Q8_BLOCK, b, start
    codes = np.empty(n, dtype=np.uint8)
    absmax = np.empty(n_blocks, dtype=np.float32)
    cdef uint8_t[::1] c = codes
    cdef float[::1] a = absmax
    cdef bint signed = code_map == "signed"
    with nogil:
        for b in range(n_blocks):
            start = b * Q8_BLOCK
            if signed:
                fo_q8_store_block_signed(&c[start], &a[b], &values[start], min(Q8_BLOCK, n - start))
            else:
                fo_q8_store_block_unsigned(&c[start], &a[b], &values[start], min(Q8_BLOCK, n - start))
    return codes, absmax


def dequantize_blockwise(const uint8_t[::1] codes not None, const float[::1] absmax not None,
                         str code_map):
    """The float32 values of 8-bit ``codes`` with their blocks' ``absmax``, as the loops load them."""
    if code_map not in ("signed", "unsigned"):
        raise ValueError(f"code_map must be 'signed' or 'unsigned', got {code_map!r}")
    cdef Py_ssize_t n = codes.shape[0], n_blocks = (n + Q8_BLOCK - 1) // Q8_BLOCK, b, start
    if absmax.shape[0] != n_blocks:
        raise ValueError(f"absmax must hold {n_blocks} values (one per block of {Q8_BLOCK}), "
                         f"got {absmax.shape[0]}")
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    cdef const float* qmap = fo_q8_map_signed if code_map == "signed" else fo_q8_map_unsigned
    with nogil:
        for b in range(n_blocks):
            start = b * Q8_BLOCK
            fo_q8_load_block(&o[start], &codes[start], absmax[b], qmap, min(Q8_BLOCK, n - start))
    return out


# ----------------------------------------------------------------------------------------------
# The table, and what this module tells about itself
# ----------------------------------------------------------------------------------------------

cdef KernelTable TABLE
TABLE.vector_isa = FO_VECTOR_ISA
TABLE.n_algorithms = len(KERNEL_NAMES)
TABLE.algorithms = ALGORITHMS
TABLE.n_configs = len(STORAGE_CONFIGS)
TABLE.reduce = _reduce
TABLE.transform = _transform
TABLE.widen = _widen_all


def table_capsule():
    """This module's KernelTable, for the drivers (``fastopt._core._table.use``)."""
    return PyCapsule_New(<void*>&TABLE, b"fastopt._core.KernelTable", NULL)


def vector_isa():
    """The vector instruction set this module was compiled for ("avx512", "avx2", "sse2", ...)."""
    return FO_VECTOR_ISA.decode("ascii")
