/* fastopt's thread pool; see pool.h for what it does and why. */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE   /* sched_getaffinity */
#endif
#include "pool.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__) || defined(__clang__)
#define FO_EXPORT __attribute__((visibility("default")))
#else
#define FO_EXPORT
#endif

#if defined(_WIN32)
/* No helper threads on Windows builds yet: every job runs on the calling thread. (No C11 atomics
 * either: MSVC's C compiler has them only behind /experimental:c11atomics, and the setting is a
 * word written and read whole.) */
void fo_pool_run(fo_chunk_fn fn, void* ctx, ptrdiff_t n_chunks, int max_threads) {
    (void)max_threads;
    for (ptrdiff_t c = 0; c < n_chunks; c++) fn(ctx, c, n_chunks);
}
FO_EXPORT int fastopt_pool_get_num_threads(void) { return 1; }
FO_EXPORT void fastopt_pool_set_num_threads(int n) { (void)n; }   /* one thread whatever it says */
int fo_pool_available(void) { return 0; }
int fo_pool_helpers_awake(void) { return 0; }
int fo_pool_prewake(int max_threads) { (void)max_threads; return 0; }
void fo_pool_set_helper_delay_us(long us) { (void)us; }
void fo_pool_set_helper_chunk_hold_us(long us) { (void)us; }
long fo_pool_helper_chunks_held(void) { return 0; }
long fo_pool_test_start_delay_ms(void) { return 0; }
double fo_pool_measure_wake_ns(int rounds) { (void)rounds; return -1.0; }

#else
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int fo_requested = 0;   /* 0: the default */
static _Atomic int fo_default = 0;     /* the default, found once (it costs a system call) */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define fo_cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define fo_cpu_relax() __asm__ __volatile__("yield")
#else
#define fo_cpu_relax() ((void)0)
#endif

enum {
    FO_MAX_HELPERS = 255,
    FO_SPIN_NS = FO_POOL_SPIN_NS,   /* see pool.h */
};
/* The calibration's probe waits this long for a helper to claim it before the caller runs it. */
#define FO_PROBE_WAIT_NS 10000000
/* and is published once the helpers have slept this long. */
#define FO_PROBE_ASLEEP_NS 1000000

static struct {
    pthread_mutex_t lock;            /* sleeping and waking helpers, starting them */
    pthread_cond_t wake;
    pthread_mutex_t busy;            /* held by the caller whose job is running */
    /* (generation << 32) | chunks not claimed yet. Counting down, a finished job reads 0 whatever
     * chunk count a late helper believes it has (see fo_claim). */
    _Atomic uint64_t state;
    _Atomic ptrdiff_t done;          /* chunks of the current job finished */
    /* Helpers waiting on `wake`. A waker (a job published, or fo_pool_prewake) sets it to 0 as it
     * broadcasts, under `lock`, so from then on the helpers count as awake, though the OS may
     * take tens of microseconds to run them; a helper that finds work at once uncounts itself. */
    _Atomic int sleepers;
    /* Bumped by fo_pool_prewake: a sleeping helper wakes for it as for a job, and spins. */
    _Atomic uint32_t wake_epoch;
    _Atomic int waker_cpu;           /* the CPU the last waker ran on (-1: unknown) */
    /* The current job: release-stored before it is published, acquire-loaded (free on x86). */
    _Atomic uintptr_t fn;
    _Atomic uintptr_t ctx;
    _Atomic ptrdiff_t n_chunks;
    _Atomic int max_helpers;
    _Atomic long helper_delay_us;    /* test hooks (0: off) */
    _Atomic long helper_chunk_hold_us;
    _Atomic long helper_chunks_held;
    int n_helpers;                   /* started (under `lock`) */
    uint32_t generation;             /* the caller's (under `busy`) */
} fo_pool = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    .waker_cpu = -1,
};
static pthread_once_t fo_pool_once = PTHREAD_ONCE_INIT;
/* Test hook (FASTOPT_POOL_TEST_START_DELAY_MS, read once when the pool is first used): every new
 * helper sleeps this long before it starts, as if the OS had not scheduled it yet. */
static long fo_test_start_delay_ms = 0;

