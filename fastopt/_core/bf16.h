/* Rounding to bfloat16, as torch does it (c10::BFloat16's round_to_nearest_even): to the nearest
 * bfloat16, ties to even, every NaN to the canonical quiet NaN. The result is kept as a float (a
 * bfloat16 is the upper half of a float), so float arithmetic and BLAS can work on bfloat16 values
 * exactly: the product of two of them is exact in float. Muon's Newton-Schulz iteration, which
 * torch runs in bfloat16, rounds through this after each operation.
 */
#ifndef FASTOPT_BF16_H
#define FASTOPT_BF16_H

#include <stdint.h>
#include <string.h>

static inline float fo_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (x != x) ? 0x7FC00000u : ((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
    memcpy(&x, &u, sizeof x);
    return x;
}

#endif /* FASTOPT_BF16_H */
