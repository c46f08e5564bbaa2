/* fastopt's SIMD header: what the compiled kernels need from the compiler and the CPU.
 *
 * - FO_VECTOR_ISA: the vector instruction set this translation unit is compiled for (which CPU
 *   runs which variant is decided at import from cpu.h's cpuid; fastopt._backend).
 * - the half-precision conversions (bfloat16, float16) the loops and drivers use.
 * (The reductions' AVX bodies, which only _kernels uses, are in reduce16.h.)
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

#if defined(__AVX__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* Half-precision storage. Every conversion is elementwise and branch-free, so the loops that use
 * them still vectorize with any instruction set (integer shifts and float32 arithmetic only).
 *
 * bfloat16 is the upper half of a float32. fo_bf16_rne rounds to nearest, ties to even, as torch
 * and ml_dtypes do, and gives torch's canonical quiet NaN (0x7FC0) for any NaN. fo_bf16_sr rounds
 * stochastically: it adds 16 random bits below the kept ones and truncates, so a value is rounded
 * up with probability equal to its distance from the lower neighbour (unbiased); Inf and NaN are
 * left as they are. fo_bf16_rne_high gives fo_bf16_rne's result in the upper half of a 32-bit
 * word (the lower half is left over), for the loops over pairs below. */
static inline float fo_bf16_load(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t fo_bf16_rne_high(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
    /* a NaN test by float comparison (IEEE, as every build compiles it): one vector instruction,
     * where the integer test on the bits takes two or three */
    return (f != f) ? 0x7FC00000u : rounded;
}

static inline uint16_t fo_bf16_rne(float f) { return (uint16_t)(fo_bf16_rne_high(f) >> 16); }

static inline uint16_t fo_bf16_sr(float f, uint32_t random) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t special = (u & 0x7F800000u) == 0x7F800000u;   /* Inf or NaN: no random carry */
    return (uint16_t)((u + (special ? 0u : (random & 0xFFFFu))) >> 16);
}

/* bfloat16 arrays two values at a time, as one 32-bit word (the loops over bfloat16 storage).
 * Vectorized, the elementwise conversions cost shuffles: a load widens 16-bit lanes to 32 bits
 * (and shifts), a store shifts and narrows them back; with several bfloat16 arrays (Adam's param
 * and two states) they took half of the loop's vector instructions, and at sizes that sit in the
 * caches the loop ran slower than the float32 master-copy one, which rounds one array only. On a
 * word, the first value is the word shifted left and the second the word with its lower half
 * cleared, and the two rounded values are put back with a shift and a mask: one instruction per
 * vector each way, no shuffle. (Measured on an AMD EPYC, Zen 4, 1e4 to 1e6 values: the bfloat16
 * loops of Adam, AdamW, SGD with momentum and Lion 11-23% faster with AVX-512, 25-33% with AVX2.)
 * The first value of a pair is the word's lower half on little-endian CPUs only; elsewhere the
 * loops take values one at a time. */
#if (defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) \
     && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) \
    || defined(_M_X64) || defined(_M_IX86) || defined(_M_ARM64)
#define FO_BF16_PAIRS 1
#else
#define FO_BF16_PAIRS 0
#endif

static inline uint32_t fo_bf16_pair_load(const uint16_t* src) {
    uint32_t word;
    memcpy(&word, src, sizeof word);
    return word;
}

