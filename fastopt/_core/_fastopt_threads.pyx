# Threads: how a job is cut into chunks, how many threads run it, and running it.
#
# (The module's file name starts with "_fastopt_threads" so that threadpoolctl can find it among the
# loaded libraries: fastopt/_threadpool.py registers a controller for it.)
#
# A job of n elements is cut into chunks that depend on n alone, never on the thread count, so
# elementwise results are bit-identical for any number of threads, and reductions, which combine
# per-block partials in block order, too. The chunks run on fastopt's pool (pool.c): the calling
# thread claims and runs chunks alongside the helpers and waits only for chunks a helper actually
# claimed, so a helper the OS has not scheduled (a busy machine) never stalls a step.
#
# Whether a job is worth helpers is measured, not assumed: the pool's wake-up cost (publishing a job
# to sleeping helpers until one runs a chunk) is calibrated once per process, and the time a unit
# of work takes on one thread is followed as steps run. A job goes parallel when it would take
# COLD_WAKES times the wake-up cost on one thread, or, when the helpers are still awake from a job
# just before (they spin for pool.h's FO_POOL_SPIN_NS, 100 us) or were woken ahead of it, more
# than AWAKE_MIN_NS.
#
# An optimizer step wakes the helpers ahead of its jobs (prewake(), as step() starts): the wake-up
# then runs while the step validates its gradients, the step's jobs find the helpers awake (the
# AWAKE_MIN_NS rule), and the caller starts on the chunks at once, so a helper that is still
# waking costs nothing but the chunks it does not take. How large a step must be for that depends
# on how often the wake-up is paid:
# * steps that follow each other closer than the helpers' spin (back to back: an optimizer stepped
#   in a loop, or after little other work) keep them awake once woken, so one wake-up serves every
#   later step, and the step is worth waking them for if it is worth sharing with awake helpers
#   (AWAKE_MIN_NS). Without this, a step on one thread leaves them asleep, and so every later step
#   too, however well two threads would do;
# * steps further apart (a forward and backward pass between them) find the helpers asleep each
#   time and pay the whole wake-up each time, on the caller's side too (the wake's system call,
#   ~10 us in a KVM guest): they wake them from COLD_WAKES wake-ups' worth of work, the rule of a
#   job that finds the helpers asleep.
from libc.stdint cimport int64_t

