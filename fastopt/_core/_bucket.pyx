# The bucket driver: runs any declared algorithm's step over the params of one param group that
# share a dtype.
#
# Layout of one step
# ------------------
# A ``ParamBucket`` gathers its params' data pointers, sizes and prefix offsets once at
# construction (params never move), and keeps each elementwise state buffer ("exp_avg", ...) as one
# contiguous 64-byte-aligned arena of ``total_size`` elements in which param k owns
# ``[offsets[k], offsets[k + 1])``; scalar states (NAdam's ``mu_product``) are one float32 per
# param. A step
#   1. gathers the gradient pointers in C, validating each one (nothing is written before all are
#      checked);
#   2. runs the algorithm's prologue once per array with a gradient: its per-array scalars (bias
#      corrections, step sizes: computed once and reused while arrays share a step count, unless
#      the algorithm keeps scalar state) and its variant, the element loop specialized for its
#      switches;
#   3. cuts the bucket's global element range into chunks (at 16-element boundaries, so no two
#      threads share a cache line) that threads claim (_fastopt_threads), and for every array span
#      in a chunk calls the variant's loop through the kernel table; elementwise updates are
#      therefore bit-identical for any thread count;
#   4. counts the step of every array that had a gradient.
# The hyperparameters arrive as the algorithm's struct, packed by field name when the group was
# checked (fastopt/optimizer.py); nothing is passed by position.
#
# An algorithm that is not elementwise only declares a driver: a subclass of ParamBucket that
# overrides step() (its own file, _driver_<kernel>.pxi, included at the end through the generated
# _drivers.pxi, so it shares this module's internals).
cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from fastopt._core._gather cimport GradPointers, checked_grad
from fastopt._core._kernel_api cimport AlgorithmKernels, KernelTable
from fastopt._core._reduce cimport ArraySet
from fastopt._core._table cimport kernel_table
from fastopt._core._fastopt_threads cimport Plan, plan_for, run_plan, split_point

import numpy as np

cnp.import_array()

cdef enum:
    # Each thread's share is cut at a multiple of this many elements (one 64-byte line of float32).
    SPLIT_ALIGN = 16
    # Most elementwise states an algorithm keeps, and most scalar states.
    MAX_STATE = 8
    MAX_SCALAR_STATE = 4
    # Largest hyperparameter struct, in doubles.
    MAX_HYPER = 64


cdef struct StepJob:
    const AlgorithmKernels* alg
    bint f32
    Py_ssize_t n_arrays
    Py_ssize_t total
    const Py_ssize_t* offsets
    char** params
    char** grads                     # NULL entries: params skipped this step
    char* state[MAX_STATE]           # arena base pointers (NULL: inactive)
    const void* hyper
    const char* per_array
    Py_ssize_t array_size
    const int* variant
    double gmul


cdef inline Py_ssize_t _first_array_at(const Py_ssize_t* offsets, Py_ssize_t n_arrays,
                                       Py_ssize_t pos) noexcept nogil:
    """The array k with offsets[k] <= pos < offsets[k + 1] (the last one if pos is past the end)."""
    cdef Py_ssize_t lo = 0, hi = n_arrays, mid
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if offsets[mid] <= pos:
            lo = mid
        else:
            hi = mid
    return lo


