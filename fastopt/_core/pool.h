/* fastopt's thread pool: runs a job's chunks on the calling thread and on helper threads that claim
 * them, so that a helper the OS has not scheduled costs nothing.
 *
 * A job is `n_chunks` calls fn(ctx, chunk, n_chunks). The caller publishes it and then claims and
 * runs chunks itself, like every helper: a chunk is claimed with one compare-and-swap on a word
 * holding (job generation, next chunk), so a helper that wakes up late, or after the job is done,
 * claims nothing. The caller waits only for chunks another thread has actually claimed (and is
 * running). With a fork-join team (OpenMP), a step on a busy machine waits at the barrier for a
 * worker that has not been scheduled yet: ~8 ms instead of ~8 us measured here with two busy
 * processes on 2 cores.
 *
 * Helpers spin for a short while after a job (back-to-back jobs find them awake), then sleep on a
 * condition variable. A caller that knows a large job is coming can wake them first
 * (fo_pool_prewake): their wake-up, tens of microseconds, then overlaps the caller's own work
 * before the job (an optimizer step validates its gradients), and the job starts without a system
 * call. The caller never waits for them: it starts on the chunks at once, and a helper that is
 * still waking claims whatever is left when it runs. Only one job runs at a time; a caller that
 * finds the pool busy (another Python thread's step) runs its job on its own thread. After fork(), the child starts with no
 * helpers (they are recreated on demand).
 *
 * Threads: fastopt_pool_set_num_threads(0) means the default: OMP_NUM_THREADS if set, else the
 * CPUs this process may run on. Both symbols are exported for threadpoolctl (fastopt/_threadpool.py).
 */
#ifndef FASTOPT_POOL_H
#define FASTOPT_POOL_H

#include <stddef.h>

typedef void (*fo_chunk_fn)(void* ctx, ptrdiff_t chunk, ptrdiff_t n_chunks);

/* A helper spins this long (ns) after a job, or after fo_pool_prewake woke it, before it sleeps:
 * back-to-back jobs (a training loop's steps over several param groups, a norm then a scale, steps
 * with little else between them) find it awake. */
#define FO_POOL_SPIN_NS 100000

/* Run every chunk of the job on up to `max_threads` threads (the caller included). */
void fo_pool_run(fo_chunk_fn fn, void* ctx, ptrdiff_t n_chunks, int max_threads);

/* The thread count large jobs use (the setting, or the default for 0). */
int fastopt_pool_get_num_threads(void);
void fastopt_pool_set_num_threads(int n);
/* Whether this build has helper threads at all (POSIX threads). */
int fo_pool_available(void);
/* Whether helpers exist and none sleeps (they spin for a while after a job, or were just woken
 * by fo_pool_prewake): publishing a job then costs no system call, and they join it within a
 * microsecond (or, still waking, as soon as the OS runs them). */
int fo_pool_helpers_awake(void);
/* Wake the helpers a job of up to `max_threads` threads (the caller included) would use, starting
 * them if needed, so that a job published soon finds them spinning; they go back to sleep after
 * the usual spin if none comes. From its return fo_pool_helpers_awake() is true, even before the
 * OS has run them. Returns 1 if it woke sleeping helpers (a system call), 0 if there was nothing
 * to do (every helper spins already: one atomic load, or max_threads <= 1). */
int fo_pool_prewake(int max_threads);

/* Test hooks (0: off; they cost nothing when off):
 * - a helper sleeps `us` after it wakes for a job, before it claims a chunk, as if the OS had not
 *   scheduled it;
 * - a helper sleeps `us` between claiming each chunk and running it, as if preempted there (so
 *   the caller finishes first and must wait for it); fo_pool_helper_chunks_held counts them;
 * - the environment variable FASTOPT_POOL_TEST_START_DELAY_MS, read once when the pool is first
 *   used, makes every new helper sleep that long before it starts (it then ignores the job
 *   running at that moment); fo_pool_test_start_delay_ms returns it. */
void fo_pool_set_helper_delay_us(long us);
void fo_pool_set_helper_chunk_hold_us(long us);
long fo_pool_helper_chunks_held(void);
long fo_pool_test_start_delay_ms(void);

/* Calibration: nanoseconds from publishing a job to a sleeping helper claiming a chunk, measured
 * on `rounds` jobs (the median); negative if there are no helpers. A helper that has not claimed
 * the probe within 10 ms is not waited for: the caller runs the probe, and the sample is ~10 ms. */
double fo_pool_measure_wake_ns(int rounds);

#endif /* FASTOPT_POOL_H */