cdef extern from "pool.h":
    ctypedef void (*fo_chunk_fn)(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil
    void fo_pool_run(fo_chunk_fn fn, void* ctx, Py_ssize_t n_chunks, int max_threads) noexcept nogil
    int fastopt_pool_get_num_threads() noexcept nogil
    void fastopt_pool_set_num_threads(int n) noexcept nogil
    int fo_pool_available() noexcept nogil
    int fo_pool_helpers_awake() noexcept nogil
    void fo_pool_set_helper_delay_us(long us) noexcept nogil
    void fo_pool_set_helper_chunk_hold_us(long us) noexcept nogil
    long fo_pool_helper_chunks_held() noexcept nogil
    long fo_pool_test_start_delay_ms() noexcept nogil
    int fo_pool_prewake(int max_threads) noexcept nogil
    enum: FO_POOL_SPIN_NS
    double fo_pool_measure_wake_ns(int rounds) noexcept nogil

cdef extern from *:
    """
    #include <time.h>
    static long long fo_clock_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
    }
    """
    long long fo_clock_ns() noexcept nogil

cdef enum:
    # A chunk holds about this much work (elements times weight; ~1-2 us on one core, measured
    # with SGD and Adam steps on the development machine, an AMD EPYC with AVX-512, December
    # 2026), a job at most MAX_CHUNKS of them: claiming a chunk costs an atomic operation, and a
    # helper preempted in the middle of a chunk delays the step by what is left of that chunk.
    CHUNK_WORK = 16384
    MAX_CHUNKS = 512
    # When the helpers spin, a job this long on one thread is worth sharing.
    AWAKE_MIN_NS = 4000
    # When they sleep, a job worth this many wake-ups (calibrated) on one thread. Measured on the
    # development machine (AMD EPYC, KVM guest, 2 vCPUs, December 2026) with 1 ms of other work
    # between Adam steps, so that each step found the helpers asleep (calibrated wake-up 20-60 us,
    # ~31 in this run): two threads took 1.48x the one-thread time at 1e5 elements (48 us on one
    # thread), 1.09-1.22x at 2e5 (85 us), 0.83x at 3e5 (150 us), 0.86x at 4e5 (178 us). A helper
    # woken for the job runs its chunks slower than the caller (its core cold, the data in the
    # caller's cache), and the caller waits for its last one.
    COLD_WAKES = 4
    # Jobs below this much work never consider helpers (and are not timed either).
    SMALL_WORK = 4096
    # Steps below this much work never wake the helpers ahead (prewake): ~22,000 Adam elements take
    # a few us on one thread, less than any wake-up from sleep (a futex wake and a context switch,
    # 10-50 us measured), and the wake's system call would cost the caller a microsecond or two.
    PREWAKE_MIN_WORK = 65536

#: An optimizer whose step has less work than this (elements times the kernel's weight) need not
#: call prewake(): it would do nothing.
PREWAKE_MIN = PREWAKE_MIN_WORK

# -1: decide by measurement; >= 0: set_parallel_min_size's fixed threshold (in work units).
cdef Py_ssize_t _parallel_min_size = -1
# Nanoseconds one unit of work (an element times the kernel's weight) takes on one thread: a
# starting guess, then a running average of the single-threaded jobs that ran.
cdef double _unit_ns = 0.25
# The pool's calibrated wake-up cost (< 0: not measured yet).
cdef double _wake_ns = -1.0
# When the last optimizer step large enough for prewake() started (fo_clock_ns), and its
# one-thread estimate: how far apart steps come.
cdef long long _last_step_ns = 0
cdef double _last_step_estimate = 0.0


def has_threads():
    """True if this build runs large jobs on helper threads (POSIX threads)."""
    return bool(fo_pool_available())


def set_num_threads(int n):
    """Use ``n`` threads for large jobs; ``0`` restores the default (``OMP_NUM_THREADS``, else the
    CPUs this process may use)."""
    if n < 0:
        raise ValueError(f"num_threads must be >= 0, got {n}")
    fastopt_pool_set_num_threads(n)


def get_num_threads():
    """The number of threads a large job uses now."""
    return fastopt_pool_get_num_threads() if fo_pool_available() else 1


def set_parallel_min_size(Py_ssize_t n):
    """Jobs with less work than ``n`` run on one thread (``0``: always use the helpers; ``-1``:
    decide by measurement, the default).

    Work is the number of elements times the kernel's weight (1 for SGD, clipping and the
    finiteness check, 2 for RMSprop and Adagrad, 3 for Adam: each algorithm declares its weight).
    """
    global _parallel_min_size
    if n < -1:
        raise ValueError(f"parallel_min_size must be >= -1, got {n}")
    _parallel_min_size = n


def get_parallel_min_size():
    return _parallel_min_size


def calibration():
    """What the thread decision is based on: ``{"wake_ns", "unit_ns", "helpers_awake"}``."""
    return {"wake_ns": _wake_ns, "unit_ns": _unit_ns, "helpers_awake": bool(fo_pool_helpers_awake())}


def recalibrate():
    """Measure the pool's wake-up cost again (a few ms); return :func:`calibration`."""
    global _wake_ns
    with nogil:
        _wake_ns = fo_pool_measure_wake_ns(5)
    if _wake_ns < 0:
        _wake_ns = 1e9
    return calibration()


def _set_helper_delay_us(long us):
    """Test hook: helpers sleep ``us`` microseconds after waking for a job, before claiming any of
    it, as if the OS had not scheduled them."""
    fo_pool_set_helper_delay_us(us)


def _set_helper_chunk_hold_us(long us):
    """Test hook: a helper sleeps ``us`` microseconds between claiming each chunk and running it,
    as if preempted there, so the calling thread runs out of chunks first and has to wait for it
    (0: off)."""
    fo_pool_set_helper_chunk_hold_us(us)


def _helper_chunks_held():
    """Test hook: how many chunks helpers have held back under :func:`_set_helper_chunk_hold_us`
    (that is, claimed while it was on) in this process."""
    return fo_pool_helper_chunks_held()


def _decide_threads(Py_ssize_t work):
    """Test hook: how many threads a job of ``work`` units (elements times the kernel's weight)
    would run on if it started now (the decision of every job, from the helpers' state)."""
    return _threads_for(work)


def _wake_helpers():
    """Test hook: wake the helpers for the thread count set now, whatever the work to come (what
    :func:`prewake` does once it has decided); True if some were asleep."""
    return fo_pool_prewake(fastopt_pool_get_num_threads() if fo_pool_available() else 1) != 0


def _pool_start_delay_ms():
    """Test hook: the milliseconds every new helper thread sleeps before it starts, as if the OS
    had not scheduled it yet. Set by the environment variable ``FASTOPT_POOL_TEST_START_DELAY_MS``,
    read once when the pool is first used (0: off)."""
    return fo_pool_test_start_delay_ms()


cdef inline double _calibrated_wake_ns() noexcept nogil:
    """The pool's wake-up cost, measured on first use."""
    global _wake_ns
    if _wake_ns < 0:
        _wake_ns = fo_pool_measure_wake_ns(5)
        if _wake_ns < 0:
            _wake_ns = 1e9   # no helpers can be had: never wait for one
    return _wake_ns


cdef int _threads_for(Py_ssize_t work) noexcept nogil:
    cdef int t = fastopt_pool_get_num_threads() if fo_pool_available() else 1
    if t <= 1:
        return 1
    if _parallel_min_size >= 0:
        return t if work >= _parallel_min_size else 1
    if work < SMALL_WORK:
        return 1
    cdef double estimate = work * _unit_ns
    if fo_pool_helpers_awake():   # spinning after a job, or woken by prewake()
        return t if estimate >= AWAKE_MIN_NS else 1
    return t if estimate >= COLD_WAKES * _calibrated_wake_ns() else 1


def prewake(Py_ssize_t work):
    """Wake the pool's helpers ahead of an optimizer step of ``work`` units (elements times the
    kernel's weight) if they sleep and the step is worth them (see the module's head: AWAKE_MIN_NS
    of work on one thread when steps come back to back, COLD_WAKES wake-ups' worth otherwise).

    Call it once per step as the step starts, before validating anything: the wake-up then
    overlaps that, and the step's jobs find the helpers awake. Returns True if it woke sleeping
    helpers (a system call); otherwise it did nothing (one thread, a small step, helpers already
    awake, a step not worth them). Results never depend on it: only the thread count of the jobs
    that follow does.
    """
    global _last_step_ns, _last_step_estimate
    cdef double wake_ns = _wake_ns
    cdef double estimate = work * _unit_ns
    cdef long long now
    if work < PREWAKE_MIN_WORK:
        return False
    now = fo_clock_ns()
    # back to back: this step starts before helpers woken for the last one would have slept again
    cdef bint back_to_back = now - _last_step_ns < FO_POOL_SPIN_NS + _last_step_estimate
    _last_step_ns = now
    _last_step_estimate = estimate
    cdef int t = fastopt_pool_get_num_threads() if fo_pool_available() else 1
    if t <= 1 or fo_pool_helpers_awake():
        return False
    if _parallel_min_size >= 0:
        if work < _parallel_min_size:
            return False
    else:
        if wake_ns < 0:
            with nogil:   # the first large step of the process measures it (a few ms)
                wake_ns = _calibrated_wake_ns()
        if estimate < (AWAKE_MIN_NS if back_to_back else COLD_WAKES * wake_ns):
            return False
    return fo_pool_prewake(t) != 0


cdef Plan plan_for(Py_ssize_t n, Py_ssize_t active, int weight, Py_ssize_t unit) noexcept nogil:
    """How to run a job over ``n`` elements (``active`` of them to work on) of a kernel of the given
    weight, cut at multiples of ``unit`` elements. How the job is cut changes no result."""
    cdef Plan plan
    cdef Py_ssize_t per_chunk = CHUNK_WORK // (weight if weight > 0 else 1)
    per_chunk = (per_chunk + unit - 1) // unit if unit > 0 else per_chunk
    if per_chunk < 1:
        per_chunk = 1
    cdef Py_ssize_t units = (n + unit - 1) // unit if unit > 0 else n
    plan.work = active * weight
    plan.threads = _threads_for(plan.work)
    plan.n_chunks = (units + per_chunk - 1) // per_chunk
    if plan.n_chunks > MAX_CHUNKS:
        plan.n_chunks = MAX_CHUNKS
    if plan.n_chunks < 1:
        plan.n_chunks = 1
    return plan


cdef void run_plan(Plan plan, chunk_fn fn, void* ctx) noexcept nogil:
    """Run every chunk of the plan; single-threaded jobs also refine the unit-cost estimate."""
    global _unit_ns
    cdef long long start
    cdef double unit
    cdef Py_ssize_t c
    if plan.threads > 1:
        fo_pool_run(<fo_chunk_fn>fn, ctx, plan.n_chunks, plan.threads)
        return
    if plan.work < SMALL_WORK:
        for c in range(plan.n_chunks):
            fn(ctx, c, plan.n_chunks)
        return
    start = fo_clock_ns()
    for c in range(plan.n_chunks):
        fn(ctx, c, plan.n_chunks)
    unit = <double>(fo_clock_ns() - start) / plan.work
    if 0.01 < unit < 100.0:   # an interrupted run says nothing about the machine
        _unit_ns = 0.9 * _unit_ns + 0.1 * unit


cdef Py_ssize_t split_point(Py_ssize_t n, Py_ssize_t part, Py_ssize_t parts,
                            Py_ssize_t align) noexcept nogil:
    """Start of share ``part`` of ``parts`` of [0, n), cut at a multiple of ``align``."""
    if part >= parts:
        return n
    cdef Py_ssize_t cut = <Py_ssize_t>((<double>n * part) / parts)
    cut -= cut % align
    return cut