static int64_t fo_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void fo_sleep_us(long us) {
    struct timespec t = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&t, NULL);
}

/* Claim a chunk of job `gen`, which has `n` chunks: its index, or -1 if every chunk is claimed or
 * the job is not the current one.
 *
 * A helper that woke for job `gen` may read `n` (and fn, ctx) only after the caller has moved on:
 * the job is done and the next one's fields are written but not yet published. Those fields are
 * written only after every chunk of `gen` was claimed and finished, and they are release-stored,
 * so a helper that acquire-loads any of them then finds `gen` with no chunk left: the claim fails
 * however large the `n` it read. A claim that succeeds therefore used job `gen`'s own fields, and
 * the generation in the word keeps a stale helper off every later job (it would have to sleep
 * between its load and its compare-and-swap through 2^32 jobs for the generation to come round). */
static inline ptrdiff_t fo_claim(uint32_t gen, ptrdiff_t n) {
    uint64_t s = atomic_load_explicit(&fo_pool.state, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(s >> 32) != gen || (uint32_t)s == 0) return -1;
        if (atomic_compare_exchange_weak_explicit(&fo_pool.state, &s, s - 1,
                                                  memory_order_acq_rel, memory_order_acquire))
            return n - (ptrdiff_t)(uint32_t)s;
    }
}

/* Claim and run chunks of job `gen` until none is left (or the job is another's). `hold_us` is
 * the test hook's pause between claiming a chunk and running it (helpers only; 0: off). */
static void fo_work(uint32_t gen, fo_chunk_fn fn, void* ctx, ptrdiff_t n, long hold_us) {
    ptrdiff_t chunk;
    while ((chunk = fo_claim(gen, n)) >= 0) {
        if (hold_us > 0) {
            atomic_fetch_add(&fo_pool.helper_chunks_held, 1);
            fo_sleep_us(hold_us);
        }
        fn(ctx, chunk, n);
        atomic_fetch_add_explicit(&fo_pool.done, 1, memory_order_release);
    }
}

/* Wake every sleeping helper, after a new job or wake epoch was stored: they count as awake from
 * now on. The broadcast comes after the unlock: a helper woken while the lock is still held would
 * block on it at once, and the unlock would have to wake it a second time (a wake-up costs the
 * caller ~10 us in a KVM guest). A helper that takes the lock in between sees the new job or
 * epoch, so no wake-up is lost. */
static void fo_wake_sleepers(int new_epoch) {
#if defined(__linux__)
    atomic_store_explicit(&fo_pool.waker_cpu, sched_getcpu(), memory_order_relaxed);
#endif
    pthread_mutex_lock(&fo_pool.lock);
    if (new_epoch) atomic_fetch_add(&fo_pool.wake_epoch, 1);
    atomic_store(&fo_pool.sleepers, 0);
    pthread_mutex_unlock(&fo_pool.lock);
    pthread_cond_broadcast(&fo_pool.wake);
}

/* Called by a helper the waker just woke: if the OS runs it on the waker's own CPU, move to
 * another. Linux may place a woken thread there even when another CPU is idle: measured in a KVM
 * guest (AMD EPYC, 2 vCPUs, December 2026), where an idle vCPU can pass for a busy one, from one
 * wake-up in ten to most of them. The helper then preempts the caller it should run beside and
 * spins there (FO_SPIN_NS): waking it cost the caller ~115 us instead of ~8. Leaving that CPU
 * costs two system calls, and only in that case; the helper's affinity is restored at once, so
 * the scheduler places it freely afterwards. */
static void fo_leave_waker_cpu(void) {
#if defined(__linux__)
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu != atomic_load_explicit(&fo_pool.waker_cpu, memory_order_relaxed)) return;
    cpu_set_t allowed, others;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0 || !CPU_ISSET(cpu, &allowed)
            || CPU_COUNT(&allowed) < 2)
        return;
    others = allowed;
    CPU_CLR(cpu, &others);
    if (sched_setaffinity(0, sizeof(others), &others) == 0)   /* moves this thread off `cpu` now */
        sched_setaffinity(0, sizeof(allowed), &allowed);
#endif
}

