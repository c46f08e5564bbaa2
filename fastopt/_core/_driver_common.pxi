# What the compiled drivers share (included into _bucket.pyx through the generated _drivers.pxi):
#
# * ShapedStateBucket: a ParamBucket that also lays out states whose shape is a function of the
#   param's shape (Adafactor's row and column statistics): one 64-byte-aligned arena per state,
#   param k owning [offset[k], offset[k + 1]) of it, nothing for a param without that state.
# * Work items: a driver cuts its arrays into items whose bounds depend on the shapes alone (never
#   on the thread count), gives each item its own partial results and combines the partials in item
#   order, so its reductions are bit-identical for any thread count, like the generic reductions.
#   run_items() runs items on the pool, each chunk a contiguous range of items.
# * The kernel table's reductions (16 float64 accumulators in a fixed order, compiled for the
#   chosen instruction set) through _sumsq().
from fastopt._core._kernel_api cimport RED_SUMSQ
from fastopt._core._fastopt_threads cimport chunk_fn
from libc.stdlib cimport calloc, abort
from libc.math cimport sqrt, pow, exp, log, fabs   # a driver's per_array may call them

ctypedef fused real_t:
    float
    double

cdef enum:
    # A work item of a driver holds about this many elements: enough that claiming one costs
    # nothing next to it, few enough that both threads get several of a 512 x 512 matrix.
    ITEM_ELEMENTS = 65536


cdef inline double _sumsq(const KernelTable* table, bint f32, const char* x,
                          Py_ssize_t n) noexcept nogil:
    """The sum of squares of x[0:n] (float32 or float64), in float64, in the table's fixed order."""
    if n <= 0:
        return 0.0
    return table.reduce(ST_F32 if f32 else ST_F64, RED_SUMSQ, 0.0, x, n)


cdef double* _f64_zeros(list keep_alive, Py_ssize_t n) except NULL:
    """A zeroed float64 buffer of n (at least 1) elements, kept alive by ``keep_alive``."""
    arr = np.zeros(max(1, n), dtype=np.float64)
    keep_alive.append(arr)
    return <double*>cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef void run_items(Py_ssize_t n_items, Py_ssize_t elements, int weight, chunk_fn fn,
                    void* job) noexcept nogil:
    """Run ``fn`` over ``n_items`` work items covering ``elements`` elements, on the pool when the
    work is worth it; chunk c of n is items [split_point(n_items, c, n), split_point(..., c + 1, n))."""
    if n_items <= 0:
        return
    cdef Plan plan = plan_for(elements, elements, weight, 1)
    plan.n_chunks = n_items if n_items < 512 else 512
    run_plan(plan, fn, job)


cdef class ShapedStateBucket(ParamBucket):
    """A ParamBucket that also keeps states whose shape is a function of the param's shape.

    ``set_state_shapes({name: [shape or None per param]})`` (called once, after construction)
    declares them; ``arena``/``state_view`` then lay them out and view them (``state_view`` is None
    for a param without that state).
    """
    cdef readonly dict state_shapes
    cdef Py_ssize_t* _shape_offsets[MAX_STATE]     # per loop state: n_arrays + 1 offsets, or NULL
    cdef Py_ssize_t _shape_total[MAX_STATE]

    def __dealloc__(self):
        cdef int s
        for s in range(MAX_STATE):
            free(self._shape_offsets[s])

    def set_state_shapes(self, dict shapes):
        cdef Py_ssize_t k, s, total
        if self.state_shapes is not None:
            raise RuntimeError("state shapes are already set")
        checked = {}
        for name, per_param in shapes.items():
            s = self.state_names.index(name)
            per_param = tuple(None if shape is None else tuple(int(d) for d in shape)
                              for shape in per_param)
            if len(per_param) != self.n_arrays:
                raise ValueError(f"state {name!r} needs one shape per param")
            self._shape_offsets[s] = <Py_ssize_t*>malloc((self.n_arrays + 1) * sizeof(Py_ssize_t))
            if self._shape_offsets[s] == NULL:
                raise MemoryError()
            total = 0
            for k in range(self.n_arrays):
                self._shape_offsets[s][k] = total
                if per_param[k] is not None:
                    total += int(np.prod(per_param[k], dtype=np.int64))
            self._shape_offsets[s][self.n_arrays] = total
            self._shape_total[s] = total
            checked[name] = per_param
        self.state_shapes = checked

    def arena(self, str name, double fill=0.0):
        if self.state_shapes is None or name not in self.state_shapes:
            return ParamBucket.arena(self, name, fill)
        arr = self.arenas.get(name)
        if arr is None:
            s = self.state_names.index(name)
            arr = _aligned_full(self._shape_total[s], fill, self.state_like)
            self.arenas[name] = arr
            self._state[s] = <char*>cnp.PyArray_DATA(<cnp.ndarray>arr)
        return arr

    def state_view(self, str name, Py_ssize_t k):
        if self.state_shapes is None or name not in self.state_shapes:
            return ParamBucket.state_view(self, name, k)
        shape = self.state_shapes[name][k]
        if shape is None:
            return None
        cdef Py_ssize_t s = self.state_names.index(name)
        return self.arenas[name][self._shape_offsets[s][k]:self._shape_offsets[s][k + 1]].reshape(shape)

    cdef inline char* shaped(self, Py_ssize_t s, Py_ssize_t k) noexcept nogil:
        """Param k's part of shaped state s (its arena must exist)."""
        return self._state[s] + self._shape_offsets[s][k] * self.state_size


# ----------------------------------------------------------------------------------------------
# One phase of an element loop over one whole array, on the pool
# ----------------------------------------------------------------------------------------------

cdef struct PhaseJob:
    const AlgorithmKernels* alg
    int config                # the storage configuration (float32 or float64 throughout)
    int itemsize
    const void* hyper
    const void* scalars       # the array's per-array scalars
    int loop                  # index into the kernel's loop table (variant + phase)
    double gmul
    char* p
    const char* g
    char* state[MAX_STATE]    # base pointers (NULL: not used by the phase)
    Py_ssize_t n


cdef void _phase_chunk(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil:
    cdef const PhaseJob* j = <const PhaseJob*>ctx
    cdef Py_ssize_t lo = split_point(j.n, chunk, n_chunks, SPLIT_ALIGN)
    cdef Py_ssize_t hi = split_point(j.n, chunk + 1, n_chunks, SPLIT_ALIGN)
    cdef char* state[MAX_STATE]
    cdef int s
    if lo >= hi:
        return
    for s in range(MAX_STATE):
        state[s] = j.state[s] + lo * j.itemsize if j.state[s] != NULL else NULL
    j.alg.loops[j.config][j.loop](j.hyper, j.scalars, j.gmul, j.p + lo * j.itemsize,
                                  j.g + lo * j.itemsize, state, NULL, hi - lo, 0, lo)


cdef void run_phase(PhaseJob* job) noexcept nogil:
    """Run ``job`` (one phase over n elements) in chunks on the pool, as the generic step does."""
    run_plan(plan_for(job.n, job.n, job.alg.weight, SPLIT_ALIGN), _phase_chunk, job)


# LAMB's and LARS's shared driver (the trust ratio of bitsandbytes' 32-bit LAMB and LARS)
include "_driver_trust_ratio.pxi"
