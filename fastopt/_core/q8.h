/* 8-bit blockwise states (bitsandbytes' format; fastopt/_core/_dynamic_map.py declares it): the
 * block conversions the generated loops call for a state stored in 8 bits.
 *
 * A loop over 8-bit states runs block by block (FO_Q8_BLOCK elements, one float32 absmax each):
 * fo_q8_load_block dequantizes a block's codes into float32 scratch (map[code] * absmax), the
 * float32 element loop updates the scratch, and fo_q8_store_block_<map> finds the block's new
 * absmax (the largest |value|; NaN wins) before it writes the codes of value / absmax, so each
 * block is read and written once, in cache. Every step is elementwise and branch-free, so the
 * loops vectorize (table lookups as gathers), and a block's codes depend on the block alone: any
 * thread count gives the same bits (threads split arrays at whole blocks: _bucket.pyx).
 *
 * A quotient's code is the one the CUDA kernels' binary search over the map picks (the nearest
 * code), found with one lookup: the entry of the quotient's bucket (sign, exponent, first mantissa
 * bits) holds the bucket's first code and the mantissa bits from which the next code applies.
 *
 * Cost (AMD EPYC with AVX-512, 2026-12-07, a block in L1, no update arithmetic): dequantizing 0.22
 * ns per value, requantizing 0.64-0.83, of which the lookup's gather takes 0.5-0.7 (this CPU
 * gathers about one element per cycle). Adam's two moments thus cost 1.7 ns per element in
 * conversions, several times its memory-traffic bound (0.4 ns): the step is bound by this codec.
 * Faster needs a quantizer without a gather that still gives the nearest code (the 3456-entry
 * table of a map is too large for register permutes; a binary search by permutes costs more
 * instructions than the gather).
 */
#ifndef FASTOPT_Q8_H
#define FASTOPT_Q8_H

#include <Python.h>
#include <stdint.h>
#include "simd.h"
#include "_storage.h"      /* FO_Q8_BLOCK, FO_Q8_ABSMAX */
#include "_q8_tables.h"

static inline void fo_q8_load_block(float* restrict dst, const uint8_t* restrict codes, float absmax,
                                    const float* restrict map, Py_ssize_t n) {
    Py_ssize_t i = 0;
    /* GCC does not vectorize the table lookup (it emulates the gather with scalar inserts). With
     * AVX-512 the 256 values sit in 16 registers: eight two-register permutes pick each code's
     * value among 32 by its low 5 bits, three rounds of blends by its top 3 bits (measured on an
     * AMD EPYC with AVX-512, 2026-12-06: 0.22 ns per value, against 0.33 with a gather) */
#if defined(__AVX512F__)
    const __m512 scale16 = _mm512_set1_ps(absmax);
    __m512 table[16];
    for (int k = 0; k < 16; k++)
        table[k] = _mm512_loadu_ps(map + 16 * k);
    for (; i + 16 <= n; i += 16) {
        const __m512i index = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(codes + i)));
        __m512 v[8];
        for (int k = 0; k < 8; k++)
            v[k] = _mm512_permutex2var_ps(table[2 * k], index, table[2 * k + 1]);
        const __mmask16 bit5 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(32));
        const __mmask16 bit6 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(64));
        const __mmask16 bit7 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(128));
        for (int k = 0; k < 8; k += 2)
            v[k] = _mm512_mask_blend_ps(bit5, v[k], v[k + 1]);
        v[0] = _mm512_mask_blend_ps(bit6, v[0], v[2]);
        v[4] = _mm512_mask_blend_ps(bit6, v[4], v[6]);
        v[0] = _mm512_mask_blend_ps(bit7, v[0], v[4]);
        _mm512_storeu_ps(dst + i, _mm512_mul_ps(v[0], scale16));
    }
#endif
#if defined(__AVX2__)
    const __m256 scale8 = _mm256_set1_ps(absmax);
    for (; i + 8 <= n; i += 8) {
        __m256i index = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(codes + i)));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_i32gather_ps(map, index, 4), scale8));
    }
#endif
    for (; i < n; i++)
        dst[i] = map[codes[i]] * absmax;
}

/* The block's absmax: the largest |value| compared as bits (the order of non-negative floats;
 * a NaN's bits are above Inf's, so NaN wins, as NumPy's max), which vectorizes as an integer max. */
static inline float fo_q8_absmax(const float* restrict v, Py_ssize_t n) {
    uint32_t top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t a = fo_float_bits(v[i]) & 0x7FFFFFFFu;
        top = a > top ? a : top;
    }
    return fo_bits_float(top);
}