/* Wait (spin, then sleep) until a job newer than `seen` is published; return the state word. A
 * pre-wake (fo_pool_prewake) ends a sleep too: the helper then spins again, for a job that is
 * about to come, and sleeps again if none does. */
static uint64_t fo_wait_for_job(uint32_t seen) {
    uint64_t s;
    for (;;) {
        int64_t start = fo_now_ns();
        for (unsigned i = 0;; i++) {
            s = atomic_load(&fo_pool.state);
            if ((uint32_t)(s >> 32) != seen) return s;
            fo_cpu_relax();
            if ((i & 255) == 255 && fo_now_ns() - start > FO_SPIN_NS) break;
        }
        pthread_mutex_lock(&fo_pool.lock);
        uint32_t epoch = atomic_load(&fo_pool.wake_epoch);
        /* Counted before the state is read again: a publisher that stores the state and then
         * finds no sleeper counted is seen here (both sequentially consistent), so no job is
         * published to a helper that goes on sleeping. */
        atomic_fetch_add(&fo_pool.sleepers, 1);
        s = atomic_load(&fo_pool.state);
        if ((uint32_t)(s >> 32) != seen) {
            atomic_fetch_sub(&fo_pool.sleepers, 1);   /* never slept; no waker uncounted it */
            pthread_mutex_unlock(&fo_pool.lock);
            return s;
        }
        /* Whoever ends this wait (a job, a pre-wake) set `sleepers` to 0 when it broadcast. */
        while ((uint32_t)((s = atomic_load(&fo_pool.state)) >> 32) == seen
               && atomic_load(&fo_pool.wake_epoch) == epoch)
            pthread_cond_wait(&fo_pool.wake, &fo_pool.lock);
        pthread_mutex_unlock(&fo_pool.lock);
        fo_leave_waker_cpu();
        if ((uint32_t)(s >> 32) != seen) return s;
    }
}

static void* fo_helper_main(void* arg) {
    int index = (int)(intptr_t)arg;
    if (fo_test_start_delay_ms > 0) fo_sleep_us(fo_test_start_delay_ms * 1000);
    uint32_t seen = (uint32_t)(atomic_load(&fo_pool.state) >> 32);
    for (;;) {
        uint64_t s = fo_wait_for_job(seen);
        uint32_t gen = (uint32_t)(s >> 32);
        seen = gen;
        long delay = atomic_load_explicit(&fo_pool.helper_delay_us, memory_order_relaxed);
        if (delay > 0) fo_sleep_us(delay);
        if (index >= atomic_load_explicit(&fo_pool.max_helpers, memory_order_relaxed)) continue;
        /* These may already be the next job's fields; then every claim fails (see fo_claim) and
         * nothing runs with them. */
        fo_chunk_fn fn = (fo_chunk_fn)atomic_load_explicit(&fo_pool.fn, memory_order_acquire);
        void* ctx = (void*)atomic_load_explicit(&fo_pool.ctx, memory_order_acquire);
        ptrdiff_t n = atomic_load_explicit(&fo_pool.n_chunks, memory_order_acquire);
        fo_work(gen, fn, ctx, n,
                atomic_load_explicit(&fo_pool.helper_chunk_hold_us, memory_order_relaxed));
    }
    return NULL;
}

/* Start helpers up to `wanted` (fewer if the system refuses threads). */
static void fo_start_helpers(int wanted) {
    if (wanted > FO_MAX_HELPERS) wanted = FO_MAX_HELPERS;
    pthread_mutex_lock(&fo_pool.lock);
    while (fo_pool.n_helpers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attr, fo_helper_main,
                                    (void*)(intptr_t)fo_pool.n_helpers);
        pthread_attr_destroy(&attr);
        if (failed) break;
        fo_pool.n_helpers++;
    }
    pthread_mutex_unlock(&fo_pool.lock);
}

/* In a forked child the helpers are gone and the locks may be held by threads that are gone. */
static void fo_after_fork_in_child(void) {
    pthread_mutex_init(&fo_pool.lock, NULL);
    pthread_cond_init(&fo_pool.wake, NULL);
    pthread_mutex_init(&fo_pool.busy, NULL);
    fo_pool.n_helpers = 0;
    atomic_store(&fo_pool.sleepers, 0);
    atomic_store(&fo_pool.wake_epoch, 0);
    atomic_store(&fo_default, 0);   /* the child may run on other CPUs */
}

