/* fastopt's C references for `fastopt bench`, compiled at bench time (see ceiling.py).
 *
 * Both are timed here, inside C, on buffers the benchmark passes in (fastopt's own param, gradient
 * and state buffers where it can), so no call overhead and no cache effect of other buffers counts.
 *
 * fastopt_ref_adam_f32   A plain fused float32 Adam step, written as torch.optim.Adam's formula
 *                        and left to the compiler (-O3, OpenMP): how fast a straightforward fused
 *                        step runs on this machine.
 * fastopt_ref_stream_*   The memory-traffic bound of an update: R arrays read and W of them written
 *                        back per element, with trivial arithmetic. The first W arrays are read and
 *                        written (the param and the state buffers), the other R - W only read (the
 *                        gradient). Nothing an optimizer step does with the same traffic can be
 *                        faster than this, short of skipping some of the traffic.
 *
 * Without -fno-math-errno GCC keeps sqrtf scalar (it must be able to set errno) and the Adam step
 * is several times slower; ceiling.py always passes it. Without OpenMP everything runs on one
 * thread and fastopt_ref_set_threads does nothing.
 */
#include <math.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_STREAMS 6

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void fastopt_ref_set_threads(int n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int fastopt_ref_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fastopt_ref_max_streams(void) { return MAX_STREAMS; }

/* ------------------------------------------------------------------------------------------------
 * Adam, float32: m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *                p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
 * ---------------------------------------------------------------------------------------------- */
static void adam_f32(long n, float *restrict p, const float *restrict g, float *restrict m,
                     float *restrict v, float lr, float b1, float b2, float eps, float bc1,
                     float bc2_sqrt) {
    const float step_size = lr / bc1;
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

/* Seconds for `steps` Adam steps (lr 1e-3, betas 0.9/0.999, eps 1e-8, bias corrections of step 10). */
double fastopt_ref_adam_f32(long n, float *p, const float *g, float *m, float *v, int steps) {
    const float b1 = 0.9f, b2 = 0.999f;
    const float bc1 = 1.0f - powf(b1, 10.0f), bc2_sqrt = sqrtf(1.0f - powf(b2, 10.0f));
    double start = seconds();
    for (int k = 0; k < steps; k++) adam_f32(n, p, g, m, v, 1e-3f, b1, b2, 1e-8f, bc1, bc2_sqrt);
    return seconds() - start;
}

/* ------------------------------------------------------------------------------------------------
 * Streams. One loop per (R, W) pair, so that every loop is straight-line code over restrict
 * pointers that the compiler vectorizes: a loop over a run-time number of arrays would not be.
 * Per element: t = (sum of the squares of the read-only elements, or 1e-7 when there are none);
 * every written array gets a[i] += t. The values only grow (by ~1e-4 a pass for gradients of
 * ~1e-2), so no operand turns subnormal (which would slow the arithmetic) and a second-moment
 * buffer stays non-negative for the fastopt steps timed in between.
 * ---------------------------------------------------------------------------------------------- */
#define READ_ONLY(T, R, W, k) if ((k) >= (W) && (k) < (R)) { T x = a##k[i]; t += x * x; }
#define WRITE(W, k) if ((k) < (W)) a##k[i] += t;
#define READ_ALL(T, R, W) READ_ONLY(T, R, W, 0) READ_ONLY(T, R, W, 1) READ_ONLY(T, R, W, 2)          \
                          READ_ONLY(T, R, W, 3) READ_ONLY(T, R, W, 4) READ_ONLY(T, R, W, 5)
#define WRITE_ALL(W) WRITE(W, 0) WRITE(W, 1) WRITE(W, 2) WRITE(W, 3) WRITE(W, 4) WRITE(W, 5)

#define STREAM(T, SUFFIX, R, W)                                                                    \
    static void stream_##SUFFIX##_##R##_##W(long n, T *const *arrays) {                          \
        T *restrict a0 = arrays[0];                                                               \
        T *restrict a1 = (R) > 1 ? arrays[1] : a0;                                                \
        T *restrict a2 = (R) > 2 ? arrays[2] : a0;                                                \
        T *restrict a3 = (R) > 3 ? arrays[3] : a0;                                                \
        T *restrict a4 = (R) > 4 ? arrays[4] : a0;                                                \
        T *restrict a5 = (R) > 5 ? arrays[5] : a0;                                                \
        _Pragma("omp parallel for simd schedule(static)")                                          \
        for (long i = 0; i < n; i++) {                                                            \
            T t = (R) > (W) ? (T)0 : (T)1e-7;                                                     \
            READ_ALL(T, R, W)                                                                     \
            WRITE_ALL(W)                                                                          \
        }                                                                                         \
    }

/* W = 0 writes nothing: the loop is a sum, returned so that it cannot be optimized away. */
#define SUM(T, SUFFIX, R)                                                                          \
    static T sum_##SUFFIX##_##R(long n, T *const *arrays) {                                       \
        const T *restrict a0 = arrays[0];                                                         \
        const T *restrict a1 = (R) > 1 ? arrays[1] : a0;                                          \
        const T *restrict a2 = (R) > 2 ? arrays[2] : a0;                                          \
        const T *restrict a3 = (R) > 3 ? arrays[3] : a0;                                          \
        const T *restrict a4 = (R) > 4 ? arrays[4] : a0;                                          \
        const T *restrict a5 = (R) > 5 ? arrays[5] : a0;                                          \
        T total = 0;                                                                              \
        _Pragma("omp parallel for simd schedule(static) reduction(+:total)")                       \
        for (long i = 0; i < n; i++) {                                                            \
            T t = 0;                                                                              \
            READ_ALL(T, R, 0)                                                                     \
            total += t;                                                                           \
        }                                                                                         \
        return total;                                                                             \
    }

