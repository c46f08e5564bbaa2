# Adafactor's driver (fastopt/algorithms/adafactor.py declares the algorithm): what makes Adafactor
# more than an element loop, i.e. the row and column sums of squares of g, the norms of p and of
# the update, and the small statistics in between. Everything elementwise runs through the
# declaration's generated loops (phases moment_norm, norm, apply and factor).
#
# One step, for the arrays of a bucket that have a gradient, in three passes over memory:
#   A. (p, g read)  the sum of squares of p per item; for a factored param, each row's sum of
#      squares of g and each item's column sums (float64 partials, one set per item);
#   .  per array: alpha from RMS(p); per matrix, the column sums (item partials added in item
#      order), the row and column means of g^2 rounded where torch rounds (the norm to the dtype,
#      then squared, then divided: torch's norm(g, dim).square_().div_(n)), R and C lerped toward
#      them (phase factor), and the clamped mean of R;
#   B. (g read)     u = g / sqrt(max(v, eps1^2)) into a scratch row (phase norm, with the row's
#                   estimate R_r C / mean(R) rounded as torch's matmul and div_ round it; for a
#                   vector, phase moment_norm also updates v) and its sum of squares per item;
#   .  per array: coef = -alpha / max(1, RMS(u) / d), into the per-array scalars;
#   C. (p, g read, p written)  the update (phase apply), recomputing u as pass B did; or, when
#      the bucket holds at most U_CACHE_ELEMENTS elements, pass B keeps u in a bucket-sized buffer
#      and pass C reads it (phase apply_u: p, u read, p written). u costs a square root and two
#      divisions per element, and the divider is what bounds passes B and C.
# Items (rows of one matrix, or a range of a vector, ITEM_ELEMENTS elements or so) depend on the
# shapes alone and every partial is combined in item order, so a step is bit-identical for any
# thread count. Sums of squares are float64 (the kernel table's reduction); torch sums in the
# param's dtype, so the norms agree with torch's to about an ulp of that dtype.
#
# A param without elements is counted but left alone (torch divides by its zero size and raises).


cdef enum:
    # Buckets up to this many elements keep u between passes B and C (16 MiB in float32): a param's
    # size in scratch, as torch's own step allocates (twice) for its estimate and update.
    U_CACHE_ELEMENTS = 1 << 22


cdef struct AfArray:
    Py_ssize_t matrices       # factored: the matrices (product of the leading dims); 0: a vector
    Py_ssize_t rows, cols     # of each matrix; a vector is 1 x numel
    Py_ssize_t numel
    Py_ssize_t first_item, n_items
    Py_ssize_t first_row      # its first row in the job's row sums
    Py_ssize_t first_matrix   # its first matrix in the job's per-matrix means


cdef struct AfItem:
    Py_ssize_t k              # the array
    Py_ssize_t matrix         # factored: which matrix; its rows [start, stop)
    Py_ssize_t start, stop    # vector: its elements [start, stop)
    Py_ssize_t col_partials   # factored: offset of its column sums in the job's partials


cdef struct AfJob:
    int stage                 # 0: pass A, 1: pass B, 2: pass C
    Py_ssize_t n_items
    const KernelTable* table
    const AlgorithmKernels* alg
    int config                # the storage configuration of the element loops
    bint f32
    int itemsize
    const AfArray* arrays
    const AfItem* items
    char** params
    char** grads
    char** row_var            # per array: its part of each shaped state (NULL: none)
    char** col_var
    char** variance
    int s_row, s_col, s_var   # their indices among the loop states
    const void* hyper
    char* per_array
    Py_ssize_t array_size
    const int* variant
    double gmul
    Py_ssize_t max_cols       # longest row (or vector item): the scratch rows' length
    double* psq               # per item: sum of squares of p
    double* usq               # per item: sum of squares of u
    double* rowsq             # per row of every factored array
    double* col_partials      # per factored item: one sum per column
    double* row_mean          # per matrix: max(mean(R), eps1)
    double* alpha             # per array
    char* u_cache             # u of every element, laid out as the bucket's arenas (NULL: none)
    const Py_ssize_t* offsets # the bucket's offsets (the cache's layout)


cdef inline void* _af_scalars(const AfJob* j, Py_ssize_t k) noexcept nogil:
    return j.per_array + k * j.array_size


cdef inline void _af_run(const AfJob* j, Py_ssize_t k, int phase, double gmul, char* p,
                         const char* g, char** state, Py_ssize_t n) noexcept nogil:
    """Run phase ``phase`` of array k's element loop over n elements."""
    j.alg.loops[j.config][j.variant[k] + phase](j.hyper, _af_scalars(j, k), gmul, p, g, state, NULL,
                                                 n, 0, 0)