/* The code of quotient x in a map whose lookup has `bits` mantissa bits per bucket. The rows of a
 * sign: 0 for |x| < 2**-24, then one per binade, then NaN (an all-zero block's 0 / 0). The
 * unsigned map's quotients are >= 0 or -0.0 (second moments), which shares NaN's code. */
static inline uint8_t fo_q8_code(const uint32_t* restrict lut, int bits, int is_signed, float x) {
    uint32_t u = fo_float_bits(x);
    uint32_t sign = u >> 31;
    int32_t row = (int32_t)((u >> 23) & 0xFFu) - (FO_Q8_TINY_EXPONENT - 1);
    row = row < 0 ? 0 : row;
    row = row > FO_Q8_ROWS - 1 ? FO_Q8_ROWS - 1 : row;
    uint32_t half = is_signed ? sign * FO_Q8_ROWS : 0u;
    row = (!is_signed && sign) ? FO_Q8_ROWS - 1 : row;
    uint32_t mantissa = u & 0x7FFFFFu;
    uint32_t entry = lut[((half + (uint32_t)row) << bits) | (mantissa >> (23 - bits))];
    uint32_t next = (mantissa & ((1u << (23 - bits)) - 1u)) >= (entry >> 8);
    uint32_t step = is_signed && sign ? (uint32_t)0 - next : next;
    return (uint8_t)((entry & 0xFFu) + step);
}

/* fo_q8_code on 16 (AVX-512) or 8 (AVX2) quotients at once: the same integer steps, the lookup as
 * a gather. */
#if defined(__AVX512F__)
static inline __m128i fo_q8_code16(const uint32_t* restrict lut, int bits, int is_signed, __m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __mmask16 negative = _mm512_movepi32_mask(u);
    __m512i row = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 23), _mm512_set1_epi32(0xFF)),
                                   _mm512_set1_epi32(FO_Q8_TINY_EXPONENT - 1));
    row = _mm512_min_epi32(_mm512_max_epi32(row, _mm512_setzero_si512()),
                           _mm512_set1_epi32(FO_Q8_ROWS - 1));
    if (is_signed)
        row = _mm512_mask_add_epi32(row, negative, row, _mm512_set1_epi32(FO_Q8_ROWS));
    else
        row = _mm512_mask_mov_epi32(row, negative, _mm512_set1_epi32(FO_Q8_ROWS - 1));
    const __m512i mantissa = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFF));
    const __m512i index = _mm512_or_si512(_mm512_sll_epi32(row, _mm_cvtsi32_si128(bits)),
                                          _mm512_srl_epi32(mantissa, _mm_cvtsi32_si128(23 - bits)));
    const __m512i entry = _mm512_i32gather_epi32(index, (const void*)lut, 4);
    const __m512i low = _mm512_and_si512(mantissa, _mm512_set1_epi32((1 << (23 - bits)) - 1));
    const __mmask16 next = _mm512_cmpge_epu32_mask(low, _mm512_srli_epi32(entry, 8));
    __m512i code = _mm512_and_si512(entry, _mm512_set1_epi32(0xFF));
    const __m512i one = _mm512_set1_epi32(1);
    if (is_signed) {
        code = _mm512_mask_add_epi32(code, next & (__mmask16)~negative, code, one);
        code = _mm512_mask_sub_epi32(code, next & negative, code, one);
    } else {
        code = _mm512_mask_add_epi32(code, next, code, one);
    }
    return _mm512_cvtepi32_epi8(code);
}
#elif defined(__AVX2__)
static inline __m128i fo_q8_code8(const uint32_t* restrict lut, int bits, int is_signed, __m256 x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i negative = _mm256_srai_epi32(u, 31);                 /* all ones where < 0 */
    __m256i row = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(0xFF)),
                                   _mm256_set1_epi32(FO_Q8_TINY_EXPONENT - 1));
    row = _mm256_min_epi32(_mm256_max_epi32(row, _mm256_setzero_si256()),
                           _mm256_set1_epi32(FO_Q8_ROWS - 1));
    if (is_signed)
        row = _mm256_add_epi32(row, _mm256_and_si256(negative, _mm256_set1_epi32(FO_Q8_ROWS)));
    else
        row = _mm256_blendv_epi8(row, _mm256_set1_epi32(FO_Q8_ROWS - 1), negative);
    const __m256i mantissa = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFF));
    const __m256i index = _mm256_or_si256(_mm256_sll_epi32(row, _mm_cvtsi32_si128(bits)),
                                          _mm256_srl_epi32(mantissa, _mm_cvtsi32_si128(23 - bits)));
    const __m256i entry = _mm256_i32gather_epi32((const int*)lut, index, 4);
    const __m256i low = _mm256_and_si256(mantissa, _mm256_set1_epi32((1 << (23 - bits)) - 1));
    /* both sides < 2**24: a signed compare; next is all ones where low >= threshold */
    const __m256i next = _mm256_xor_si256(_mm256_cmpgt_epi32(_mm256_srli_epi32(entry, 8), low),
                                          _mm256_set1_epi32(-1));
    __m256i code = _mm256_and_si256(entry, _mm256_set1_epi32(0xFF));
    /* + 1 where next (code - (-1)); for the negative half of the signed map - 1 instead */
    const __m256i step = is_signed ? _mm256_sign_epi32(next, _mm256_or_si256(negative, _mm256_set1_epi32(1)))
                                   : next;
    code = _mm256_sub_epi32(code, step);
    const __m128i half16 = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
    return _mm_packus_epi16(half16, half16);
}
#endif

