# What LAMB's and LARS's drivers share (_driver_lamb.pxi, _driver_lars.pxi; the algorithms are
# declared in fastopt/algorithms/lamb.py and lars.py): a step whose update d of each param is scaled
# by the trust ratio of bitsandbytes' 32-bit LAMB and LARS,
#     s = min(1, max_unorm ||p|| / ||d||)   (1 when max_unorm is 0 or the test below fails on NaN),
# with ||p|| taken before the step and ||d|| after the states are updated, both over the whole
# param. The ratio needs every element of a param before any of it is written, so a step with
# max_unorm > 0 makes two passes over memory, each through the declaration's generated loops:
#   1. (phase moment) per work item, a block of elements at a time: the block's sum of squares of
#      p, the loop (states updated; its p is a scratch block: LAMB writes d there, LARS reads a
#      copy of p there for its weight decay and keeps d in its momentum buffer), the block's sum
#      of squares of d;
#   .  per param: both norms (float64 sums in item order, then rounded to the param's dtype, as
#      torch's norms of float32 tensors are) and s, into the per-array scalar coef (the subclass
#      multiplies its step size by s);
#   2. (phase apply) the update with coef, the loop reading one state through g (gmul 1: LARS's B;
#      LAMB's m, to recompute d from its moments, cheaper than a buffer as large as the param).
# With max_unorm = 0 there is nothing to measure: one pass (phase fused) with s = 1.
# Items (ranges of TR_ITEM_ELEMENTS elements of one param) and blocks depend on the shapes alone,
# and every partial sum is combined in item and block order, so a step is bit-identical for any
# thread count. The sums of squares are the kernel table's reductions (float64).


cdef enum:
    # A work item's elements, and a block's (a scratch block of LAMB's d stays in L1/L2 cache
    # between the loop that writes it and the reduction that reads it).
    TR_ITEM_ELEMENTS = ITEM_ELEMENTS
    TR_BLOCK_ELEMENTS = 2048


cdef struct TrItem:
    Py_ssize_t k              # the param
    Py_ssize_t start, stop    # its elements [start, stop)


cdef struct TrJob:
    int phase                 # the phase index this pass runs (added to each array's variant)
    bint measure              # pass 1: take the sums of squares of p and d
    bint apply                # pass 2 (phase apply)
    Py_ssize_t n_items
    const TrItem* items
    const KernelTable* table
    const AlgorithmKernels* alg
    int config                # the storage configuration of the element loops
    bint f32
    int itemsize
    int n_state
    int measured_state        # the loop state holding d (LARS), or -1: d goes to scratch via p
    int apply_state           # the loop state phase apply reads through g
    char** params
    char** grads
    const Py_ssize_t* offsets
    char* state[MAX_STATE]    # arena base pointers (NULL: inactive)
    const void* hyper
    char* per_array
    Py_ssize_t array_size
    const int* variant
    double gmul
    double* psq               # per item: sum of squares of p
    double* dsq               # per item: sum of squares of d


cdef void _tr_block(const TrJob* j, Py_ssize_t k, Py_ssize_t first, Py_ssize_t n, char* scratch,
                    double* psq, double* dsq) noexcept nogil:
    """Elements [first, first + n) of param k through this pass's loop (and, when measuring,
    their sums of squares added to psq and dsq; the param is not written then)."""
    cdef char* state[MAX_STATE]
    cdef Py_ssize_t s, at = (j.offsets[k] + first) * j.itemsize
    cdef char* p = j.params[k] + first * j.itemsize
    cdef const char* g = j.grads[k] + first * j.itemsize
    cdef double gmul = j.gmul
    for s in range(j.n_state):
        state[s] = j.state[s] + at if j.state[s] != NULL else NULL
    if j.measure:
        psq[0] += _sumsq(j.table, j.f32, p, n)
        if j.measured_state >= 0:
            # LARS reads p (its weight decay) and the loop stores it unchanged: into the scratch
            # block (in cache), not back into the param's memory
            memcpy(scratch, p, n * j.itemsize)
        p = scratch
    elif j.apply:
        g = state[j.apply_state]
        gmul = 1.0
    j.alg.loops[j.config][j.variant[k] + j.phase](
        j.hyper, j.per_array + k * j.array_size, gmul, p, g, state, NULL, n, 0, first)
    if j.measure:
        dsq[0] += _sumsq(j.table, j.f32, p if j.measured_state < 0 else state[j.measured_state], n)