cdef inline const real_t* _af_scaled(const real_t* g, real_t gmul, real_t* out,
                                     Py_ssize_t n) noexcept nogil:
    """g times gmul, rounded as the element loops round it (g itself when gmul is 1)."""
    cdef Py_ssize_t i
    if gmul == 1:
        return g
    for i in range(n):
        out[i] = gmul * g[i]
    return out


cdef inline void _af_estimate_row(real_t row, const real_t* col, real_t mean, real_t* out,
                                  Py_ssize_t n) noexcept nogil:
    """torch's (R @ C).div_(mean(R)) for one row: each product and the quotient rounded.

    For float32 the quotient is (double)v * (1.0 / mean) rounded to float, which is the float
    quotient v / mean exactly: the quotient of two floats is never a midpoint between floats and
    lies at least 2**-48 (relatively) away from one, while the double product is within about
    2**-52 of the quotient. A division costs as much as the rest of a pass here (the divider is
    the bottleneck: sqrt and division per element in passes B and C already).
    """
    cdef Py_ssize_t i
    cdef real_t v
    cdef double inverse
    if real_t is float:
        inverse = 1.0 / <double>mean
        for i in range(n):
            v = row * col[i]
            out[i] = <float>(<double>v * inverse)
    else:
        for i in range(n):
            v = row * col[i]
            out[i] = v / mean


cdef void _af_pass_a_item(const AfJob* j, Py_ssize_t item, real_t* scratch) noexcept nogil:
    cdef const AfItem* it = &j.items[item]
    cdef const AfArray* a = &j.arrays[it.k]
    cdef const real_t* p = <const real_t*>j.params[it.k]
    cdef const real_t* g = <const real_t*>j.grads[it.k]
    cdef Py_ssize_t C = a.cols, r, c, row
    cdef double* cols
    cdef const real_t* gr
    cdef double x
    if a.matrices == 0:
        j.psq[item] = _sumsq(j.table, j.f32, <const char*>(p + it.start), it.stop - it.start)
        return
    row = it.matrix * a.rows + it.start
    j.psq[item] = _sumsq(j.table, j.f32, <const char*>(p + row * C), (it.stop - it.start) * C)
    cols = j.col_partials + it.col_partials
    for c in range(C):
        cols[c] = 0.0
    for r in range(it.stop - it.start):
        gr = _af_scaled(g + (row + r) * C, <real_t>j.gmul, scratch, C)
        j.rowsq[a.first_row + row + r] = _sumsq(j.table, j.f32, <const char*>gr, C)
        for c in range(C):
            x = <double>gr[c]
            cols[c] = cols[c] + x * x


cdef void _af_pass_bc_item(const AfJob* j, Py_ssize_t item, bint apply, real_t* scratch) noexcept nogil:
    """Pass B (u and its sum of squares) or, with ``apply``, pass C (the update) for one item."""
    cdef const AfItem* it = &j.items[item]
    cdef const AfArray* a = &j.arrays[it.k]
    cdef Py_ssize_t k = it.k, C = a.cols, r, row, first, count
    cdef char* state[MAX_STATE]
    cdef real_t* estimate = scratch
    cdef char* u
    cdef const real_t* R
    cdef const real_t* Cv
    cdef real_t mean
    cdef double usq = 0.0
    memset(state, 0, sizeof(state))
    first = it.start if a.matrices == 0 else (it.matrix * a.rows + it.start) * C
    count = (it.stop - it.start) * (1 if a.matrices == 0 else C)
    if apply and j.u_cache != NULL:     # pass B left u in the cache: the update alone
        _af_run(j, k, ADAFACTOR_PHASE_APPLY_U, 1.0, j.params[k] + first * j.itemsize,
                j.u_cache + (j.offsets[k] + first) * j.itemsize, state, count)
        return
    if a.matrices == 0:
        state[j.s_var] = j.variance[k] + first * j.itemsize
        if apply:
            _af_run(j, k, ADAFACTOR_PHASE_APPLY, j.gmul, j.params[k] + first * j.itemsize,
                    j.grads[k] + first * j.itemsize, state, count)
        else:
            u = _af_u(j, k, first, scratch)
            _af_run(j, k, ADAFACTOR_PHASE_MOMENT_NORM, j.gmul, u, j.grads[k] + first * j.itemsize,
                    state, count)
            j.usq[item] = _sumsq(j.table, j.f32, u, count)
        return
    R = (<const real_t*>j.row_var[k]) + it.matrix * a.rows
    Cv = (<const real_t*>j.col_var[k]) + it.matrix * C
    mean = <real_t>j.row_mean[a.first_matrix + it.matrix]
    state[j.s_var] = <char*>estimate
    for r in range(it.start, it.stop):
        row = (it.matrix * a.rows + r) * C
        _af_estimate_row(R[r], Cv, mean, estimate, C)
        if apply:
            _af_run(j, k, ADAFACTOR_PHASE_APPLY, j.gmul, j.params[k] + row * j.itemsize,
                    j.grads[k] + row * j.itemsize, state, C)
        else:
            u = _af_u(j, k, row, scratch)
            _af_run(j, k, ADAFACTOR_PHASE_NORM, j.gmul, u, j.grads[k] + row * j.itemsize, state, C)
            usq = usq + _sumsq(j.table, j.f32, u, C)
    if not apply:
        j.usq[item] = usq


