# Thread control for the drivers: how a job is cut into chunks, how many threads run it, and running
# it on fastopt's pool (pool.c).

# Process chunk ``chunk`` of ``n_chunks`` parts of a job (the job is ``ctx``).
ctypedef void (*chunk_fn)(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil

cdef struct Plan:
    Py_ssize_t n_chunks      # the job's parts (results never depend on how it is cut)
    int threads              # how many threads may claim them (the caller included)
    Py_ssize_t work          # active elements times the kernel's weight

cdef Plan plan_for(Py_ssize_t n, Py_ssize_t active, int weight, Py_ssize_t unit) noexcept nogil
cdef void run_plan(Plan plan, chunk_fn fn, void* ctx) noexcept nogil
cdef Py_ssize_t split_point(Py_ssize_t n, Py_ssize_t part, Py_ssize_t parts, Py_ssize_t align) noexcept nogil
