# fastopt's compiled core: every update kernel, written once over the fused ``floating`` type.
#
# This file is included by ``_step.pyx`` (built for the native ISA, or for baseline x86-64 in a
# portable build) and by ``_step_avx2.pyx`` (portable builds only, compiled with -mavx2 -mfma and
# chosen at run time). Compiler directives come from setup.py.
#
# Layout of one step
# ------------------
# A ``ParamBucket`` holds the params of one param group that share a dtype. Their data pointers,
# sizes and prefix offsets are gathered once at construction (params never move), and each optimizer
# state buffer ("exp_avg", ...) of the bucket is one contiguous arena of ``total_size`` elements in
# which param k owns ``[offsets[k], offsets[k + 1])``. A step gathers the gradient pointers in C,
# validating each one, then makes a single ``nogil`` call that walks the bucket's global element
# range: thread t of T takes ``[N t / T, N (t + 1) / T)`` (cut at 16-element boundaries so no two
# threads share a cache line) and runs the per-element kernel on each array span that overlaps it.
# Elementwise updates are therefore bit-identical for any thread count. Reductions (the clipping
# norm, the finiteness check) are summed in fixed 4096-element blocks and the block partials combined
# in block order, so they too are independent of the thread count.

cimport cython
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.math cimport sqrt, sqrtf, fabs, pow, INFINITY, NAN
from libc.stdint cimport intptr_t, int64_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cpython.object cimport PyObject
cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fo_omp_max_threads(void) { return omp_get_max_threads(); }
    static int fo_omp_team_size(void) { return omp_get_num_threads(); }
    static int fo_has_openmp(void) { return 1; }
    #else
    static int fo_omp_max_threads(void) { return 1; }
    static int fo_omp_team_size(void) { return 1; }
    static int fo_has_openmp(void) { return 0; }
    #endif
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static int fo_cpu_has_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    #else
    static int fo_cpu_has_avx2_fma(void) { return 0; }
    #endif
    #if defined(__AVX512F__)
    #define FO_VECTOR_ISA "avx512"
    #elif defined(__AVX2__)
    #define FO_VECTOR_ISA "avx2"
    #elif defined(__AVX__)
    #define FO_VECTOR_ISA "avx"
    #elif defined(__SSE2__)
    #define FO_VECTOR_ISA "sse2"
    #else
    #define FO_VECTOR_ISA "generic"
    #endif

    /* Reduction bodies (sum of squares; the finiteness sum of x - x) with their 16 float64
     * accumulators in four AVX registers. Written as a Cython loop, GCC keeps the accumulator
     * array in memory and widens float32 loads in 128-bit halves, ~1.6x slower. Lane j still sums
     * the elements with index % 16 == j in index order, so the result is bit-identical to the
     * portable loop (-ffp-contract=off: no FMA). Only the first `head` elements (a multiple of 16)
     * are reduced here; the caller adds the tail and the lanes. */
    #if defined(__AVX__)
    #include <immintrin.h>
    #define FO_HAVE_AVX_REDUCE 1
    #define FO_LOAD_F32(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
    #define FO_LOAD_F64(p) _mm256_loadu_pd(p)
    #define FO_SQUARE(t) _mm256_mul_pd(t, t)
    #define FO_SELF_DIFF(t) _mm256_sub_pd(t, t)
    #define FO_REDUCE16(NAME, T, LOAD, OP)                                                   \
        static void NAME(const T* x, Py_ssize_t head, double* acc) {                         \
            __m256d a0 = _mm256_loadu_pd(acc), a1 = _mm256_loadu_pd(acc + 4), t;             \
            __m256d a2 = _mm256_loadu_pd(acc + 8), a3 = _mm256_loadu_pd(acc + 12);           \
            for (Py_ssize_t i = 0; i < head; i += 16) {                                      \
                t = LOAD(x + i);      a0 = _mm256_add_pd(a0, OP(t));                         \
                t = LOAD(x + i + 4);  a1 = _mm256_add_pd(a1, OP(t));                         \
                t = LOAD(x + i + 8);  a2 = _mm256_add_pd(a2, OP(t));                         \
                t = LOAD(x + i + 12); a3 = _mm256_add_pd(a3, OP(t));                         \
            }                                                                                \
            _mm256_storeu_pd(acc, a0); _mm256_storeu_pd(acc + 4, a1);                        \
            _mm256_storeu_pd(acc + 8, a2); _mm256_storeu_pd(acc + 12, a3);                   \
        }
    #else
    #define FO_HAVE_AVX_REDUCE 0
    #define FO_REDUCE16(NAME, T, LOAD, OP)                                                   \
        static void NAME(const T* x, Py_ssize_t head, double* acc) { (void)x; (void)head; (void)acc; }
    #endif
    FO_REDUCE16(fo_sumsq16_f32, float, FO_LOAD_F32, FO_SQUARE)
    FO_REDUCE16(fo_sumsq16_f64, double, FO_LOAD_F64, FO_SQUARE)
    FO_REDUCE16(fo_nonfinite16_f32, float, FO_LOAD_F32, FO_SELF_DIFF)
    FO_REDUCE16(fo_nonfinite16_f64, double, FO_LOAD_F64, FO_SELF_DIFF)
    """
    int fo_omp_max_threads() noexcept nogil
    int fo_omp_team_size() noexcept nogil
    int fo_has_openmp() noexcept nogil
    int fo_cpu_has_avx2_fma() noexcept nogil
    const char* FO_VECTOR_ISA
    const int FO_HAVE_AVX_REDUCE
    void fo_sumsq16_f32(const float* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_sumsq16_f64(const double* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_nonfinite16_f32(const float* x, Py_ssize_t head, double* acc) noexcept nogil
    void fo_nonfinite16_f64(const double* x, Py_ssize_t head, double* acc) noexcept nogil


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------

# 0 means "follow OpenMP" (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl).
cdef int _requested_threads = 0
# A step whose work is below this runs on the calling thread: waking a thread team (~2 us here)
# costs more than the work it would share. Work is elements times the kernel's weight (below), so
# a compute-heavy Adam step goes parallel at ~8k elements and a light SGD step at ~25k; measured on
# a 2-core Xeon, where these are where 2 threads start to win.
cdef Py_ssize_t _parallel_min_size = 24576
cdef enum:
    # Each thread's share is cut at a multiple of this many elements (one 64-byte line of float32).
    SPLIT_ALIGN = 16
    # Reductions are summed in blocks of this many elements, then the block sums in block order.
    REDUCE_BLOCK = 4096
    # Independent accumulators in a reduction: enough to fill the vector units, and a fixed
    # summation order whatever the vector width.
    N_ACC = 16


def vector_isa():
    """The vector instruction set this module was compiled for ("avx512", "avx2", "sse2", ...)."""
    return FO_VECTOR_ISA.decode("ascii")


def has_openmp():
    """True if this module was built with OpenMP."""
    return bool(fo_has_openmp())


def cpu_has_avx2_fma():
    """True if the running CPU supports AVX2 and FMA."""
    return bool(fo_cpu_has_avx2_fma())


def set_num_threads(int n):
    """Use ``n`` threads for large steps; ``0`` restores the OpenMP default (``OMP_NUM_THREADS``)."""
    global _requested_threads
    if n < 0:
        raise ValueError(f"num_threads must be >= 0, got {n}")
    _requested_threads = n


def get_num_threads():
    """The number of threads a large step uses now."""
    return _effective_threads()


def set_parallel_min_size(Py_ssize_t n):
    """Steps with less work than ``n`` run on one thread (``0``: always use the thread team).

    Work is the number of elements times the kernel's weight: 1 for SGD, clipping and the
    finiteness check, 2 for RMSprop and Adagrad, 3 for Adam/AdamW (a square root and two
    divisions per element).
    """
    global _parallel_min_size
    if n < 0:
        raise ValueError(f"parallel_min_size must be >= 0, got {n}")
    _parallel_min_size = n


def get_parallel_min_size():
    return _parallel_min_size


cdef inline int _effective_threads() noexcept nogil:
    if not fo_has_openmp():
        return 1
    if _requested_threads > 0:
        return _requested_threads
    return fo_omp_max_threads()


cdef inline int _threads_for(Py_ssize_t n, int weight=1) noexcept nogil:
    """Threads to use for ``n`` elements of a kernel of the given work weight."""
    cdef Py_ssize_t work = n * weight
    if work < _parallel_min_size:
        return 1
    cdef int t = _effective_threads()
    # Never give a thread less than about half the threshold.
    cdef Py_ssize_t useful = work // (_parallel_min_size // 2 + 1) + 1
    if useful < t:
        t = <int>useful
    return t if t > 0 else 1


cdef inline Py_ssize_t _split_point(Py_ssize_t n, int part, int parts) noexcept nogil:
    """Start of share ``part`` of ``parts`` of [0, n), cut at a multiple of SPLIT_ALIGN."""
    if part >= parts:
        return n
    cdef Py_ssize_t cut = <Py_ssize_t>((<double>n * part) / parts)
    cut -= cut % SPLIT_ALIGN
    return cut


# ----------------------------------------------------------------------------------------------
# One step's context: pointers and scalars the span kernels read.
# ----------------------------------------------------------------------------------------------

cdef enum Algorithm:
    ALG_SGD = 0
    ALG_ADAM = 1
    ALG_RMSPROP = 2
    ALG_ADAGRAD = 3

cdef enum:
    MAX_STATE = 3
    MAX_SCALARS = 12

cdef struct StepContext:
    int algorithm
    Py_ssize_t n_arrays
    Py_ssize_t total
    const Py_ssize_t* offsets        # n_arrays + 1 prefix offsets into the arenas
    char** params                    # data pointer of each param
    char** grads                     # data pointer of each grad, NULL to skip that param
    char* state[MAX_STATE]           # arena base pointers
    const double* per_array          # 2 scalars per param (bias corrections, step size, flags)
    double hp[MAX_SCALARS]           # hyperparameters
    int flag[4]                      # boolean options


# Index names for StepContext.hp / .flag, per algorithm.
cdef enum:
    HP_LR = 0
    HP_WD = 1
    HP_SIGN = 2        # -1.0 when maximizing, exact negation
    HP_A = 3           # SGD momentum | Adam beta1 | RMSprop alpha
    HP_B = 4           # SGD dampening | Adam beta2 | RMSprop momentum
    HP_EPS = 5
    HP_DECAY = 6       # AdamW: 1 - lr * weight_decay

cdef enum:
    FL_NESTEROV = 0
    FL_AMSGRAD = 0
    FL_CENTERED = 0
    FL_DECOUPLED = 1
    FL_L2 = 2          # weight_decay != 0, coupled into the gradient


# ----------------------------------------------------------------------------------------------
# Compile-time option switches.
#
# A loop-invariant option tested inside an element loop leaves the compiler to *unswitch* the loop
# into one vectorized copy per option combination, and GCC's default size limit for that is too small
# for Adam and RMSprop (they fell back to a masked loop, 5x slower); other compilers may not do it at
# all. So each option of a span kernel is instead a fused-type argument whose members are distinct
# empty tag types: ``if L2Decay is _L2:`` is resolved by Cython, and every option combination is its
# own straight-line loop in the generated C. The tag arguments carry no data. A small dispatch
# function per algorithm (``_adam_span``, ...) reads the runtime flags and calls the right
# specialization once per span. Maximizing stays a multiplication by +-1.0 (exact) rather than a switch.
# ----------------------------------------------------------------------------------------------

cdef struct _Off:
    char unused
cdef struct _On:
    char unused
cdef struct _L2:            # weight decay coupled into the gradient
    char unused
cdef struct _Decoupled:     # AdamW: the param is scaled by 1 - lr * weight_decay
    char unused
cdef struct _Low:           # lerp weight < 0.5: start + w (end - start)
    char unused
cdef struct _High:          # lerp weight >= 0.5: end - (end - start)(1 - w)
    char unused

ctypedef fused L2Decay:
    _Off
    _L2

ctypedef fused AdamDecay:
    _Off
    _L2
    _Decoupled

ctypedef fused Nesterov:
    _Off
    _On

ctypedef fused Amsgrad:
    _Off
    _On

ctypedef fused Momentum:
    _Off
    _On

ctypedef fused LerpForm:
    _Low
    _High

ctypedef fused Centering:   # RMSprop: not centered, or centered with that lerp form for the grad average
    _Off
    _Low
    _High

# The tag values passed to select a specialization.
cdef _Off OFF
cdef _On ON
cdef _L2 L2
cdef _Decoupled DECOUPLED
cdef _Low LOW
cdef _High HIGH


cdef inline floating _sqrt(floating x) noexcept nogil:
    """Square root in the operand's own precision (sqrt on a float would widen to double)."""
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _lerp(floating start, floating end, floating weight, LerpForm form) noexcept nogil:
    """torch.lerp's formula. Torch switches form at weight 0.5 for accuracy; the caller picks ``form``
    (``LOW`` if weight < 0.5, else ``HIGH``) once per span, so the loop has no branch."""
    if LerpForm is _Low:
        return start + weight * (end - start)
    else:
        return end - (end - start) * (<floating>1 - weight)


