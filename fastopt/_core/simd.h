/* fastopt's SIMD header: what the compiled kernels need from the compiler and the CPU.
 *
 * - FO_VECTOR_ISA: the vector instruction set this translation unit is compiled for (which CPU
 *   runs which variant is decided at import from cpu.h's cpuid; fastopt._backend).
 * - fo_sumsq16_* / fo_nonfinite16_*: reduction bodies (sum of squares; the finiteness sum of
 *   x - x) with their 16 float64 accumulators in four AVX registers. Written as a Cython loop,
 *   GCC keeps the accumulator array in memory and widens float32 loads in 128-bit halves, ~1.6x
 *   slower. Lane j still sums the elements with index % 16 == j in index order, so the result is
 *   bit-identical to the portable loop (-ffp-contract=off: no FMA). Only the first `head`
 *   elements (a multiple of 16) are reduced here; the caller adds the tail and the lanes.
 *   Without AVX, FO_HAVE_AVX_REDUCE is 0 and the caller runs its portable loop instead.
 *
 * Everything x86-specific sits behind compiler guards, so other architectures build the portable
 * loops only.
 */
#ifndef FASTOPT_SIMD_H
#define FASTOPT_SIMD_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

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

/* C99's restrict (the generated loops use it): MSVC's C compiler spells it __restrict before C11. */
#if defined(_MSC_VER) && !defined(__clang__) && !defined(restrict)
#define restrict __restrict
#endif

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

/* Half-precision storage. Every conversion is elementwise and branch-free, so the loops that use
 * them still vectorize (bfloat16 with integer shifts; float16 with F16C/AVX-512-FP16 instructions
 * where the build targets them, and the compiler's own conversion otherwise).
 *
 * bfloat16 is the upper half of a float32. fo_bf16_rne rounds to nearest, ties to even, as torch
 * and ml_dtypes do, and gives torch's canonical quiet NaN (0x7FC0) for any NaN. fo_bf16_sr rounds
 * stochastically: it adds 16 random bits below the kept ones and truncates, so a value is rounded
 * up with probability equal to its distance from the lower neighbour (unbiased); Inf and NaN are
 * left as they are. */
static inline float fo_bf16_load(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t fo_bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(((u & 0x7FFFFFFFu) > 0x7F800000u) ? 0x7FC0u : rounded);
}

static inline uint16_t fo_bf16_sr(float f, uint32_t random) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t special = (u & 0x7F800000u) == 0x7F800000u;   /* Inf or NaN: no random carry */
    return (uint16_t)((u + (special ? 0u : (random & 0xFFFFu))) >> 16);
}

/* 32 random bits for element `index` of the stream `key` (counter-based: the same bits for the
 * same key and index whatever thread computes them). murmur3's finalizer over key and index. */
static inline uint32_t fo_random_bits(uint64_t key, Py_ssize_t index) {
    uint32_t x = (uint32_t)index * 0x9E3779B1u ^ (uint32_t)((uint64_t)index >> 32) ^ (uint32_t)key;
    x += (uint32_t)(key >> 32);
    x ^= x >> 16; x *= 0x85EBCA6Bu;
    x ^= x >> 13; x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

#if defined(__FLT16_MAX__)
typedef _Float16 fo_half;
static inline float fo_f16_load(fo_half h) { return (float)h; }
static inline fo_half fo_f16_round(float f) { return (fo_half)f; }   /* nearest, ties to even */
#else
/* A compiler without _Float16: IEEE binary16 by hand (correct, scalar). */
typedef uint16_t fo_half;
static inline float fo_f16_load(fo_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, u;
    if (exp == 0x1F) u = sign | 0x7F800000u | (man << 13);
    else if (exp != 0) u = sign | ((exp + 112u) << 23) | (man << 13);
    else if (man == 0) u = sign;
    else {
        exp = 113u;
        while (!(man & 0x400u)) { man <<= 1; exp--; }
        u = sign | (exp << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline fo_half fo_f16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (fo_half)(sign | 0x7E00u);
    if (a >= 0x477FF000u) return (fo_half)(sign | 0x7C00u);          /* overflows to Inf */
    if (a < 0x38800000u) {                                            /* subnormal or zero */
        if (a < 0x33000000u) return (fo_half)sign;
        uint32_t man = (a & 0x7FFFFFu) | 0x800000u, shift = 126u - (a >> 23);   /* 14..24 */
        uint32_t kept = man >> shift, rest = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        kept += (rest > half) || (rest == half && (kept & 1u));
        return (fo_half)(sign | kept);
    }
    uint32_t r = a - 0x38000000u;                                     /* rebias 127 -> 15 */
    r = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
    return (fo_half)(sign | r);
}
#endif

#endif /* FASTOPT_SIMD_H */