static inline float fo_bf16_pair_first(uint32_t word) {
    uint32_t u = word << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float fo_bf16_pair_second(uint32_t word) {
    uint32_t u = word & 0xFFFF0000u;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* the pair from two rounded values in the _high form */
static inline void fo_bf16_pair_store(uint16_t* dst, uint32_t first_high, uint32_t second_high) {
    uint32_t word = (first_high >> 16) | (second_high & 0xFFFF0000u);
    memcpy(dst, &word, sizeof word);
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

/* float16 (IEEE binary16) by integer and float32 arithmetic, branch-free, so that loops over it
 * vectorize with any instruction set (GCC 12 does not vectorize loops that mix _Float16 and float
 * when it targets AVX-512-FP16, and a baseline x86-64 build would call a library function per
 * element). Conversions are exact (load) and round to nearest, ties to even (store), as IEEE
 * conversions do, and treat NaNs as F16C's vcvtph2ps/vcvtps2ph do (a NaN keeps its sign and the
 * top bits of its payload, quieted), so the baseline and the F16C variants give the same bits for
 * every value, NaNs included. */
typedef uint16_t fo_half;

static inline float fo_bits_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t fo_float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

/* All ones when cond holds, else zero. Selecting by masks rather than by ternaries keeps the
 * conversions branch-free for GCC: a ternary lets it sink a float operation into the branch that
 * uses it, and under -ftrapping-math (the default, which we keep) it then cannot if-convert the
 * loop without AVX-512 masks, so AVX2 and baseline builds would not vectorize. */
static inline uint32_t fo_mask(int cond) { return (uint32_t)0 - (uint32_t)(cond != 0); }
static inline uint32_t fo_select(uint32_t mask, uint32_t if_set, uint32_t if_clear) {
    return (if_set & mask) | (if_clear & ~mask);
}

static inline float fo_f16_load(fo_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7FFFu;
    /* normal halves: exponent and mantissa moved into place and rebiased (15 -> 127) as integers;
     * subnormal halves (and zero): the mantissa times 2**-24, through an int-to-float conversion.
     * No float operand is ever subnormal: arithmetic on float32 subnormals takes a microcode assist
     * on many x86 cores (~100 cycles), and optimizer moments stored as float16 are often subnormal. */
    uint32_t normal = (em << 13) + ((127u - 15u) << 23);
    float subnormal = (float)(int32_t)em * 0x1p-24f;
    /* Inf and NaN keep their mantissa; a NaN is quieted */
    uint32_t special = (em << 13) | 0x7F800000u | (fo_mask(em > 0x7C00u) & 0x00400000u);
    uint32_t u = fo_select(fo_mask(em >= 0x7C00u), special,
                           fo_select(fo_mask(em < 0x0400u), fo_float_bits(subnormal), normal));
    return fo_bits_float(u | sign);
}

static inline fo_half fo_f16_round(float f) {
    uint32_t u = fo_float_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    /* normal results: rebias and round the mantissa to 10 bits, ties to even */
    uint32_t normal = (a - ((127u - 15u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
    /* subnormal results (|f| < 2**-14): adding 0.5 aligns the mantissa so that the float32
     * addition itself rounds (to nearest even) at 2**-24, the subnormal half's unit */
    uint32_t subnormal = fo_float_bits(fo_bits_float(a) + 0.5f) - fo_float_bits(0.5f);
    /* NaN (quieted, its payload's top bits); Inf and overflow */
    uint32_t big = fo_select(fo_mask(a > 0x7F800000u), 0x7E00u | ((a >> 13) & 0x3FFu), 0x7C00u);
    uint32_t r = fo_select(fo_mask(a >= 0x477FF000u), big,
                           fo_select(fo_mask(a < 0x38800000u), subnormal, normal));
    return (fo_half)(r | sign);
}

/* float16 blocks, for the loops over float16 storage: they convert a block of at most
 * FO_F16_BLOCK values into float32 scratch (L1-resident), run the float32 loop on it and convert
 * the results back, all in one pass over memory. Small blocks keep every array's stream moving
 * together (measured for Adam, 1e7 values: 64 and 128 ~0.75 ns per value, 512 ~1.4, 8192 ~1.8,
 * against ~0.85 for the bfloat16 loop). GCC 12 vectorizes neither _Float16 conversions
 * nor the F16C intrinsics, and the branch-free integer conversions above, vectorized, cost ~20
 * instructions per value: 3x the time of a bfloat16 Adam step. With F16C (every AVX2 CPU) the
 * block conversions are one instruction per 8 or 16 values (vcvtph2ps, vcvtps2ph, round to
 * nearest even; a NaN keeps its sign and payload, quieted); without it, the portable conversions,
 * vectorized. */
#define FO_F16_BLOCK 64

static inline void fo_f16_load_block(float* restrict dst, const fo_half* restrict src, Py_ssize_t n) {
    Py_ssize_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
    for (; i < n; i++)
        dst[i] = _cvtsh_ss(src[i]);
#else
    for (; i < n; i++)
        dst[i] = fo_f16_load(src[i]);
#endif
}

static inline void fo_f16_store_block(fo_half* restrict dst, const float* restrict src, Py_ssize_t n) {
    Py_ssize_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
#else
    for (; i < n; i++)
        dst[i] = fo_f16_round(src[i]);
#endif
}

#endif /* FASTOPT_SIMD_H */