#define PATTERNS(T, SUFFIX)                                                                        \
    SUM(T, SUFFIX, 1) SUM(T, SUFFIX, 2) SUM(T, SUFFIX, 3) SUM(T, SUFFIX, 4) SUM(T, SUFFIX, 5)      \
    SUM(T, SUFFIX, 6)                                                                             \
    STREAM(T, SUFFIX, 1, 1)                                                                       \
    STREAM(T, SUFFIX, 2, 1) STREAM(T, SUFFIX, 2, 2)                                               \
    STREAM(T, SUFFIX, 3, 1) STREAM(T, SUFFIX, 3, 2) STREAM(T, SUFFIX, 3, 3)                       \
    STREAM(T, SUFFIX, 4, 1) STREAM(T, SUFFIX, 4, 2) STREAM(T, SUFFIX, 4, 3) STREAM(T, SUFFIX, 4, 4)\
    STREAM(T, SUFFIX, 5, 1) STREAM(T, SUFFIX, 5, 2) STREAM(T, SUFFIX, 5, 3) STREAM(T, SUFFIX, 5, 4)\
    STREAM(T, SUFFIX, 5, 5)                                                                       \
    STREAM(T, SUFFIX, 6, 1) STREAM(T, SUFFIX, 6, 2) STREAM(T, SUFFIX, 6, 3) STREAM(T, SUFFIX, 6, 4)\
    STREAM(T, SUFFIX, 6, 5) STREAM(T, SUFFIX, 6, 6)                                               \
                                                                                                  \
    /* Seconds for `reps` passes of the (reads, writes) pattern over `arrays` (the written ones    \
       first), or -1 for a pattern outside 1 <= reads <= MAX_STREAMS, 0 <= writes <= reads. */    \
    double fastopt_ref_stream_##SUFFIX(long n, int reads, int writes, T *const *arrays, int reps) { \
        static void (*const table[MAX_STREAMS + 1][MAX_STREAMS + 1])(long, T *const *) = {        \
            [1] = {[1] = stream_##SUFFIX##_1_1},                                                  \
            [2] = {[1] = stream_##SUFFIX##_2_1, [2] = stream_##SUFFIX##_2_2},                      \
            [3] = {[1] = stream_##SUFFIX##_3_1, [2] = stream_##SUFFIX##_3_2,                       \
                   [3] = stream_##SUFFIX##_3_3},                                                  \
            [4] = {[1] = stream_##SUFFIX##_4_1, [2] = stream_##SUFFIX##_4_2,                       \
                   [3] = stream_##SUFFIX##_4_3, [4] = stream_##SUFFIX##_4_4},                      \
            [5] = {[1] = stream_##SUFFIX##_5_1, [2] = stream_##SUFFIX##_5_2,                       \
                   [3] = stream_##SUFFIX##_5_3, [4] = stream_##SUFFIX##_5_4,                       \
                   [5] = stream_##SUFFIX##_5_5},                                                  \
            [6] = {[1] = stream_##SUFFIX##_6_1, [2] = stream_##SUFFIX##_6_2,                       \
                   [3] = stream_##SUFFIX##_6_3, [4] = stream_##SUFFIX##_6_4,                       \
                   [5] = stream_##SUFFIX##_6_5, [6] = stream_##SUFFIX##_6_6},                      \
        };                                                                                        \
        static T (*const sums[MAX_STREAMS + 1])(long, T *const *) = {                             \
            [1] = sum_##SUFFIX##_1, [2] = sum_##SUFFIX##_2, [3] = sum_##SUFFIX##_3,                \
            [4] = sum_##SUFFIX##_4, [5] = sum_##SUFFIX##_5, [6] = sum_##SUFFIX##_6,                \
        };                                                                                        \
        if (reads < 1 || reads > MAX_STREAMS || writes < 0 || writes > reads || n < 0) return -1; \
        volatile T sink = 0;                                                                      \
        double start = seconds();                                                                 \
        for (int k = 0; k < reps; k++) {                                                          \
            if (writes == 0) sink += sums[reads](n, arrays);                                      \
            else table[reads][writes](n, arrays);                                                 \
        }                                                                                         \
        double elapsed = seconds() - start;                                                       \
        (void)sink;                                                                               \
        return elapsed;                                                                           \
    }

PATTERNS(float, f32)
PATTERNS(double, f64)
