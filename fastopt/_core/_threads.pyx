# Threads: how many a step uses, and the parallel region that runs a job's chunks.
#
# A job is cut into as many equal chunks as it gets threads; chunk c always covers the same
# elements, so elementwise results do not depend on the thread count, and reductions combine
# their per-block partials in block order. OpenMP runs the chunks (threads.h: chunk c on thread
# c); without OpenMP everything runs on the calling thread.
cdef extern from "threads.h":
    int fo_has_openmp() noexcept nogil
    int fo_omp_max_threads() noexcept nogil
    void fo_run_chunks(chunk_fn fn, void* ctx, Py_ssize_t n_chunks) noexcept nogil

# 0 means "follow OpenMP" (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl).
cdef int _requested_threads = 0
# A job whose work is below this runs on the calling thread: waking a thread team (~2 us here)
# costs more than the work it would share. Work is elements times the kernel's weight, so a
# compute-heavy Adam step goes parallel at ~8k elements and a light SGD step at ~25k; measured on
# a 2-core Xeon, where these are where 2 threads start to win.
cdef Py_ssize_t _parallel_min_size = 24576


def has_openmp():
    """True if fastopt was built with OpenMP."""
    return bool(fo_has_openmp())


def set_num_threads(int n):
    """Use ``n`` threads for large steps; ``0`` restores the OpenMP default (``OMP_NUM_THREADS``)."""
    global _requested_threads
    if n < 0:
        raise ValueError(f"num_threads must be >= 0, got {n}")
    _requested_threads = n


def get_num_threads():
    """The number of threads a large step uses now."""
    return _effective_threads()


def set_parallel_min_size(Py_ssize_t n):
    """Jobs with less work than ``n`` run on one thread (``0``: always use the thread team).

    Work is the number of elements times the kernel's weight: 1 for SGD, clipping and the
    finiteness check, 2 for RMSprop and Adagrad, 3 for Adam/AdamW (a square root and two
    divisions per element); each algorithm declares its weight.
    """
    global _parallel_min_size
    if n < 0:
        raise ValueError(f"parallel_min_size must be >= 0, got {n}")
    _parallel_min_size = n


def get_parallel_min_size():
    return _parallel_min_size


cdef inline int _effective_threads() noexcept nogil:
    if not fo_has_openmp():
        return 1
    if _requested_threads > 0:
        return _requested_threads
    return fo_omp_max_threads()


cdef int threads_for(Py_ssize_t n, int weight) noexcept nogil:
    """Threads to use for ``n`` elements of a kernel of the given work weight."""
    cdef Py_ssize_t work = n * weight
    if work < _parallel_min_size:
        return 1
    cdef int t = _effective_threads()
    # Never give a thread less than about half the threshold.
    cdef Py_ssize_t useful = work // (_parallel_min_size // 2 + 1) + 1
    if useful < t:
        t = <int>useful
    return t if t > 0 else 1


cdef Py_ssize_t split_point(Py_ssize_t n, Py_ssize_t part, Py_ssize_t parts,
                            Py_ssize_t align) noexcept nogil:
    """Start of share ``part`` of ``parts`` of [0, n), cut at a multiple of ``align``."""
    if part >= parts:
        return n
    cdef Py_ssize_t cut = <Py_ssize_t>((<double>n * part) / parts)
    cut -= cut % align
    return cut


cdef void run_chunks(chunk_fn fn, void* ctx, Py_ssize_t n_chunks) noexcept nogil:
    """Run fn(ctx, c, n_chunks) for every chunk c, one chunk per thread when n_chunks > 1."""
    fo_run_chunks(fn, ctx, n_chunks)