# --- SGD ------------------------------------------------------------------------------------

cdef void _sgd_loop(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                    floating* p, const floating* g, floating* buf,
                    L2Decay decay, Nesterov nesterov) noexcept nogil:
    cdef floating lr_neg = <floating>(-c.hp[HP_LR])
    cdef floating wd = <floating>c.hp[HP_WD]
    cdef floating sign = <floating>c.hp[HP_SIGN]
    cdef floating momentum = <floating>c.hp[HP_A]
    cdef floating keep = <floating>(1.0 - c.hp[HP_B])
    cdef bint use_momentum = c.hp[HP_A] != 0
    cdef bint first = c.per_array[2 * k] != 0
    cdef Py_ssize_t i
    cdef floating d, b
    if not use_momentum:
        for i in range(lo, hi):
            d = sign * g[i]
            if L2Decay is _L2:
                d = d + wd * p[i]
            p[i] = p[i] + lr_neg * d
    elif first:
        for i in range(lo, hi):
            d = sign * g[i]
            if L2Decay is _L2:
                d = d + wd * p[i]
            buf[i] = d
            if Nesterov is _On:
                d = d + momentum * d
            p[i] = p[i] + lr_neg * d
    else:
        for i in range(lo, hi):
            d = sign * g[i]
            if L2Decay is _L2:
                d = d + wd * p[i]
            b = buf[i] * momentum + keep * d
            buf[i] = b
            if Nesterov is _On:
                d = d + momentum * b
            else:
                d = b
            p[i] = p[i] + lr_neg * d