static void fo_pool_init(void) {
    pthread_atfork(NULL, NULL, fo_after_fork_in_child);
    const char* delay = getenv("FASTOPT_POOL_TEST_START_DELAY_MS");
    if (delay != NULL) {
        long ms = strtol(delay, NULL, 10);
        fo_test_start_delay_ms = ms > 0 ? (ms > 60000 ? 60000 : ms) : 0;
    }
}

/* Publish a job of `n_chunks` (<= UINT32_MAX) chunks; the caller holds `busy` and every chunk of
 * the job before has finished. */
static void fo_publish(fo_chunk_fn fn, void* ctx, ptrdiff_t n_chunks, int helpers) {
    atomic_store_explicit(&fo_pool.fn, (uintptr_t)fn, memory_order_release);
    atomic_store_explicit(&fo_pool.ctx, (uintptr_t)ctx, memory_order_release);
    atomic_store_explicit(&fo_pool.n_chunks, n_chunks, memory_order_release);
    atomic_store_explicit(&fo_pool.max_helpers, helpers, memory_order_relaxed);
    atomic_store_explicit(&fo_pool.done, 0, memory_order_relaxed);
    fo_pool.generation++;
    /* publishes the fields */
    atomic_store(&fo_pool.state, (uint64_t)fo_pool.generation << 32 | (uint64_t)n_chunks);
    if (atomic_load(&fo_pool.sleepers) > 0) fo_wake_sleepers(0);
}

/* Wait until all `n` chunks of the current job have finished. Call it only once every chunk is
 * claimed: then only chunks another thread claimed are outstanding, and those threads are
 * running. (A thread that has not claimed a chunk is never waited for.) */
static void fo_wait_done(ptrdiff_t n) {
    for (unsigned i = 0; atomic_load_explicit(&fo_pool.done, memory_order_acquire) < n; i++) {
        fo_cpu_relax();
        if ((i & 4095) == 4095) sched_yield();   /* a preempted helper holds a chunk: let it run */
    }
}

void fo_pool_run(fo_chunk_fn fn, void* ctx, ptrdiff_t n_chunks, int max_threads) {
    if (max_threads > n_chunks) max_threads = (int)n_chunks;
    if (max_threads <= 1 || n_chunks <= 1 || n_chunks > (ptrdiff_t)UINT32_MAX) {
        for (ptrdiff_t c = 0; c < n_chunks; c++) fn(ctx, c, n_chunks);
        return;
    }
    pthread_once(&fo_pool_once, fo_pool_init);
    if (pthread_mutex_trylock(&fo_pool.busy) != 0) {
        /* Another thread's job is running (or this is a job inside a job): run this one here. */
        for (ptrdiff_t c = 0; c < n_chunks; c++) fn(ctx, c, n_chunks);
        return;
    }
    if (fo_pool.n_helpers < max_threads - 1) fo_start_helpers(max_threads - 1);
    fo_publish(fn, ctx, n_chunks, max_threads - 1);
    fo_work(fo_pool.generation, fn, ctx, n_chunks, 0);   /* returns once every chunk is claimed */
    fo_wait_done(n_chunks);
    pthread_mutex_unlock(&fo_pool.busy);
}