cdef void _run_span(const StepJob* j, Py_ssize_t k, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Apply the step to elements [lo, hi) of array k (local indices)."""
    cdef Py_ssize_t off = j.offsets[k] + lo, s
    cdef float* state32[MAX_STATE]
    cdef double* state64[MAX_STATE]
    cdef const void* arr = j.per_array + k * j.array_size
    if j.f32:
        for s in range(j.alg.n_state):
            state32[s] = (<float*>j.state[s]) + off if j.state[s] != NULL else NULL
        j.alg.loops_f32[j.variant[k]](j.hyper, arr, <float>j.gmul, (<float*>j.params[k]) + lo,
                                      (<const float*>j.grads[k]) + lo, state32, hi - lo)
    else:
        for s in range(j.alg.n_state):
            state64[s] = (<double*>j.state[s]) + off if j.state[s] != NULL else NULL
        j.alg.loops_f64[j.variant[k]](j.hyper, arr, j.gmul, (<double*>j.params[k]) + lo,
                                      (<const double*>j.grads[k]) + lo, state64, hi - lo)


cdef void _step_chunk(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil:
    """Apply the step to this chunk's share of the bucket's global element range."""
    cdef const StepJob* j = <const StepJob*>ctx
    cdef Py_ssize_t start = split_point(j.total, chunk, n_chunks, SPLIT_ALIGN)
    cdef Py_ssize_t stop = split_point(j.total, chunk + 1, n_chunks, SPLIT_ALIGN)
    if start >= stop:
        return
    cdef Py_ssize_t k = _first_array_at(j.offsets, j.n_arrays, start)
    cdef Py_ssize_t a, b
    while k < j.n_arrays and j.offsets[k] < stop:
        if j.grads[k] != NULL:
            a = start if start > j.offsets[k] else j.offsets[k]
            b = stop if stop < j.offsets[k + 1] else j.offsets[k + 1]
            if b > a:
                _run_span(j, k, a - j.offsets[k], b - j.offsets[k])
        k += 1


def _aligned_full(Py_ssize_t n, double fill, dtype):
    """A 1-D array of ``n`` elements set to ``fill`` whose data starts on a 64-byte boundary.

    Vector loads of state then never straddle a cache line (NumPy itself only aligns to 16 bytes).
    """
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n * itemsize + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    arr = raw[start:start + n * itemsize].view(dtype)
    arr.fill(fill)
    return arr


cdef class ParamBucket:
    """The params of one param group that share a dtype, with their optimizer state.

    Parameters
    ----------
    params : list of ndarray
        Validated, C-contiguous, writeable arrays of one dtype (float32 or float64).
    indices : list of int
        For each param, its position in the optimizer's flat list of params (and of grads).
    kernel : int
        The algorithm's index in the kernel table (``fastopt.algorithms.KERNELS`` order).
    state_names : tuple of str
        The algorithm's elementwise states, in declaration order (the kernel's order).
    scalar_states : tuple of (str, float)
        Its scalar states and their initial values.
    lazy_states : tuple of int
        Indices (into ``state_names``) of states whose first write replaces the buffer: a step in
        which one is active marks the array initialized (``first_use`` turns 0).
    """
    cdef readonly object dtype
    cdef readonly Py_ssize_t n_arrays
    cdef readonly Py_ssize_t total_size
    cdef readonly list params
    cdef readonly tuple indices
    cdef readonly dict arenas
    cdef readonly tuple state_names
    cdef readonly tuple scalar_names
    cdef readonly cnp.ndarray steps            # int64 per param: steps taken
    cdef readonly cnp.ndarray initialized      # uint8 per param: lazy state written
    cdef int typenum
    cdef int kernel
    cdef const AlgorithmKernels* alg
    cdef unsigned int lazy_mask
    cdef Py_ssize_t* _offsets
    cdef char** _params
    cdef char** _grads
    cdef char* _per_array
    cdef int* _variant
    cdef Py_ssize_t* _index
    cdef Py_ssize_t _max_index
    cdef char* _state[MAX_STATE]
    cdef float* _scalar[MAX_SCALAR_STATE]

    def __cinit__(self, list params, indices, int kernel, tuple state_names, tuple scalar_states,
                  tuple lazy_states):
        cdef const KernelTable* table = kernel_table()
        if table == NULL:
            raise RuntimeError("fastopt's kernels are not loaded (import fastopt first)")
        if not 0 <= kernel < table.n_algorithms:
            raise ValueError(f"no kernel {kernel}")
        self.alg = &table.algorithms[kernel]
        cdef Py_ssize_t n = len(params)
        self.n_arrays = n
        self._offsets = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self._params = <char**>malloc((n + 1) * sizeof(char*))
        self._grads = <char**>malloc((n + 1) * sizeof(char*))
        self._per_array = <char*>malloc((n + 1) * self.alg.array_size)
        self._variant = <int*>malloc((n + 1) * sizeof(int))
        self._index = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        if (self._offsets == NULL or self._params == NULL or self._grads == NULL
                or self._per_array == NULL or self._variant == NULL or self._index == NULL):
            raise MemoryError()
        memset(self._state, 0, sizeof(self._state))
        memset(self._scalar, 0, sizeof(self._scalar))

    def __dealloc__(self):
        free(self._offsets)
        free(self._params)
        free(self._grads)
        free(self._per_array)
        free(self._variant)
        free(self._index)

    def __init__(self, list params, indices, int kernel, tuple state_names, tuple scalar_states,
                 tuple lazy_states):
        cdef Py_ssize_t k, total = 0
        cdef cnp.ndarray p
        if self.n_arrays == 0:
            raise ValueError("a ParamBucket needs at least one param")
        if len(state_names) != self.alg.n_state or len(scalar_states) != self.alg.n_scalar_state:
            raise ValueError("state names do not match the kernel's states")
        if self.alg.n_state > MAX_STATE or self.alg.n_scalar_state > MAX_SCALAR_STATE:
            raise ValueError("the kernel keeps more states than a bucket holds")
        self.kernel = kernel
        self.state_names = state_names
        self.scalar_names = tuple(name for name, _ in scalar_states)
        self.lazy_mask = 0
        for k in lazy_states:
            self.lazy_mask |= 1u << k
        self.params = list(params)
        self.indices = tuple(int(i) for i in indices)
        if len(self.indices) != self.n_arrays:
            raise ValueError("params and indices differ in length")
        p = <cnp.ndarray>self.params[0]
        self.typenum = cnp.PyArray_TYPE(p)
        if self.typenum != cnp.NPY_FLOAT32 and self.typenum != cnp.NPY_FLOAT64:
            raise TypeError("ParamBucket holds float32 or float64 params only")
        self.dtype = p.dtype
        for k in range(self.n_arrays):
            p = <cnp.ndarray>self.params[k]
            if cnp.PyArray_TYPE(p) != self.typenum or not cnp.PyArray_IS_C_CONTIGUOUS(p) \
                    or not cnp.PyArray_ISWRITEABLE(p):
                raise ValueError("ParamBucket params must be validated first")
            self._params[k] = <char*>cnp.PyArray_DATA(p)
            self._offsets[k] = total
            self._index[k] = self.indices[k]
            if self._index[k] < 0:
                raise ValueError("ParamBucket indices must be >= 0")
            if self._index[k] > self._max_index:
                self._max_index = self._index[k]
            total += cnp.PyArray_SIZE(p)
        self._offsets[self.n_arrays] = total
        self.total_size = total
        self.arenas = {}
        self.steps = np.zeros(self.n_arrays, dtype=np.int64)
        self.initialized = np.zeros(self.n_arrays, dtype=np.uint8)
        for k, (name, init) in enumerate(scalar_states):
            arr = _aligned_full(self.n_arrays, init, np.float32)
            self.arenas[name] = arr
            self._scalar[k] = <float*>cnp.PyArray_DATA(<cnp.ndarray>arr)

    # -- state ---------------------------------------------------------------------------------

    def arena(self, str name, double fill=0.0):
        """The elementwise state arena ``name``, created (filled with ``fill``) on first use."""
        arr = self.arenas.get(name)
        if arr is None:
            if name not in self.state_names:
                raise KeyError(f"{name!r} is not a state of this bucket's algorithm")
            arr = _aligned_full(self.total_size, fill, self.dtype)
            self.arenas[name] = arr
            self._state[self.state_names.index(name)] = <char*>cnp.PyArray_DATA(<cnp.ndarray>arr)
        return arr

    def drop_state(self):
        """Forget every elementwise state and step count (before loading a state dict)."""
        for name in self.state_names:
            self.arenas.pop(name, None)
        memset(self._state, 0, sizeof(self._state))
        self.steps[:] = 0
        self.initialized[:] = 0

    def state_view(self, str name, Py_ssize_t k):
        """Param ``k``'s part of state ``name`` (a view): the param's shape, or () for a scalar."""
        arr = self.arenas[name]
        if name in self.scalar_names:
            return arr[k:k + 1].reshape(())
        return arr[self._offsets[k]:self._offsets[k + 1]].reshape((<object>self.params[k]).shape)

    # -- gathering -----------------------------------------------------------------------------

    cdef Py_ssize_t _gather(self, object grads, bint need_writeable, list keep_alive) except -1:
        """Fill self._grads from the optimizer-wide grads sequence; return the active element count.

        Arrays made from non-ndarray gradients are appended to ``keep_alive``, which the caller
        holds until the kernels have run.
        """
        cdef Py_ssize_t k, active = 0
        cdef object g
        cdef list glist
        cdef tuple gtuple
        if type(grads) is GradPointers:
            return self._gather_pointers(<GradPointers>grads)
        if type(grads) is not list and type(grads) is not tuple:
            grads = tuple(grads)      # list subclasses, iterables: index an exact copy
        if len(grads) <= self._max_index:
            raise ValueError(f"grads has {len(grads)} entries; this param group needs index {self._max_index}")
        if type(grads) is list:
            glist = <list>grads
            for k in range(self.n_arrays):
                g = glist[self._index[k]]
                if g is None:
                    self._grads[k] = NULL
                else:
                    self._grads[k] = checked_grad(g, <cnp.ndarray>self.params[k], self.typenum,
                                                  self._index[k], need_writeable, keep_alive)
                    active += self._offsets[k + 1] - self._offsets[k]
        else:
            gtuple = <tuple>grads
            for k in range(self.n_arrays):
                g = gtuple[self._index[k]]
                if g is None:
                    self._grads[k] = NULL
                else:
                    self._grads[k] = checked_grad(g, <cnp.ndarray>self.params[k], self.typenum,
                                                  self._index[k], need_writeable, keep_alive)
                    active += self._offsets[k + 1] - self._offsets[k]
        return active

    cdef Py_ssize_t _gather_pointers(self, GradPointers grads) except -1:
        """_gather for gradients a front end gathered and validated (fastopt.torch): their sizes and
        dtypes are checked against this bucket's params again, and they must not overlap them."""
        cdef Py_ssize_t k, i, n, active = 0
        cdef char* gp
        cdef char* pp
        cdef Py_ssize_t nbytes
        if grads.n <= self._max_index:
            raise ValueError(f"grads has {grads.n} entries; this param group needs index {self._max_index}")
        for k in range(self.n_arrays):
            i = self._index[k]
            gp = grads.data[i]
            self._grads[k] = gp
            if gp == NULL:
                continue
            n = self._offsets[k + 1] - self._offsets[k]
            if grads.sizes[i] != n or grads.typenums[i] != self.typenum:
                raise ValueError(f"grads[{i}] does not have its param's size and dtype")
            pp = self._params[k]
            nbytes = n * (4 if self.typenum == cnp.NPY_FLOAT32 else 8)
            if nbytes > 0 and gp < pp + nbytes and pp < gp + nbytes:
                raise ValueError(f"grads[{i}] shares memory with its param; pass a separate gradient array")
            active += n
        return active

    def check_grads(self, grads, bint need_writeable=False):
        """Validate this bucket's grads (in ``grads``, the optimizer-wide list) without stepping."""
        return self._gather(grads, need_writeable, [])

    def grads_finite(self, grads):
        """True if every element of this bucket's (non-None) grads is finite."""
        cdef list keep_alive = []
        self._gather(grads, False, keep_alive)
        cdef ArraySet s = ArraySet.__new__(ArraySet)
        s._borrow(self.n_arrays, self._grads, self._offsets, self.typenum)
        return s.all_finite()

    # -- the step --------------------------------------------------------------------------------

    def step(self, grads, bytes hyper, double gmul, tuple active):
        """Apply one update to every param of this bucket that has a gradient.

        Parameters
        ----------
        grads : list or tuple
            The optimizer-wide gradients (this bucket reads its params' entries; None skips one).
        hyper : bytes
            The algorithm's hyperparameter struct, as ``pack_<kernel>`` made it.
        gmul : float
            Every gradient element is multiplied by this first: -1 when maximizing (times a
            clipping coefficient, if any).
        active : tuple of (int, float)
            The elementwise states this group's settings use, with their initial values; missing
            arenas are created before anything is written.
        """
        cdef StepJob j
        cdef list keep_alive = []
        cdef double hyper_buf[MAX_HYPER]
        cdef Py_ssize_t s
        cdef bint mark_lazy = False
        cdef Py_ssize_t n_active = self._begin_step(grads, hyper, active, keep_alive, hyper_buf,
                                                    &mark_lazy)
        memset(&j, 0, sizeof(j))
        j.alg = self.alg
        j.f32 = self.typenum == cnp.NPY_FLOAT32
        j.n_arrays = self.n_arrays
        j.total = self.total_size
        j.offsets = self._offsets
        j.params = self._params
        j.grads = self._grads
        for s, _ in active:
            j.state[s] = self._state[s]
        j.hyper = hyper_buf
        j.per_array = self._per_array
        j.array_size = self.alg.array_size
        j.variant = self._variant
        j.gmul = gmul
        cdef int64_t* steps = <int64_t*>cnp.PyArray_DATA(self.steps)
        cdef uint8_t* initialized = <uint8_t*>cnp.PyArray_DATA(self.initialized)
        with nogil:
            self._prepare(hyper_buf, steps, initialized)
            run_plan(plan_for(self.total_size, n_active, self.alg.weight, SPLIT_ALIGN),
                     _step_chunk, &j)
            self._count_step(steps, initialized, mark_lazy)

    cdef Py_ssize_t _begin_step(self, grads, bytes hyper, tuple active, list keep_alive,
                                double* hyper_buf, bint* mark_lazy) except -1:
        """What every step does before writing anything: gather and validate the gradients
        (returning the active element count), check and copy the hyperparameter struct into
        ``hyper_buf`` (MAX_HYPER doubles), create the arenas of the active states, and tell whether
        one of them is lazy."""
        cdef Py_ssize_t n_active = self._gather(grads, False, keep_alive)
        cdef Py_ssize_t s
        if len(hyper) != self.alg.hyper_size or self.alg.hyper_size > MAX_HYPER * <Py_ssize_t>sizeof(double):
            raise ValueError("hyper does not hold this kernel's hyperparameter struct")
        mark_lazy[0] = False
        for s, fill in active:
            if self._state[s] == NULL:
                self.arena(self.state_names[s], fill)
            if self.lazy_mask & (1u << s):
                mark_lazy[0] = True
        memcpy(hyper_buf, <const char*>hyper, self.alg.hyper_size)
        return n_active

    cdef void _count_step(self, int64_t* steps, uint8_t* initialized, bint mark_lazy) noexcept nogil:
        """Count the step of every array that had a gradient (and mark lazy state written);
        ``steps`` and ``initialized`` are the data of ``self.steps`` and ``self.initialized``."""
        cdef Py_ssize_t k
        for k in range(self.n_arrays):
            if self._grads[k] != NULL:
                steps[k] += 1
                if mark_lazy:
                    initialized[k] = 1

    cdef void _prepare(self, const void* hyper, const int64_t* steps,
                       const uint8_t* initialized) noexcept nogil:
        """Run the prologue of every array with a gradient (see the module's design note)."""
        cdef Py_ssize_t k, size = self.alg.array_size, last = -1
        cdef int64_t step
        cdef int first
        cdef bint reuse = self.alg.n_scalar_state == 0
        cdef char* out
        for k in range(self.n_arrays):
            if self._grads[k] == NULL:
                continue
            step = steps[k] + 1
            first = initialized[k] == 0
            out = self._per_array + k * size
            if reuse and last >= 0 and step == steps[last] + 1 and first == (initialized[last] == 0):
                memcpy(out, self._per_array + last * size, size)
                self._variant[k] = self._variant[last]
            elif self.typenum == cnp.NPY_FLOAT32:
                self._variant[k] = self.alg.prepare_f32(hyper, <double>step, first, self._scalar, k, out)
            else:
                self._variant[k] = self.alg.prepare_f64(hyper, <double>step, first, self._scalar, k, out)
            last = k


# The compiled drivers of the algorithms that declare one (generated from fastopt/algorithms).
include "_drivers.pxi"
