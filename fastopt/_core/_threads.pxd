# Thread control for the drivers: how many threads a piece of work gets, and running it.

# Process chunk ``chunk`` of ``n_chunks`` equal parts of a job (the job is ``ctx``).
ctypedef void (*chunk_fn)(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil

cdef int threads_for(Py_ssize_t n, int weight) noexcept nogil
cdef void run_chunks(chunk_fn fn, void* ctx, Py_ssize_t n_chunks) noexcept nogil
cdef Py_ssize_t split_point(Py_ssize_t n, Py_ssize_t part, Py_ssize_t parts, Py_ssize_t align) noexcept nogil