static int fo_default_threads(void) {
    const char* env = getenv("OMP_NUM_THREADS");
    if (env != NULL) {
        char* end;
        long n = strtol(env, &end, 10);   /* "4" or the first level of "4,2" */
        if (end != env && n > 0 && (*end == '\0' || *end == ',')) return n > 1024 ? 1024 : (int)n;
    }
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

FO_EXPORT int fastopt_pool_get_num_threads(void) {
    int n = atomic_load(&fo_requested);
    if (n > 0) return n;
    n = atomic_load_explicit(&fo_default, memory_order_relaxed);
    if (n == 0) {
        n = fo_default_threads();
        atomic_store(&fo_default, n);
    }
    return n;
}

FO_EXPORT void fastopt_pool_set_num_threads(int n) { atomic_store(&fo_requested, n < 0 ? 0 : n); }

int fo_pool_available(void) { return 1; }

int fo_pool_helpers_awake(void) {
    return fo_pool.n_helpers > 0 && atomic_load_explicit(&fo_pool.sleepers, memory_order_relaxed) == 0;
}

int fo_pool_prewake(int max_threads) {
    if (max_threads <= 1) return 0;
    pthread_once(&fo_pool_once, fo_pool_init);
    if (fo_pool.n_helpers < max_threads - 1) fo_start_helpers(max_threads - 1);
    if (atomic_load(&fo_pool.sleepers) == 0) return 0;   /* every helper spins (or none exists) */
    fo_wake_sleepers(1);
    return 1;
}

void fo_pool_set_helper_delay_us(long us) { atomic_store(&fo_pool.helper_delay_us, us < 0 ? 0 : us); }

void fo_pool_set_helper_chunk_hold_us(long us) {
    atomic_store(&fo_pool.helper_chunk_hold_us, us < 0 ? 0 : us);
}

long fo_pool_helper_chunks_held(void) { return atomic_load(&fo_pool.helper_chunks_held); }

long fo_pool_test_start_delay_ms(void) {
    pthread_once(&fo_pool_once, fo_pool_init);
    return fo_test_start_delay_ms;
}

static _Atomic int64_t fo_probe_ns;

static void fo_probe_chunk(void* ctx, ptrdiff_t chunk, ptrdiff_t n) {
    (void)ctx; (void)chunk; (void)n;
    atomic_store(&fo_probe_ns, fo_now_ns());
}

static int fo_cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

double fo_pool_measure_wake_ns(int rounds) {
    if (rounds < 1) rounds = 1;
    if (rounds > 64) rounds = 64;
    double samples[64];
    pthread_once(&fo_pool_once, fo_pool_init);
    if (pthread_mutex_trylock(&fo_pool.busy) != 0) return -1.0;
    fo_start_helpers(1);
    if (fo_pool.n_helpers < 1) {
        pthread_mutex_unlock(&fo_pool.busy);
        return -1.0;
    }
    int taken = 0;
    for (int r = 0; r < rounds; r++) {
        /* wait (at most ~20 ms) until every helper sleeps, and then a while longer, as after a
         * forward and backward pass: a thread that has slept for a millisecond can take longer
         * to wake than one that has just gone to sleep (its CPU idles deeper; in the KVM guest
         * above, 18-36 us against 12-20) */
        int64_t limit = fo_now_ns() + 20000000;
        while (atomic_load(&fo_pool.sleepers) < fo_pool.n_helpers && fo_now_ns() < limit) {
            struct timespec t = {0, 200000};
            nanosleep(&t, NULL);
        }
        struct timespec asleep = {0, FO_PROBE_ASLEEP_NS};
        nanosleep(&asleep, NULL);
        int64_t start = fo_now_ns();
        fo_publish(fo_probe_chunk, NULL, 1, 1);   /* one chunk, for a helper */
        /* Like any job's chunk, the probe is waited for only once a helper has claimed it: the
         * helper may not be scheduled for a long while, or may have started after the probe was
         * published and so never see it. Past FO_PROBE_WAIT_NS the caller runs it itself, and
         * the sample (about FO_PROBE_WAIT_NS) says that waking a helper costs at least that. */
        int64_t deadline = start + FO_PROBE_WAIT_NS;
        for (unsigned i = 0; (uint32_t)atomic_load(&fo_pool.state) != 0; i++) {
            fo_cpu_relax();
            if ((i & 255) != 255) continue;
            if (fo_now_ns() > deadline) {
                fo_work(fo_pool.generation, fo_probe_chunk, NULL, 1, 0);   /* unless claimed now */
                break;
            }
            if ((i & 4095) == 4095) sched_yield();   /* the helper may need this core */
        }
        fo_wait_done(1);
        samples[taken++] = (double)(atomic_load(&fo_probe_ns) - start);
    }
    pthread_mutex_unlock(&fo_pool.busy);
    qsort(samples, (size_t)taken, sizeof(double), fo_cmp_double);
    return samples[taken / 2];
}
#endif
