/* The reductions' AVX bodies, for _kernels.pyx only (the one module that calls them; in simd.h,
 * every other module that includes it defined them unused).
 *
 * fo_sumsq16_* / fo_nonfinite16_*: reduction bodies (sum of squares; the finiteness sum of x - x)
 * with their 16 float64 accumulators in four AVX registers. Written as a Cython loop, GCC keeps the
 * accumulator array in memory and widens float32 loads in 128-bit halves, ~1.6x slower. Lane j
 * still sums the elements with index % 16 == j in index order, so the result is bit-identical to
 * the portable loop (-ffp-contract=off: no FMA). Only the first `head` elements (a multiple of 16)
 * are reduced here; the caller adds the tail and the lanes. Without AVX, FO_HAVE_AVX_REDUCE is 0
 * and the caller runs its portable loop instead.
 */
#ifndef FASTOPT_REDUCE16_H
#define FASTOPT_REDUCE16_H

#include "simd.h"

#if defined(__AVX__)
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

#endif /* FASTOPT_REDUCE16_H */