static inline void fo_q8_store_block(uint8_t* restrict codes, float* restrict absmax,
                                     const float* restrict v, Py_ssize_t n,
                                     const uint32_t* restrict lut, int bits, int is_signed) {
    const float top = fo_q8_absmax(v, n);
    *absmax = top;
    Py_ssize_t i = 0;
#if defined(__AVX512F__)
    const __m512 top16 = _mm512_set1_ps(top);
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i*)(codes + i),
                         fo_q8_code16(lut, bits, is_signed, _mm512_div_ps(_mm512_loadu_ps(v + i), top16)));
#elif defined(__AVX2__)
    const __m256 top8 = _mm256_set1_ps(top);
    for (; i + 8 <= n; i += 8)
        _mm_storel_epi64((__m128i*)(codes + i),
                         fo_q8_code8(lut, bits, is_signed, _mm256_div_ps(_mm256_loadu_ps(v + i), top8)));
#endif
    for (; i < n; i++)
        codes[i] = fo_q8_code(lut, bits, is_signed, v[i] / top);
}

/* Stochastic rounding of codes: a quotient between two codes' values takes the farther one with
 * probability equal to its distance from the nearer one over their spacing, so the stored value
 * is unbiased (small updates of a state are not lost on average); the random bits depend only on
 * the key (seed, param, step, state) and the element's index in its param, so any thread count
 * draws the same. A quotient equal to a code's value, NaN, and the ends of the map keep the
 * nearest code. */
static inline void fo_q8_store_block_sr(uint8_t* restrict codes, float* restrict absmax,
                                        const float* restrict v, Py_ssize_t n,
                                        const uint32_t* restrict lut, int bits, int is_signed,
                                        const float* restrict map, uint64_t key, Py_ssize_t index0) {
    const float top = fo_q8_absmax(v, n);
    *absmax = top;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float x = v[i] / top;
        const int nearest = fo_q8_code(lut, bits, is_signed, x);
        const float at = map[nearest];
        int other = x > at ? nearest + 1 : (x < at ? nearest - 1 : nearest);
        other = other < 0 ? 0 : (other > 255 ? 255 : other);
        const float spacing = map[other] - at;
        const float p = spacing != 0.0f ? (x - at) / spacing : 0.0f;         /* in [0, 1/2] */
        const float u = (float)(fo_random_bits(key, index0 + i) >> 8) * 0x1p-24f;
        codes[i] = (uint8_t)(u < p ? other : nearest);
    }
}

static inline void fo_q8_store_block_signed_sr(uint8_t* restrict codes, float* restrict absmax,
                                               const float* restrict v, Py_ssize_t n, uint64_t key,
                                               Py_ssize_t index0) {
    fo_q8_store_block_sr(codes, absmax, v, n, fo_q8_lut_signed, FO_Q8_SIGNED_BITS, 1,
                         fo_q8_map_signed, key, index0);
}

static inline void fo_q8_store_block_unsigned_sr(uint8_t* restrict codes, float* restrict absmax,
                                                 const float* restrict v, Py_ssize_t n,
                                                 uint64_t key, Py_ssize_t index0) {
    fo_q8_store_block_sr(codes, absmax, v, n, fo_q8_lut_unsigned, FO_Q8_UNSIGNED_BITS, 0,
                         fo_q8_map_unsigned, key, index0);
}

static inline void fo_q8_store_block_signed(uint8_t* restrict codes, float* restrict absmax,
                                            const float* restrict v, Py_ssize_t n) {
    fo_q8_store_block(codes, absmax, v, n, fo_q8_lut_signed, FO_Q8_SIGNED_BITS, 1);
}

static inline void fo_q8_store_block_unsigned(uint8_t* restrict codes, float* restrict absmax,
                                              const float* restrict v, Py_ssize_t n) {
    fo_q8_store_block(codes, absmax, v, n, fo_q8_lut_unsigned, FO_Q8_UNSIGNED_BITS, 0);
}

#endif /* FASTOPT_Q8_H */