cdef void _sgd_span(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                    floating* p, const floating* g, floating* buf) noexcept nogil:
    """Run the SGD loop specialized for this step's options."""
    cdef bint nesterov = c.flag[FL_NESTEROV] and c.hp[HP_A] != 0
    if c.flag[FL_L2]:
        if nesterov: _sgd_loop(c, k, lo, hi, p, g, buf, L2, ON)
        else: _sgd_loop(c, k, lo, hi, p, g, buf, L2, OFF)
    else:
        if nesterov: _sgd_loop(c, k, lo, hi, p, g, buf, OFF, ON)
        else: _sgd_loop(c, k, lo, hi, p, g, buf, OFF, OFF)


# --- Adam / AdamW ---------------------------------------------------------------------------

cdef void _adam_loop(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                     floating* p, const floating* g, floating* m, floating* v, floating* vmax,
                     AdamDecay decay, Amsgrad amsgrad, LerpForm beta1_form) noexcept nogil:
    cdef floating wd = <floating>c.hp[HP_WD]
    cdef floating sign = <floating>c.hp[HP_SIGN]
    cdef floating w1 = <floating>(1.0 - c.hp[HP_A])
    cdef floating beta2 = <floating>c.hp[HP_B]
    cdef floating w2 = <floating>(1.0 - c.hp[HP_B])
    cdef floating eps = <floating>c.hp[HP_EPS]
    cdef floating scale = <floating>c.hp[HP_DECAY]
    cdef floating step_neg = <floating>c.per_array[2 * k]
    cdef floating bc2_sqrt = <floating>c.per_array[2 * k + 1]
    cdef Py_ssize_t i
    cdef floating d, mi, vi, vm, pi, denom
    for i in range(lo, hi):
        d = sign * g[i]
        pi = p[i]
        if AdamDecay is _L2:
            d = d + wd * pi
        elif AdamDecay is _Decoupled:
            pi = pi * scale
        mi = _lerp(m[i], d, w1, beta1_form)
        vi = v[i] * beta2 + (w2 * d) * d
        m[i] = mi
        v[i] = vi
        if Amsgrad is _On:
            # torch.maximum: a NaN on either side propagates.
            vm = vmax[i]
            if vi > vm or vi != vi:
                vm = vi
            vmax[i] = vm
            vi = vm
        denom = _sqrt(vi) / bc2_sqrt + eps
        p[i] = pi + (step_neg * mi) / denom


cdef void _adam_span(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                     floating* p, const floating* g, floating* m, floating* v,
                     floating* vmax) noexcept nogil:
    """Run the Adam loop specialized for this step's options (the same w1 test as torch.lerp's)."""
    cdef bint low = <floating>(1.0 - c.hp[HP_A]) < 0.5
    if c.flag[FL_AMSGRAD]:
        if c.flag[FL_L2]:
            if low: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, L2, ON, LOW)
            else: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, L2, ON, HIGH)
        elif c.flag[FL_DECOUPLED]:
            if low: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, DECOUPLED, ON, LOW)
            else: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, DECOUPLED, ON, HIGH)
        else:
            if low: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, OFF, ON, LOW)
            else: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, OFF, ON, HIGH)
    else:
        if c.flag[FL_L2]:
            if low: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, L2, OFF, LOW)
            else: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, L2, OFF, HIGH)
        elif c.flag[FL_DECOUPLED]:
            if low: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, DECOUPLED, OFF, LOW)
            else: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, DECOUPLED, OFF, HIGH)
        else:
            if low: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, OFF, OFF, LOW)
            else: _adam_loop(c, k, lo, hi, p, g, m, v, vmax, OFF, OFF, HIGH)


# --- RMSprop --------------------------------------------------------------------------------

cdef void _rmsprop_loop(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                        floating* p, const floating* g, floating* sq, floating* buf, floating* gavg,
                        L2Decay decay, Centering centering, Momentum use_momentum) noexcept nogil:
    cdef floating lr_neg = <floating>(-c.hp[HP_LR])
    cdef floating wd = <floating>c.hp[HP_WD]
    cdef floating sign = <floating>c.hp[HP_SIGN]
    cdef floating alpha = <floating>c.hp[HP_A]
    cdef floating w = <floating>(1.0 - c.hp[HP_A])
    cdef floating momentum = <floating>c.hp[HP_B]
    cdef floating eps = <floating>c.hp[HP_EPS]
    cdef Py_ssize_t i
    cdef floating d, s, a, ga, b
    for i in range(lo, hi):
        d = sign * g[i]
        if L2Decay is _L2:
            d = d + wd * p[i]
        s = sq[i] * alpha + (w * d) * d
        sq[i] = s
        if Centering is _Off:
            a = _sqrt(s) + eps
        else:
            ga = _lerp(gavg[i], d, w, centering)
            gavg[i] = ga
            a = _sqrt(s + (-ga) * ga) + eps
        if Momentum is _On:
            b = buf[i] * momentum + d / a
            buf[i] = b
            p[i] = p[i] + lr_neg * b
        else:
            p[i] = p[i] + (lr_neg * d) / a