cdef inline char* _af_u(const AfJob* j, Py_ssize_t k, Py_ssize_t first, real_t* scratch) noexcept nogil:
    """Where pass B writes u of array k from element ``first`` on: the cache, or a scratch row."""
    if j.u_cache != NULL:
        return j.u_cache + (j.offsets[k] + first) * j.itemsize
    return <char*>(scratch + j.max_cols)


cdef void _af_chunk(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil:
    """Items [split_point(n_items, chunk), split_point(n_items, chunk + 1)) of the job's stage."""
    cdef const AfJob* j = <const AfJob*>ctx
    cdef Py_ssize_t lo = split_point(j.n_items, chunk, n_chunks, 1)
    cdef Py_ssize_t hi = split_point(j.n_items, chunk + 1, n_chunks, 1)
    cdef Py_ssize_t item
    if lo >= hi:
        return
    cdef char* scratch = <char*>calloc(2 * j.max_cols + 1, j.itemsize)
    if scratch == NULL:
        abort()   # two rows of memory could not be had: nothing sensible is left to do
    for item in range(lo, hi):
        if j.grads[j.items[item].k] == NULL:
            continue
        if j.stage == 0:
            if j.f32:
                _af_pass_a_item[float](j, item, <float*>scratch)
            else:
                _af_pass_a_item[double](j, item, <double*>scratch)
        elif j.f32:
            _af_pass_bc_item[float](j, item, j.stage == 2, <float*>scratch)
        else:
            _af_pass_bc_item[double](j, item, j.stage == 2, <double*>scratch)
    free(scratch)


cdef void _af_statistics(AfJob* j, Py_ssize_t k, double* col_sums, real_t* means) noexcept nogil:
    """After pass A: array k's alpha and, for a factored array, R, C and max(mean(R), eps1)."""
    cdef const AfArray* a = &j.arrays[k]
    cdef const adafactor_hyper* h = <const adafactor_hyper*>j.hyper
    cdef const adafactor_array* s = <const adafactor_array*>_af_scalars(j, k)
    cdef Py_ssize_t R = a.rows, C = a.cols, m, r, c, item
    cdef const AfItem* it
    cdef char* no_state[MAX_STATE]
    cdef double total = 0.0, x
    cdef real_t n, mean, floor
    cdef real_t* Rm
    cdef real_t* Cm
    for item in range(a.first_item, a.first_item + a.n_items):
        total = total + j.psq[item]
    # torch: max(eps2, p.norm(2).item() / p.numel() ** 0.5) * rho_t, the norm in p's dtype
    x = <double>(<real_t>sqrt(total)) / pow(<double>a.numel, 0.5)
    j.alpha[k] = (x if x > h.eps2 else h.eps2) * s.rho
    if a.matrices == 0:
        return
    memset(no_state, 0, sizeof(no_state))
    floor = <real_t>s.eps1_value
    for m in range(a.matrices):
        # columns: torch.norm(g, dim=-2).square_().div_(rows), then C.lerp_(that, w)
        for c in range(C):
            col_sums[c] = 0.0
        for item in range(a.first_item, a.first_item + a.n_items):
            it = &j.items[item]
            if it.matrix == m:
                for c in range(C):
                    col_sums[c] = col_sums[c] + j.col_partials[it.col_partials + c]
        for c in range(C):
            n = <real_t>sqrt(col_sums[c])
            n = n * n
            means[c] = n / <real_t>R
        Cm = (<real_t*>j.col_var[k]) + m * C
        _af_run(j, k, ADAFACTOR_PHASE_FACTOR, 1.0, <char*>Cm, <const char*>means, no_state, C)
        # rows: torch.norm(g, dim=-1).square_().div_(cols), then R.lerp_(that, w)
        for r in range(R):
            n = <real_t>sqrt(j.rowsq[a.first_row + m * R + r])
            n = n * n
            means[r] = n / <real_t>C
        Rm = (<real_t*>j.row_var[k]) + m * R
        _af_run(j, k, ADAFACTOR_PHASE_FACTOR, 1.0, <char*>Rm, <const char*>means, no_state, R)
        # R.mean(dim=-2).clamp_(min=eps1): the sum rounded to the dtype, divided, NaN kept
        total = 0.0
        for r in range(R):
            total = total + <double>Rm[r]
        mean = <real_t>total
        mean = mean / <real_t>R
        j.row_mean[a.first_matrix + m] = <double>(floor if mean < floor else mean)


cdef void _af_coefficient(AfJob* j, Py_ssize_t k) noexcept nogil:
    """After pass B: coef = -alpha / max(1, RMS(u) / d) into array k's scalars."""
    cdef const AfArray* a = &j.arrays[k]
    cdef const adafactor_hyper* h = <const adafactor_hyper*>j.hyper
    cdef adafactor_array* s = <adafactor_array*>_af_scalars(j, k)
    cdef double total = 0.0, x
    cdef Py_ssize_t item
    for item in range(a.first_item, a.first_item + a.n_items):
        total = total + j.usq[item]
    if j.f32:
        x = <double>(<float>sqrt(total))
    else:
        x = sqrt(total)
    x = x / (pow(<double>a.numel, 0.5) * h.d)
    s.coef = -j.alpha[k] / (x if x > 1.0 else 1.0)


cdef class AdafactorBucket(ShapedStateBucket):
    """The bucket of fastopt.Adafactor: the generic bucket's gathering and bookkeeping, the
    factored statistics laid out by ShapedStateBucket, and the three passes described at the top
    of this file."""
    cdef AfArray* _arrays
    cdef AfItem* _items
    cdef Py_ssize_t _n_items, _n_rows, _n_matrices, _n_col_partials, _max_cols, _max_stat
    cdef int _s_row, _s_col, _s_var
    cdef list _buffers          # the partial results' buffers (allocated once, by _lay_out)
    cdef AfJob _job             # the step's job, its buffers and layout filled in by _lay_out
    cdef double* _col_sums
    cdef char* _means

    def __dealloc__(self):
        free(self._arrays)
        free(self._items)

    def set_state_shapes(self, dict shapes):
        ShapedStateBucket.set_state_shapes(self, shapes)
        self._s_row = self.state_names.index("row_var")
        self._s_col = self.state_names.index("col_var")
        self._s_var = self.state_names.index("variance")
        self._lay_out()

    cdef _lay_out(self):
        """Cut every array into work items (from the shapes alone)."""
        cdef Py_ssize_t k, m, start, per
        cdef AfArray* a
        items = []
        self._arrays = <AfArray*>calloc(self.n_arrays, sizeof(AfArray))
        if self._arrays == NULL:
            raise MemoryError()
        for k in range(self.n_arrays):
            shape = tuple((<object>self.params[k]).shape)
            nd = len(shape)
            a = &self._arrays[k]
            a.numel = cnp.PyArray_SIZE(<cnp.ndarray>self.params[k])
            a.first_item = len(items)
            if nd >= 2:
                a.matrices = int(np.prod(shape[:nd - 2], dtype=np.int64))
                a.rows, a.cols = shape[nd - 2], shape[nd - 1]
                a.first_row = self._n_rows
                a.first_matrix = self._n_matrices
                self._n_rows += a.matrices * a.rows
                self._n_matrices += a.matrices
                self._max_stat = max(self._max_stat, a.rows, a.cols)
                if a.numel:
                    self._max_cols = max(self._max_cols, a.cols)
                    per = max(1, ITEM_ELEMENTS // a.cols)
                    for m in range(a.matrices):
                        for start in range(0, a.rows, per):
                            items.append((k, m, start, min(start + per, a.rows), self._n_col_partials))
                            self._n_col_partials += a.cols
            else:
                a.matrices, a.rows, a.cols = 0, 1, a.numel
                for start in range(0, a.numel, ITEM_ELEMENTS):
                    items.append((k, 0, start, min(start + ITEM_ELEMENTS, a.numel), 0))
                    self._max_cols = max(self._max_cols, min(a.numel - start, ITEM_ELEMENTS))
            a.n_items = len(items) - a.first_item
        self._n_items = len(items)
        self._items = <AfItem*>calloc(max(1, self._n_items), sizeof(AfItem))
        if self._items == NULL:
            raise MemoryError()
        for i, (k, m, start, stop, cols) in enumerate(items):
            self._items[i].k, self._items[i].matrix = k, m
            self._items[i].start, self._items[i].stop = start, stop
            self._items[i].col_partials = cols
        # everything a step needs besides its hyperparameters, gradients and state pointers
        cdef AfJob* j = &self._job
        cdef list buffers = []
        j.table = kernel_table()
        j.alg = self.alg
        j.config = self.config_same
        j.f32 = self.storage == ST_F32
        j.itemsize = 4 if j.f32 else 8
        j.arrays, j.items, j.n_items = self._arrays, self._items, self._n_items
        j.params, j.grads = self._params, self._grads
        j.s_row, j.s_col, j.s_var = self._s_row, self._s_col, self._s_var
        j.per_array, j.array_size, j.variant = self._per_array, self.alg.array_size, self._variant
        j.max_cols = self._max_cols
        j.offsets = self._offsets
        if self.total_size <= U_CACHE_ELEMENTS:
            cache = _aligned_full(self.total_size, 0.0, self.state_like)
            buffers.append(cache)
            j.u_cache = <char*>cnp.PyArray_DATA(<cnp.ndarray>cache)
        j.psq, j.usq = _f64_zeros(buffers, self._n_items), _f64_zeros(buffers, self._n_items)
        j.rowsq, j.row_mean = _f64_zeros(buffers, self._n_rows), _f64_zeros(buffers, self._n_matrices)
        j.col_partials = _f64_zeros(buffers, self._n_col_partials)
        j.alpha = _f64_zeros(buffers, self.n_arrays)
        pointers = np.zeros(3 * self.n_arrays, dtype=np.uintp)
        buffers.append(pointers)
        j.row_var = <char**>cnp.PyArray_DATA(<cnp.ndarray>pointers)
        j.col_var, j.variance = j.row_var + self.n_arrays, j.row_var + 2 * self.n_arrays
        self._col_sums = _f64_zeros(buffers, self._max_stat)
        means = np.zeros(max(1, self._max_stat), dtype=self.dtype)
        buffers.append(means)
        self._means = <char*>cnp.PyArray_DATA(<cnp.ndarray>means)
        self._buffers = buffers

    def step(self, grads, PackedHyperparameters hyper not None, double gmul, tuple active):
        """One Adafactor step over the arrays that have a gradient (see ParamBucket.step)."""
        cdef list keep_alive = []
        cdef double hyper_buf[MAX_HYPER]
        cdef bint mark_lazy
        cdef Py_ssize_t k, n_active = self._begin_step(grads, hyper, active, keep_alive, hyper_buf,
                                                       &mark_lazy)
        cdef AfJob* j = &self._job
        cdef int stage
        cdef int64_t* steps = <int64_t*>cnp.PyArray_DATA(self.steps)
        cdef uint8_t* initialized = <uint8_t*>cnp.PyArray_DATA(self.initialized)
        cdef uint8_t* master_ready = <uint8_t*>cnp.PyArray_DATA(self.master_ready)   # (no master here)
        if self._arrays == NULL:
            raise RuntimeError("AdafactorBucket.set_state_shapes() was never called")
        j.hyper = hyper_buf
        j.gmul = gmul
        for k in range(self.n_arrays):   # (the arenas exist now; load_state_dict replaces them)
            if self._arrays[k].matrices:
                j.row_var[k] = self.shaped(self._s_row, k)
                j.col_var[k] = self.shaped(self._s_col, k)
            else:
                j.variance[k] = self.shaped(self._s_var, k)
        with nogil:
            self._prepare(hyper_buf, steps, initialized, master_ready)
            for stage in range(3):
                j.stage = stage
                run_items(self._n_items, n_active, self.alg.weight, _af_chunk, j)
                for k in range(self.n_arrays):
                    if self._grads[k] == NULL or self._arrays[k].numel == 0:
                        continue
                    if stage == 0:
                        if j.f32:
                            _af_statistics[float](j, k, self._col_sums, <float*>self._means)
                        else:
                            _af_statistics[double](j, k, self._col_sums, <double*>self._means)
                    elif stage == 1:
                        _af_coefficient(j, k)
            j.hyper = NULL
            self._count_step(steps, initialized, mark_lazy)
