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
# of work takes on one thread is followed as steps run. A job goes parallel when it would take more
# than twice the wake-up cost on one thread, or, when the helpers are still awake from a job just
# before (they spin for pool.c's FO_SPIN_NS, 100 us), more than AWAKE_MIN_NS.
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
    # Jobs below this much work never consider helpers (and are not timed either).
    SMALL_WORK = 4096

# -1: decide by measurement; >= 0: set_parallel_min_size's fixed threshold (in work units).
cdef Py_ssize_t _parallel_min_size = -1
# Nanoseconds one unit of work (an element times the kernel's weight) takes on one thread: a
# starting guess, then a running average of the single-threaded jobs that ran.
cdef double _unit_ns = 0.25
# The pool's calibrated wake-up cost (< 0: not measured yet).
cdef double _wake_ns = -1.0


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


def _pool_start_delay_ms():
    """Test hook: the milliseconds every new helper thread sleeps before it starts, as if the OS
    had not scheduled it yet. Set by the environment variable ``FASTOPT_POOL_TEST_START_DELAY_MS``,
    read once when the pool is first used (0: off)."""
    return fo_pool_test_start_delay_ms()


cdef int _threads_for(Py_ssize_t work) noexcept nogil:
    global _wake_ns
    cdef int t = fastopt_pool_get_num_threads() if fo_pool_available() else 1
    if t <= 1:
        return 1
    if _parallel_min_size >= 0:
        return t if work >= _parallel_min_size else 1
    if work < SMALL_WORK:
        return 1
    cdef double estimate = work * _unit_ns
    if fo_pool_helpers_awake():
        return t if estimate >= AWAKE_MIN_NS else 1
    if _wake_ns < 0:
        _wake_ns = fo_pool_measure_wake_ns(5)
        if _wake_ns < 0:
            _wake_ns = 1e9   # no helpers can be had: never wait for one
    return t if estimate >= 2.0 * _wake_ns else 1


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