cdef void _rmsprop_span(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                        floating* p, const floating* g, floating* sq, floating* buf,
                        floating* gavg) noexcept nogil:
    """Run the RMSprop loop specialized for this step's options (the same w test as torch.lerp's)."""
    cdef bint low = <floating>(1.0 - c.hp[HP_A]) < 0.5
    cdef bint centered = c.flag[FL_CENTERED]
    if c.flag[FL_L2]:
        if c.hp[HP_B] > 0:
            if not centered: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, L2, OFF, ON)
            elif low: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, L2, LOW, ON)
            else: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, L2, HIGH, ON)
        else:
            if not centered: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, L2, OFF, OFF)
            elif low: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, L2, LOW, OFF)
            else: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, L2, HIGH, OFF)
    else:
        if c.hp[HP_B] > 0:
            if not centered: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, OFF, OFF, ON)
            elif low: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, OFF, LOW, ON)
            else: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, OFF, HIGH, ON)
        else:
            if not centered: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, OFF, OFF, OFF)
            elif low: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, OFF, LOW, OFF)
            else: _rmsprop_loop(c, k, lo, hi, p, g, sq, buf, gavg, OFF, HIGH, OFF)


# --- Adagrad --------------------------------------------------------------------------------

cdef void _adagrad_loop(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                        floating* p, const floating* g, floating* acc, L2Decay decay) noexcept nogil:
    cdef floating wd = <floating>c.hp[HP_WD]
    cdef floating sign = <floating>c.hp[HP_SIGN]
    cdef floating eps = <floating>c.hp[HP_EPS]
    cdef floating clr_neg = <floating>c.per_array[2 * k]
    cdef Py_ssize_t i
    cdef floating d, s
    for i in range(lo, hi):
        d = sign * g[i]
        if L2Decay is _L2:
            d = d + wd * p[i]
        s = acc[i] + d * d
        acc[i] = s
        p[i] = p[i] + (clr_neg * d) / (_sqrt(s) + eps)


cdef void _adagrad_span(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                        floating* p, const floating* g, floating* acc) noexcept nogil:
    """Run the Adagrad loop specialized for this step's options."""
    if c.flag[FL_L2]: _adagrad_loop(c, k, lo, hi, p, g, acc, L2)
    else: _adagrad_loop(c, k, lo, hi, p, g, acc, OFF)


# --- driver ---------------------------------------------------------------------------------

cdef void _run_span(const StepContext* c, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi,
                    floating* tag) noexcept nogil:
    """Apply the step to elements [lo, hi) of param k (local indices)."""
    cdef Py_ssize_t off = c.offsets[k]
    cdef floating* p = <floating*>c.params[k]
    cdef const floating* g = <const floating*>c.grads[k]
    cdef floating* s0 = (<floating*>c.state[0]) + off if c.state[0] != NULL else NULL
    cdef floating* s1 = (<floating*>c.state[1]) + off if c.state[1] != NULL else NULL
    cdef floating* s2 = (<floating*>c.state[2]) + off if c.state[2] != NULL else NULL
    if c.algorithm == ALG_ADAM:
        _adam_span(c, k, lo, hi, p, g, s0, s1, s2)
    elif c.algorithm == ALG_SGD:
        _sgd_span(c, k, lo, hi, p, g, s0)
    elif c.algorithm == ALG_RMSPROP:
        _rmsprop_span(c, k, lo, hi, p, g, s0, s1, s2)
    elif c.algorithm == ALG_ADAGRAD:
        _adagrad_span(c, k, lo, hi, p, g, s0)


cdef inline Py_ssize_t _first_array_at(const Py_ssize_t* offsets, Py_ssize_t n_arrays,
                                       Py_ssize_t pos) noexcept nogil:
    """The array k with offsets[k] <= pos < offsets[k + 1] (the last one if pos is past the end)."""
    cdef Py_ssize_t lo = 0, hi = n_arrays, mid
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if offsets[mid] <= pos:
            lo = mid
        else:
            hi = mid
    return lo


cdef void _run_range(const StepContext* c, Py_ssize_t start, Py_ssize_t stop,
                     floating* tag) noexcept nogil:
    """Apply the step to the global element range [start, stop) of the bucket."""
    if start >= stop:
        return
    cdef Py_ssize_t k = _first_array_at(c.offsets, c.n_arrays, start)
    cdef Py_ssize_t a, b
    while k < c.n_arrays and c.offsets[k] < stop:
        if c.grads[k] != NULL:
            a = start if start > c.offsets[k] else c.offsets[k]
            b = stop if stop < c.offsets[k + 1] else c.offsets[k + 1]
            if b > a:
                _run_span(c, k, a - c.offsets[k], b - c.offsets[k], tag)
        k += 1


cdef inline int _work_weight(int algorithm) noexcept nogil:
    """Relative cost per element of each update (see set_parallel_min_size)."""
    if algorithm == ALG_ADAM:
        return 3
    if algorithm == ALG_SGD:
        return 1
    return 2


cdef void _run_step(const StepContext* c, Py_ssize_t active, floating* tag) noexcept nogil:
    cdef int nthreads = _threads_for(active, _work_weight(c.algorithm))
    cdef int tid, team
    if nthreads <= 1:
        _run_range(c, 0, c.total, tag)
        return
    with parallel(num_threads=nthreads):
        tid = threadid()
        team = fo_omp_team_size()
        _run_range(c, _split_point(c.total, tid, team), _split_point(c.total, tid + 1, team), tag)


# ----------------------------------------------------------------------------------------------
# Gathering gradients: validation at C speed, before anything is written.
# ----------------------------------------------------------------------------------------------

cdef inline str _dtype_name(int typenum):
    return "float32" if typenum == cnp.NPY_FLOAT32 else "float64" if typenum == cnp.NPY_FLOAT64 else str(typenum)


cdef object _as_array(object obj, str what):
    """``obj`` as an ndarray without copying (buffer-protocol objects are viewed, never copied)."""
    if cnp.PyArray_Check(obj):
        return obj
    try:
        arr = np.asarray(obj)
    except Exception as exc:
        raise TypeError(f"{what} must be an array (NumPy array or buffer), got {type(obj).__name__}") from exc
    if arr.dtype.kind != "f":
        raise TypeError(f"{what} must be a float32 or float64 array, got {type(obj).__name__} "
                        f"(as an array: dtype {arr.dtype})")
    return arr