cdef void _tr_chunk(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil:
    """Items [split_point(n_items, chunk), split_point(n_items, chunk + 1)) of the job's pass."""
    cdef const TrJob* j = <const TrJob*>ctx
    cdef Py_ssize_t lo = split_point(j.n_items, chunk, n_chunks, 1)
    cdef Py_ssize_t hi = split_point(j.n_items, chunk + 1, n_chunks, 1)
    cdef Py_ssize_t item, at, n
    cdef const TrItem* it
    cdef double psq, dsq
    cdef char* scratch = NULL
    if lo >= hi:
        return
    if j.measure:
        scratch = <char*>calloc(TR_BLOCK_ELEMENTS, j.itemsize)
        if scratch == NULL:
            abort()   # a block of memory could not be had: nothing sensible is left to do
    for item in range(lo, hi):
        it = &j.items[item]
        if j.grads[it.k] == NULL:
            continue
        psq = 0.0
        dsq = 0.0
        at = it.start
        while at < it.stop:
            n = it.stop - at if it.stop - at < TR_BLOCK_ELEMENTS else TR_BLOCK_ELEMENTS
            _tr_block(j, it.k, at, n, scratch, &psq, &dsq)
            at += n
        if j.measure:
            j.psq[item] = psq
            j.dsq[item] = dsq
    free(scratch)


cdef class TrustRatioBucket(ParamBucket):
    """The generic bucket's gathering and bookkeeping, with the trust ratio's two passes (see the
    top of this file). A subclass names its phases' indices, the loop state holding d and the one
    phase apply reads through g, and
    reads its own structs: max_unorm from the hyperparameters, and coef = (its step size) * s into
    the per-array scalars."""
    cdef TrItem* _items
    cdef Py_ssize_t _n_items
    cdef Py_ssize_t* _first_item  # per param (and one past the last): its items' range
    cdef list _buffers          # the partial sums' buffers
    cdef TrJob _job
    cdef int _phase_moment, _phase_apply, _phase_fused
    cdef int _measured_state
    cdef int _apply_state

    def __dealloc__(self):
        free(self._items)
        free(self._first_item)

    def __init__(self, BucketSpec spec not None):
        ParamBucket.__init__(self, spec)
        self._lay_out()

    cdef double _max_unorm(self, const void* hyper) noexcept nogil:
        return 0.0

    cdef void _set_coef(self, Py_ssize_t k, double scale) noexcept nogil:
        pass

    cdef _lay_out(self):
        """Cut every param into work items (from the sizes alone), and fill in the job."""
        cdef Py_ssize_t k, start, n, count = 0
        for k in range(self.n_arrays):
            n = self._offsets[k + 1] - self._offsets[k]
            count += (n + TR_ITEM_ELEMENTS - 1) // TR_ITEM_ELEMENTS
        self._items = <TrItem*>calloc(max(1, count), sizeof(TrItem))
        self._first_item = <Py_ssize_t*>calloc(self.n_arrays + 1, sizeof(Py_ssize_t))
        if self._items == NULL or self._first_item == NULL:
            raise MemoryError()
        self._n_items = 0
        for k in range(self.n_arrays):
            self._first_item[k] = self._n_items
            n = self._offsets[k + 1] - self._offsets[k]
            for start in range(0, n, TR_ITEM_ELEMENTS):
                self._items[self._n_items].k = k
                self._items[self._n_items].start = start
                self._items[self._n_items].stop = min(start + TR_ITEM_ELEMENTS, n)
                self._n_items += 1
        self._first_item[self.n_arrays] = self._n_items
        cdef TrJob* j = &self._job
        memset(j, 0, sizeof(TrJob))
        buffers = []
        j.n_items, j.items = self._n_items, self._items
        j.table = kernel_table()
        j.alg = self.alg
        j.config = self.config_same
        j.f32 = self.storage == ST_F32
        j.itemsize = 4 if j.f32 else 8
        j.n_state = self.alg.n_state
        j.params, j.grads, j.offsets = self._params, self._grads, self._offsets
        j.per_array, j.array_size, j.variant = self._per_array, self.alg.array_size, self._variant
        j.psq, j.dsq = _f64_zeros(buffers, self._n_items), _f64_zeros(buffers, self._n_items)
        self._buffers = buffers

    cdef void _scale(self, Py_ssize_t k, double max_unorm) noexcept nogil:
        """After pass 1: param k's trust ratio, into its coef."""
        cdef const TrJob* j = &self._job
        cdef double psq = 0.0, dsq = 0.0, p_norm, d_norm, limit, scale = 1.0
        cdef Py_ssize_t item
        for item in range(self._first_item[k], self._first_item[k + 1]):
            psq = psq + j.psq[item]
            dsq = dsq + j.dsq[item]
        if j.f32:
            p_norm = <double>(<float>sqrt(psq))
            d_norm = <double>(<float>sqrt(dsq))
        else:
            p_norm = sqrt(psq)
            d_norm = sqrt(dsq)
        limit = max_unorm * p_norm
        if d_norm > limit:       # (False when a norm is NaN: bitsandbytes' test, kept)
            scale = limit / d_norm
        self._set_coef(k, scale)

    def step(self, grads, PackedHyperparameters hyper not None, double gmul, tuple active):
        """One step over the params that have a gradient (see ParamBucket.step)."""
        cdef list keep_alive = []
        cdef double hyper_buf[MAX_HYPER]
        cdef bint mark_lazy
        cdef Py_ssize_t k, s, n_active = self._begin_step(grads, hyper, active, keep_alive,
                                                          hyper_buf, &mark_lazy)
        cdef TrJob* j = &self._job
        cdef double max_unorm
        cdef int64_t* steps = <int64_t*>cnp.PyArray_DATA(self.steps)
        cdef uint8_t* initialized = <uint8_t*>cnp.PyArray_DATA(self.initialized)
        cdef uint8_t* master_ready = <uint8_t*>cnp.PyArray_DATA(self.master_ready)   # (no master here)
        j.hyper = hyper_buf
        j.gmul = gmul
        j.measured_state = self._measured_state
        j.apply_state = self._apply_state
        for s in range(MAX_STATE):
            j.state[s] = NULL
        for s, _ in active:
            j.state[s] = self._state[s]
        with nogil:
            self._prepare(hyper_buf, steps, initialized, master_ready)
            max_unorm = self._max_unorm(hyper_buf)
            if max_unorm > 0:
                j.phase, j.measure, j.apply = self._phase_moment, True, False
                run_items(self._n_items, n_active, self.alg.weight, _tr_chunk, j)
                for k in range(self.n_arrays):
                    if self._grads[k] != NULL:
                        self._scale(k, max_unorm)
                j.phase, j.measure, j.apply = self._phase_apply, False, True
            else:
                for k in range(self.n_arrays):
                    if self._grads[k] != NULL:
                        self._set_coef(k, 1.0)
                j.phase, j.measure, j.apply = self._phase_fused, False, False
            run_items(self._n_items, n_active, self.alg.weight, _tr_chunk, j)
            j.hyper = NULL
            self._count_step(steps, initialized, mark_lazy)
