/* The running CPU's x86 features that fastopt's instruction-set variants need (fastopt/_core/_isa.py),
 * read with cpuid. A vector feature counts only when the OS also saves the registers it uses (xgetbv: the
 * YMM state for the AVX family; the opmask and full ZMM state for AVX-512): a CPU can have AVX-512
 * that its OS (or hypervisor) leaves off, and an instruction that touches those registers then
 * faults. macOS is the exception: it enables the AVX-512 state lazily, on first use, so there XCR0
 * may not show it yet and the kernel's own report (sysctl hw.optional.avx512f) stands in, as NumPy
 * does.
 *
 * Compiled into a baseline module (scalar code, no vector flags), so it runs on any x86-64 CPU.
 * Other architectures report no feature: they build and run the portable loops only. */
#ifndef FASTOPT_CPU_H
#define FASTOPT_CPU_H

#include <stdint.h>

enum {
    FO_CPU_AVX2 = 1 << 0,
    FO_CPU_FMA = 1 << 1,
    FO_CPU_F16C = 1 << 2,
    FO_CPU_AVX512F = 1 << 3,
    FO_CPU_AVX512CD = 1 << 4,
    FO_CPU_AVX512VL = 1 << 5,
    FO_CPU_AVX512BW = 1 << 6,
    FO_CPU_AVX512DQ = 1 << 7,
    FO_CPU_BMI = 1 << 8,
    FO_CPU_BMI2 = 1 << 9,
    FO_CPU_LZCNT = 1 << 10,
    FO_CPU_MOVBE = 1 << 11,
    FO_CPU_POPCNT = 1 << 12,
};

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static void fo_cpuid(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
    int r[4];
    __cpuidex(r, (int)leaf, (int)subleaf);
    for (int i = 0; i < 4; i++) regs[i] = (unsigned)r[i];
}
static uint64_t fo_xcr0(void) { return (uint64_t)_xgetbv(0); }
#else
#include <cpuid.h>
static void fo_cpuid(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
    __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
}
static uint64_t fo_xcr0(void) {
    uint32_t lo, hi;
    /* xgetbv, as bytes: assemblers that predate the mnemonic accept it too */
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

#if defined(__APPLE__)
#include <sys/sysctl.h>
static int fo_os_avx512(uint64_t xcr0) {
    int on = 0;
    size_t size = sizeof on;
    if ((xcr0 & 0xE6) == 0xE6) return 1;
    return sysctlbyname("hw.optional.avx512f", &on, &size, NULL, 0) == 0 && on;
}
#else
static int fo_os_avx512(uint64_t xcr0) { return (xcr0 & 0xE6) == 0xE6; }   /* opmask, ZMM state */
#endif

static unsigned fo_cpu_features(void) {
    unsigned r[4], features = 0, ebx7 = 0;
    fo_cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    if (max_leaf < 1) return 0;
    fo_cpuid(1, 0, r);
    unsigned ecx1 = r[2];
    if (max_leaf >= 7) {
        fo_cpuid(7, 0, r);
        ebx7 = r[1];
    }
    /* scalar: POPCNT, MOVBE, BMI1, BMI2, LZCNT (ABM, an extended leaf) */
    if (ecx1 & (1u << 23)) features |= FO_CPU_POPCNT;
    if (ecx1 & (1u << 22)) features |= FO_CPU_MOVBE;
    if (ebx7 & (1u << 3)) features |= FO_CPU_BMI;
    if (ebx7 & (1u << 8)) features |= FO_CPU_BMI2;
    fo_cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000001u) {
        fo_cpuid(0x80000001u, 0, r);
        if (r[2] & (1u << 5)) features |= FO_CPU_LZCNT;
    }
    /* vector: AVX (bit 28) with OSXSAVE (bit 27: xgetbv exists, the OS manages register state) */
    if (!(ecx1 & (1u << 27)) || !(ecx1 & (1u << 28))) return features;
    uint64_t xcr0 = fo_xcr0();
    if ((xcr0 & 0x6) != 0x6) return features;          /* XMM and YMM state saved */
    if (ecx1 & (1u << 12)) features |= FO_CPU_FMA;
    if (ecx1 & (1u << 29)) features |= FO_CPU_F16C;
    if (ebx7 & (1u << 5)) features |= FO_CPU_AVX2;
    if (fo_os_avx512(xcr0)) {
        if (ebx7 & (1u << 16)) features |= FO_CPU_AVX512F;
        if (ebx7 & (1u << 17)) features |= FO_CPU_AVX512DQ;
        if (ebx7 & (1u << 28)) features |= FO_CPU_AVX512CD;
        if (ebx7 & (1u << 30)) features |= FO_CPU_AVX512BW;
        if (ebx7 & (1u << 31)) features |= FO_CPU_AVX512VL;
    }
    return features;
}
#else
static unsigned fo_cpu_features(void) { return 0; }
#endif

#endif /* FASTOPT_CPU_H */