cdef char* _checked_grad(object grad, cnp.ndarray param, int typenum, Py_ssize_t index,
                         bint need_writeable, list keep_alive) except? NULL:
    """Validate one gradient against its param; return its data pointer.

    A gradient that is not an ndarray (a NumPy scalar for a 0-d param, a buffer) is viewed as one;
    that view goes into ``keep_alive`` so the memory stays valid until the step is done.
    """
    cdef cnp.ndarray g
    cdef int nd, d
    cdef cnp.npy_intp* gd
    cdef cnp.npy_intp* pd
    cdef char* gp
    cdef char* pp
    cdef Py_ssize_t nbytes
    if cnp.PyArray_Check(grad):
        g = <cnp.ndarray>grad
    else:
        g = _as_array(grad, f"grads[{index}]")
        keep_alive.append(g)
    if cnp.PyArray_TYPE(g) != typenum:
        raise TypeError(
            f"grads[{index}] has dtype {g.dtype}, but its param has dtype {_dtype_name(typenum)}; "
            "grads must have their param's dtype")
    nd = cnp.PyArray_NDIM(g)
    gd = cnp.PyArray_DIMS(g)
    pd = cnp.PyArray_DIMS(param)
    if nd != cnp.PyArray_NDIM(param):
        raise ValueError(f"grads[{index}] has shape {(<object>g).shape}, but its param has shape {(<object>param).shape}")
    for d in range(nd):
        if gd[d] != pd[d]:
            raise ValueError(f"grads[{index}] has shape {(<object>g).shape}, but its param has shape {(<object>param).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(g):
        raise ValueError(f"grads[{index}] must be C-contiguous (use np.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(g):
        raise ValueError(f"grads[{index}] must be aligned to its dtype")
    if need_writeable and not cnp.PyArray_ISWRITEABLE(g):
        raise ValueError(f"grads[{index}] is read-only, but is modified in place")
    gp = <char*>cnp.PyArray_DATA(g)
    pp = <char*>cnp.PyArray_DATA(param)
    nbytes = cnp.PyArray_NBYTES(g)
    if nbytes > 0 and gp < pp + nbytes and pp < gp + nbytes:
        raise ValueError(f"grads[{index}] shares memory with its param; pass a separate gradient array")
    return gp


# ----------------------------------------------------------------------------------------------
# ParamBucket
# ----------------------------------------------------------------------------------------------

def _aligned_full(Py_ssize_t n, double fill, dtype):
    """A 1-D array of ``n`` elements set to ``fill`` whose data starts on a 64-byte boundary.

    Vector loads of state then never straddle a cache line (NumPy itself only aligns to 16 bytes).
    """
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    arr = raw[start:start + n * itemsize].view(dtype)
    arr.fill(fill)
    return arr


@cython.final
cdef class ParamBucket:
    """The params of one param group that share a dtype, with their optimizer state arenas.

    Parameters
    ----------
    params : list of ndarray
        Validated, C-contiguous, writeable arrays of one dtype (float32 or float64).
    indices : list of int
        For each param, its position in the optimizer's flat list of params (and of grads).
    """
    cdef readonly object dtype
    cdef readonly Py_ssize_t n_arrays
    cdef readonly Py_ssize_t total_size
    cdef readonly list params
    cdef readonly tuple indices
    cdef readonly dict arenas
    cdef readonly cnp.ndarray steps            # int64 per param: steps taken
    cdef readonly cnp.ndarray initialized      # uint8 per param: momentum buffer / state present
    cdef int typenum
    cdef Py_ssize_t* _offsets
    cdef char** _params
    cdef char** _grads
    cdef double* _per_array
    cdef Py_ssize_t* _index
    cdef Py_ssize_t _max_index

    def __cinit__(self, list params, indices):
        cdef Py_ssize_t k, n = len(params)
        self.n_arrays = n
        self._offsets = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self._params = <char**>malloc((n + 1) * sizeof(char*))
        self._grads = <char**>malloc((n + 1) * sizeof(char*))
        self._per_array = <double*>malloc((2 * n + 2) * sizeof(double))
        self._index = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        if (self._offsets == NULL or self._params == NULL or self._grads == NULL
                or self._per_array == NULL or self._index == NULL):
            raise MemoryError()

    def __dealloc__(self):
        free(self._offsets)
        free(self._params)
        free(self._grads)
        free(self._per_array)
        free(self._index)

    def __init__(self, list params, indices):
        cdef Py_ssize_t k, total = 0
        cdef cnp.ndarray p
        if self.n_arrays == 0:
            raise ValueError("a ParamBucket needs at least one param")
        self.params = list(params)
        self.indices = tuple(int(i) for i in indices)
        if len(self.indices) != self.n_arrays:
            raise ValueError("params and indices differ in length")
        p = <cnp.ndarray>self.params[0]
        self.typenum = cnp.PyArray_TYPE(p)
        if self.typenum != cnp.NPY_FLOAT32 and self.typenum != cnp.NPY_FLOAT64:
            raise TypeError("ParamBucket holds float32 or float64 params only")
        self.dtype = p.dtype
        for k in range(self.n_arrays):
            p = <cnp.ndarray>self.params[k]
            if cnp.PyArray_TYPE(p) != self.typenum or not cnp.PyArray_IS_C_CONTIGUOUS(p) \
                    or not cnp.PyArray_ISWRITEABLE(p):
                raise ValueError("ParamBucket params must be validated first")
            self._params[k] = <char*>cnp.PyArray_DATA(p)
            self._offsets[k] = total
            self._index[k] = self.indices[k]
            if self._index[k] < 0:
                raise ValueError("ParamBucket indices must be >= 0")
            if self._index[k] > self._max_index:
                self._max_index = self._index[k]
            total += cnp.PyArray_SIZE(p)
        self._offsets[self.n_arrays] = total
        self.total_size = total
        self.arenas = {}
        self.steps = np.zeros(self.n_arrays, dtype=np.int64)
        self.initialized = np.zeros(self.n_arrays, dtype=np.uint8)

    # -- state ---------------------------------------------------------------------------------

    def arena(self, str name, double fill=0.0):
        """The state arena ``name``, created (filled with ``fill``) on first use."""
        arr = self.arenas.get(name)
        if arr is None:
            arr = _aligned_full(self.total_size, fill, self.dtype)
            self.arenas[name] = arr
        return arr

    def state_view(self, str name, Py_ssize_t k):
        """The slice of arena ``name`` owned by param ``k``, shaped like the param (a view)."""
        arr = self.arenas[name]
        return arr[self._offsets[k]:self._offsets[k + 1]].reshape((<object>self.params[k]).shape)

    # -- gathering -----------------------------------------------------------------------------

    cdef Py_ssize_t _gather(self, object grads, bint need_writeable, list keep_alive) except -1:
        """Fill self._grads from the optimizer-wide grads sequence; return the active element count.

        Arrays made from non-ndarray gradients are appended to ``keep_alive``, which the caller
        holds until the kernels have run.
        """
        cdef Py_ssize_t k, active = 0
        cdef object g
        cdef list glist
        cdef tuple gtuple
        if type(grads) is not list and type(grads) is not tuple:
            grads = tuple(grads)      # list subclasses, iterables: index an exact copy
        if len(grads) <= self._max_index:
            raise ValueError(f"grads has {len(grads)} entries; this param group needs index {self._max_index}")
        if type(grads) is list:
            glist = <list>grads
            for k in range(self.n_arrays):
                g = glist[self._index[k]]
                if g is None:
                    self._grads[k] = NULL
                else:
                    self._grads[k] = _checked_grad(g, <cnp.ndarray>self.params[k], self.typenum,
                                                   self._index[k], need_writeable, keep_alive)
                    active += self._offsets[k + 1] - self._offsets[k]
        else:
            gtuple = <tuple>grads
            for k in range(self.n_arrays):
                g = gtuple[self._index[k]]
                if g is None:
                    self._grads[k] = NULL
                else:
                    self._grads[k] = _checked_grad(g, <cnp.ndarray>self.params[k], self.typenum,
                                                   self._index[k], need_writeable, keep_alive)
                    active += self._offsets[k + 1] - self._offsets[k]
        return active

    cdef void _init_context(self, StepContext* c, int algorithm):
        memset(c, 0, sizeof(StepContext))
        c.algorithm = algorithm
        c.n_arrays = self.n_arrays
        c.total = self.total_size
        c.offsets = self._offsets
        c.params = self._params
        c.grads = self._grads
        c.per_array = self._per_array

    cdef inline char* _arena_ptr(self, str name, double fill=0.0) except NULL:
        arr = self.arenas.get(name)
        if arr is None:
            arr = self.arena(name, fill)
        return <char*>cnp.PyArray_DATA(<cnp.ndarray>arr)

    cdef void _run(self, StepContext* c, Py_ssize_t active) noexcept:
        with nogil:
            if self.typenum == cnp.NPY_FLOAT32:
                _run_step(c, active, <float*>NULL)
            else:
                _run_step(c, active, <double*>NULL)

    def check_grads(self, grads, bint need_writeable=False):
        """Validate this bucket's grads (in ``grads``, the optimizer-wide list) without stepping."""
        return self._gather(grads, need_writeable, [])

    # -- steps -----------------------------------------------------------------------------------
    # Each step method takes the optimizer-wide grads list and the group's hyperparameters, already
    # validated by the Python layer. Nothing is written before every gradient has been validated.

    def step_sgd(self, grads, double lr, double momentum, double dampening, double weight_decay,
                 bint nesterov, bint maximize):
        cdef StepContext c
        cdef Py_ssize_t k
        cdef list keep_alive = []
        cdef Py_ssize_t active = self._gather(grads, False, keep_alive)
        cdef uint8_t[::1] init = self.initialized
        self._init_context(&c, ALG_SGD)
        c.hp[HP_LR] = lr
        c.hp[HP_WD] = weight_decay
        c.hp[HP_SIGN] = -1.0 if maximize else 1.0
        c.hp[HP_A] = momentum
        c.hp[HP_B] = dampening
        c.flag[FL_L2] = weight_decay != 0
        c.flag[FL_NESTEROV] = nesterov
        if momentum != 0:
            c.state[0] = self._arena_ptr("momentum_buffer")
            for k in range(self.n_arrays):
                self._per_array[2 * k] = 0.0 if init[k] else 1.0
        self._run(&c, active)
        if momentum != 0:
            for k in range(self.n_arrays):
                if self._grads[k] != NULL:
                    init[k] = 1

    def step_adam(self, grads, double lr, double beta1, double beta2, double eps,
                  double weight_decay, bint amsgrad, bint maximize, bint decoupled_weight_decay):
        cdef StepContext c
        cdef Py_ssize_t k
        cdef list keep_alive = []
        cdef Py_ssize_t active = self._gather(grads, False, keep_alive)
        cdef int64_t[::1] steps = self.steps
        cdef int64_t last_step = -1, s
        cdef double step_neg = 0.0, bc2_sqrt = 1.0
        self._init_context(&c, ALG_ADAM)
        c.hp[HP_LR] = lr
        c.hp[HP_SIGN] = -1.0 if maximize else 1.0
        c.hp[HP_A] = beta1
        c.hp[HP_B] = beta2
        c.hp[HP_EPS] = eps
        c.hp[HP_WD] = weight_decay
        c.hp[HP_DECAY] = 1.0 - lr * weight_decay if decoupled_weight_decay else 1.0
        c.flag[FL_L2] = weight_decay != 0 and not decoupled_weight_decay
        c.flag[FL_DECOUPLED] = weight_decay != 0 and decoupled_weight_decay
        c.flag[FL_AMSGRAD] = amsgrad
        c.state[0] = self._arena_ptr("exp_avg")
        c.state[1] = self._arena_ptr("exp_avg_sq")
        if amsgrad:
            c.state[2] = self._arena_ptr("max_exp_avg_sq")
        for k in range(self.n_arrays):
            if self._grads[k] == NULL:
                continue
            s = steps[k] + 1
            if s != last_step:   # params usually share a step count: compute the powers once
                step_neg = -(lr / (1.0 - pow(beta1, <double>s)))
                bc2_sqrt = sqrt(1.0 - pow(beta2, <double>s))
                last_step = s
            self._per_array[2 * k] = step_neg
            self._per_array[2 * k + 1] = bc2_sqrt
        self._run(&c, active)
        for k in range(self.n_arrays):
            if self._grads[k] != NULL:
                steps[k] += 1

    def step_rmsprop(self, grads, double lr, double alpha, double eps, double weight_decay,
                     double momentum, bint centered, bint maximize):
        cdef StepContext c
        cdef Py_ssize_t k
        cdef list keep_alive = []
        cdef Py_ssize_t active = self._gather(grads, False, keep_alive)
        cdef int64_t[::1] steps = self.steps
        self._init_context(&c, ALG_RMSPROP)
        c.hp[HP_LR] = lr
        c.hp[HP_WD] = weight_decay
        c.hp[HP_SIGN] = -1.0 if maximize else 1.0
        c.hp[HP_A] = alpha
        c.hp[HP_B] = momentum
        c.hp[HP_EPS] = eps
        c.flag[FL_L2] = weight_decay != 0
        c.flag[FL_CENTERED] = centered
        c.state[0] = self._arena_ptr("square_avg")
        if momentum > 0:
            c.state[1] = self._arena_ptr("momentum_buffer")
        if centered:
            c.state[2] = self._arena_ptr("grad_avg")
        self._run(&c, active)
        for k in range(self.n_arrays):
            if self._grads[k] != NULL:
                steps[k] += 1

    def step_adagrad(self, grads, double lr, double lr_decay, double weight_decay, double eps,
                     double initial_accumulator_value, bint maximize):
        cdef StepContext c
        cdef Py_ssize_t k
        cdef list keep_alive = []
        cdef Py_ssize_t active = self._gather(grads, False, keep_alive)
        cdef int64_t[::1] steps = self.steps
        self._init_context(&c, ALG_ADAGRAD)
        c.hp[HP_WD] = weight_decay
        c.hp[HP_SIGN] = -1.0 if maximize else 1.0
        c.hp[HP_EPS] = eps
        c.flag[FL_L2] = weight_decay != 0
        c.state[0] = self._arena_ptr("sum", initial_accumulator_value)
        for k in range(self.n_arrays):
            if self._grads[k] != NULL:
                self._per_array[2 * k] = -(lr / (1.0 + <double>steps[k] * lr_decay))
        self._run(&c, active)
        for k in range(self.n_arrays):
            if self._grads[k] != NULL:
                steps[k] += 1

    def grads_finite(self, grads):
        """True if every element of this bucket's (non-None) grads is finite."""
        cdef list keep_alive = []
        self._gather(grads, False, keep_alive)
        cdef ArraySet s = ArraySet.__new__(ArraySet)
        s._borrow(self.n_arrays, self._grads, self._offsets, self.typenum)
        return s.all_finite()


# ----------------------------------------------------------------------------------------------
# Reductions and in-place transforms over many arrays (gradient clipping, finiteness)
# ----------------------------------------------------------------------------------------------

cdef enum:
    RED_SUMSQ = 0      # sum of squares
    RED_MAXABS = 1     # max |x| (NaN-propagating)
    RED_SUMPOW = 2     # sum |x|^p
    RED_NONFINITE = 3  # count of non-finite elements

cdef struct ReduceContext:
    int kind
    double p
    Py_ssize_t n_arrays
    Py_ssize_t total
    const Py_ssize_t* offsets
    char** data
    const int* typenums      # per array, or NULL when uniform
    int typenum
    double* partial          # one per REDUCE_BLOCK block


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


cdef inline double _combine(int kind, double a, double b) noexcept nogil:
    if kind == RED_MAXABS:
        if a != a or b != b:
            return NAN
        return a if a >= b else b
    return a + b


cdef void _reduce_block(const ReduceContext* c, Py_ssize_t block) noexcept nogil:
    cdef Py_ssize_t start = block * REDUCE_BLOCK
    cdef Py_ssize_t stop = start + REDUCE_BLOCK
    cdef Py_ssize_t k, a, b
    cdef int typenum
    cdef double r = 0.0, part
    if stop > c.total:
        stop = c.total
    k = _first_array_at(c.offsets, c.n_arrays, start)
    while k < c.n_arrays and c.offsets[k] < stop:
        a = start if start > c.offsets[k] else c.offsets[k]
        b = stop if stop < c.offsets[k + 1] else c.offsets[k + 1]
        if b > a and c.data[k] != NULL:
            typenum = c.typenums[k] if c.typenums != NULL else c.typenum
            if typenum == cnp.NPY_FLOAT32:
                part = _span_reduce(c.kind, c.p, (<const float*>c.data[k]) + (a - c.offsets[k]), b - a)
            else:
                part = _span_reduce(c.kind, c.p, (<const double*>c.data[k]) + (a - c.offsets[k]), b - a)
            r = _combine(c.kind, r, part)
        k += 1
    c.partial[block] = r


cdef inline Py_ssize_t _first_block_of(Py_ssize_t n_blocks, int tid, int team) noexcept nogil:
    """The first of thread ``tid``'s blocks (its last is the next thread's first, minus one).

    _reduce and _transform split alike, so a scaling after a norm touches what the thread read."""
    return (n_blocks * tid) // team


cdef double _reduce(ReduceContext* c) noexcept nogil:
    cdef Py_ssize_t n_blocks = (c.total + REDUCE_BLOCK - 1) // REDUCE_BLOCK
    cdef Py_ssize_t b, b0, b1
    cdef int nthreads = _threads_for(c.total), tid, team
    cdef double r = 0.0
    if nthreads <= 1:
        for b in range(n_blocks):
            _reduce_block(c, b)
    else:
        with parallel(num_threads=nthreads):
            tid = threadid()
            team = fo_omp_team_size()
            b0 = _first_block_of(n_blocks, tid, team)
            b1 = _first_block_of(n_blocks, tid + 1, team)
            for b in range(b0, b1):
                _reduce_block(c, b)
    for b in range(n_blocks):
        r = _combine(c.kind, r, c.partial[b])
    return r


cdef enum:
    TR_SCALE = 0
    TR_CLAMP = 1


cdef void _transform_span(int kind, double a, floating* x, Py_ssize_t n) noexcept nogil:
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


cdef void _transform_range(const ReduceContext* c, int kind, double a, Py_ssize_t start,
                           Py_ssize_t stop) noexcept nogil:
    if start >= stop:
        return
    cdef Py_ssize_t k = _first_array_at(c.offsets, c.n_arrays, start)
    cdef Py_ssize_t lo, hi
    cdef int typenum
    while k < c.n_arrays and c.offsets[k] < stop:
        lo = start if start > c.offsets[k] else c.offsets[k]
        hi = stop if stop < c.offsets[k + 1] else c.offsets[k + 1]
        if hi > lo and c.data[k] != NULL:
            typenum = c.typenums[k] if c.typenums != NULL else c.typenum
            if typenum == cnp.NPY_FLOAT32:
                _transform_span(kind, a, (<float*>c.data[k]) + (lo - c.offsets[k]), hi - lo)
            else:
                _transform_span(kind, a, (<double*>c.data[k]) + (lo - c.offsets[k]), hi - lo)
        k += 1


cdef void _transform_backwards(const ReduceContext* c, int kind, double a, Py_ssize_t start,
                               Py_ssize_t stop) noexcept nogil:
    """``_transform_range`` over [start, stop) in blocks taken from the end backwards.

    Scaling follows a norm over the same elements (clip_grad_norm_): the norm pass has just left
    the end of each thread's range in its L2, so starting there reads up to L2's size from L2
    instead of L3 or memory before it is evicted. Elementwise, so the order changes no result."""
    cdef Py_ssize_t hi = stop, lo
    while hi > start:
        lo = hi - REDUCE_BLOCK
        if lo < start:
            lo = start
        _transform_range(c, kind, a, lo, hi)
        hi = lo


cdef void _transform(const ReduceContext* c, int kind, double a) noexcept nogil:
    cdef Py_ssize_t n_blocks = (c.total + REDUCE_BLOCK - 1) // REDUCE_BLOCK
    cdef Py_ssize_t stop
    cdef int nthreads = _threads_for(c.total), tid, team
    if nthreads <= 1:
        _transform_backwards(c, kind, a, 0, c.total)
        return
    with parallel(num_threads=nthreads):
        tid = threadid()
        team = fo_omp_team_size()
        # the same split into blocks as _reduce, so each thread rescales what it just summed
        stop = _first_block_of(n_blocks, tid + 1, team) * REDUCE_BLOCK
        if stop > c.total:
            stop = c.total
        _transform_backwards(c, kind, a, _first_block_of(n_blocks, tid, team) * REDUCE_BLOCK, stop)


@cython.final
cdef class ArraySet:
    """Many float32/float64 arrays treated as one range of elements, for reductions and transforms.

    Built by :func:`gather_arrays` (which validates) or borrowed from a ParamBucket's gradients.
    """
    cdef Py_ssize_t n_arrays
    cdef Py_ssize_t total
    cdef Py_ssize_t* offsets
    cdef char** data
    cdef int* typenums
    cdef int typenum
    cdef bint owner
    cdef list keep_alive

    def __cinit__(self):
        self.offsets = NULL
        self.data = NULL
        self.typenums = NULL
        self.owner = False

    def __dealloc__(self):
        if self.owner:
            free(self.offsets)
            free(self.data)
            free(self.typenums)

    cdef void _borrow(self, Py_ssize_t n, char** data, Py_ssize_t* offsets, int typenum):
        self.n_arrays = n
        self.data = data
        self.offsets = offsets
        self.total = offsets[n]
        self.typenum = typenum
        self.typenums = NULL
        self.owner = False

    cdef double _reduce(self, int kind, double p) except? -1.0:
        cdef ReduceContext c
        cdef Py_ssize_t n_blocks = (self.total + REDUCE_BLOCK - 1) // REDUCE_BLOCK
        cdef double r
        c.kind = kind
        c.p = p
        c.n_arrays = self.n_arrays
        c.total = self.total
        c.offsets = self.offsets
        c.data = self.data
        c.typenums = self.typenums
        c.typenum = self.typenum
        c.partial = <double*>malloc((n_blocks + 1) * sizeof(double))
        if c.partial == NULL:
            raise MemoryError(f"no memory for {n_blocks + 1} partial sums")
        with nogil:
            r = _reduce(&c)
        free(c.partial)
        return r

    cdef void _transform(self, int kind, double a) noexcept:
        cdef ReduceContext c
        c.n_arrays = self.n_arrays
        c.total = self.total
        c.offsets = self.offsets
        c.data = self.data
        c.typenums = self.typenums
        c.typenum = self.typenum
        with nogil:
            _transform(&c, kind, a)

    def all_finite(self):
        """True if every element is finite."""
        cdef double r = self._reduce(RED_NONFINITE, 0.0)
        return r == 0.0

    def norm(self, double norm_type):
        """The ``norm_type``-norm of all elements together, accumulated in float64."""
        if norm_type == INFINITY:
            return self._reduce(RED_MAXABS, 0.0)
        if norm_type == 2.0:
            return sqrt(self._reduce(RED_SUMSQ, 2.0))
        if norm_type == 1.0:
            return self._reduce(RED_SUMPOW, 1.0)
        return pow(self._reduce(RED_SUMPOW, norm_type), 1.0 / norm_type)

    def scale_(self, double factor):
        """Multiply every element in place by ``factor`` (rounded to each array's dtype)."""
        self._transform(TR_SCALE, factor)

    def clamp_(self, double clip_value):
        """Clamp every element in place to [-clip_value, clip_value]; NaN stays NaN."""
        self._transform(TR_CLAMP, clip_value)


def gather_arrays(arrays, str name="grads", bint need_writeable=True):
    """Validate ``arrays`` and view them as one :class:`ArraySet` (no copies).

    Raises TypeError / ValueError naming ``name[i]`` for non-float32/float64, non-contiguous,
    misaligned or (when ``need_writeable``) read-only arrays.
    """
    cdef list items
    if cnp.PyArray_Check(arrays):
        items = [arrays]
    else:
        try:
            items = list(arrays)
        except TypeError:
            raise TypeError(f"{name} must be an array or a sequence of arrays, got {type(arrays).__name__}") from None
    cdef Py_ssize_t n = len(items), k, total = 0
    cdef ArraySet s = ArraySet.__new__(ArraySet)
    cdef cnp.ndarray a
    cdef int t
    s.owner = True
    s.n_arrays = n
    s.offsets = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
    s.data = <char**>malloc((n + 1) * sizeof(char*))
    s.typenums = <int*>malloc((n + 1) * sizeof(int))
    if s.offsets == NULL or s.data == NULL or s.typenums == NULL:
        raise MemoryError()
    s.keep_alive = []
    for k in range(n):
        obj = items[k]
        if obj is None:
            raise TypeError(f"{name}[{k}] is None; pass only the gradients to use")
        if cnp.PyArray_Check(obj):
            a = <cnp.ndarray>obj
        else:
            a = <cnp.ndarray>_as_array(obj, f"{name}[{k}]")
            if need_writeable and (<object>a).base is None:
                # np.asarray made a new array (from a list, say): an in-place change would be lost.
                raise TypeError(f"{name}[{k}] must be an array that can be modified in place, "
                                f"got {type(obj).__name__}")
        t = cnp.PyArray_TYPE(a)
        if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
            raise TypeError(f"{name}[{k}] must be float32 or float64, got {a.dtype}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            raise ValueError(f"{name}[{k}] must be C-contiguous (use np.ascontiguousarray)")
        if not cnp.PyArray_ISALIGNED(a):
            raise ValueError(f"{name}[{k}] must be aligned to its dtype")
        if need_writeable and not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError(f"{name}[{k}] is read-only, but is modified in place")
        s.keep_alive.append(a)
        s.data[k] = <char*>cnp.PyArray_DATA(a)
        s.typenums[k] = t
        s.offsets[k] = total
        total += cnp.PyArray_SIZE(a)
    s.offsets[n] = total
    s.total = total
    s.typenum = s.typenums[0] if n > 0 else cnp.NPY_FLOAT64
    return s
