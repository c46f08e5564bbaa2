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
#      checked), and picks each array's storage configuration (its gradient may be stored as its
#      param, or in float32 for a half-precision param);
#   2. runs the algorithm's prologue once per array with a gradient: its per-array scalars (bias
#      corrections, step sizes: computed once and reused while arrays share a step count, unless
#      the algorithm keeps scalar state) and its variant, the element loop specialized for its
#      switches;
#   3. cuts the bucket's global element range into chunks (at 16-element boundaries, so no two
#      threads share a cache line) that threads claim (_fastopt_threads), and for every array span
#      in a chunk calls the loop of its configuration and variant through the kernel table;
#      elementwise updates are therefore bit-identical for any thread count;
#   4. counts the step of every array that had a gradient.
# The hyperparameters arrive as the algorithm's struct, packed by field name when the group was
# checked (fastopt/optimizer.py), in a handle that names the kernel it was packed for
# (_contracts.PackedHyperparameters), and a bucket is built from a BucketSpec given by name: nothing
# is passed by position.
#
# An algorithm that is not elementwise only declares a driver: a subclass of ParamBucket that
# overrides step() (its own file, _driver_<kernel>.pxi, included at the end through the generated
# _drivers.pxi, so it shares this module's internals).
#
# Half precision
# --------------
# bfloat16/float16 params are computed in float32. Without a master copy their states are kept in
# the param's dtype and every value is rounded once, when it is stored (as torch's fused CPU
# kernels do); bfloat16 stores may round stochastically, with random bits that depend only on the
# seed, the param's index, its step count and the element's index (any thread count gives the same
# bits). With a master copy ("master", float32 per element, made from the param at its first
# step), the loop updates the master and the states exactly as a float32 run would, and writes the
# param as the master rounded to nearest, ties to even.
cimport cython
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from fastopt._core._contracts cimport BucketSpec, PackedHyperparameters
from fastopt._core._gather cimport GradPointers, checked_grad, storage_code
from fastopt._core._kernel_api cimport (
    AlgorithmKernels, KernelTable, ST_F32, ST_F64, ST_BF16, ST_F16, Q8_BLOCK, Q8_ABSMAX)
from fastopt._core._reduce cimport ArraySet
from fastopt._core._table cimport kernel_table
from fastopt._core._fastopt_threads cimport Plan, plan_for, run_plan, split_point

import numpy as np

from fastopt._core._bf16 import BF16Array, bf16_bits
from fastopt._core._dynamic_map import MAPS, search_code

cnp.import_array()

cdef enum:
    # Each thread's share is cut at a multiple of this many elements (one 64-byte line of float32).
    SPLIT_ALIGN = 16
    # Most elementwise states an algorithm keeps, and most scalar states.
    MAX_STATE = 8
    MAX_SCALAR_STATE = 4
    # Largest hyperparameter struct, in doubles.
    MAX_HYPER = 64

# a loop finds its 8-bit states' absmax pointers after MAX_STATE state pointers (_storage.h)
if Q8_ABSMAX != MAX_STATE:
    raise ImportError("q8.h's FO_Q8_ABSMAX must equal _bucket.pyx's MAX_STATE; rebuild fastopt")


cdef struct StepJob:
    const AlgorithmKernels* alg
    Py_ssize_t n_arrays
    Py_ssize_t total
    const Py_ssize_t* offsets
    char** params
    char** grads                     # NULL entries: params skipped this step
    const int* config                # per array: its storage configuration
    const int* grad_size             # per array: bytes per gradient element
    int param_size                   # bytes per param element
    int state_size                   # bytes per state element
    char* state[MAX_STATE]           # arena base pointers (NULL: inactive)
    float* absmax[MAX_STATE]         # 8-bit states: their blocks' absmax arenas
    const Py_ssize_t* block_offsets  # 8-bit states: per array, its first block (NULL: not 8-bit)
    float* master                    # float32 master copies (NULL: none)
    const uint64_t* sr_key           # per array: the stochastic-rounding stream of this step
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
    """Apply the step to elements [lo, hi) of array k (local indices). With 8-bit states, to the
    whole blocks that start in [lo, hi) instead: a block is requantized as a whole, by the one
    span its first element falls in, so any split into chunks gives the same bits."""
    cdef Py_ssize_t n, s
    if j.block_offsets != NULL:
        n = j.offsets[k + 1] - j.offsets[k]
        lo = (lo + Q8_BLOCK - 1) // Q8_BLOCK * Q8_BLOCK
        hi = (hi + Q8_BLOCK - 1) // Q8_BLOCK * Q8_BLOCK
        if hi > n:
            hi = n
        if lo >= hi:
            return
    cdef Py_ssize_t off = j.offsets[k] + lo
    # the states' pointers, then (8-bit states) their absmax pointers: q8.h's FO_Q8_ABSMAX
    cdef char* state[2 * MAX_STATE]
    for s in range(j.alg.n_state):
        state[s] = j.state[s] + off * j.state_size if j.state[s] != NULL else NULL
        if j.block_offsets != NULL:
            state[MAX_STATE + s] = (<char*>(j.absmax[s] + j.block_offsets[k] + lo // Q8_BLOCK)
                                    if j.absmax[s] != NULL else NULL)
    j.alg.loops[j.config[k]][j.variant[k]](
        j.hyper, j.per_array + k * j.array_size, j.gmul, j.params[k] + lo * j.param_size,
        j.grads[k] + lo * j.grad_size[k], state, j.master + off if j.master != NULL else NULL,
        hi - lo, j.sr_key[k], lo)


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


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: a well-mixed 64-bit hash."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


def quantized_fill(double fill, str code_map):
    """(code, absmax) of an 8-bit state whose every element is ``fill``: each block's absmax is
    ``|fill|``, and every code that of ``fill / |fill|`` (an all-zero block: 0 / 0, as the loops
    quantize it)."""
    top = np.float32(abs(fill))
    quotient = float(np.float32(fill) / top) if top > 0 else float("nan")
    return search_code(quotient, MAPS[code_map], code_map == "signed"), float(top)


def _aligned_full(Py_ssize_t n, double fill, like):
    """A 1-D array of ``n`` elements of ``like``'s dtype (and kind) set to ``fill``, whose data
    starts on a 64-byte boundary.

    Vector loads of state then never straddle a cache line (NumPy itself only aligns to 16 bytes).
    """
    dtype = like.dtype
    raw = np.empty(n * dtype.itemsize + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    arr = raw[start:start + n * dtype.itemsize].view(dtype)
    if type(like) is BF16Array:
        arr = arr.view(BF16Array)
        arr.fill(int(bf16_bits(fill)))
    else:
        arr.fill(fill)
    return arr


cdef class ParamBucket:
    """The params of one param group that share a dtype, with their optimizer state.

    Parameters
    ----------
    spec : BucketSpec
        The params, their indices, the algorithm's kernel, states and storage configurations, by
        name (see :class:`fastopt._core._contracts.BucketSpec`).
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
    cdef readonly cnp.ndarray master_ready     # uint8 per param: master copy made
    cdef readonly bint master
    cdef readonly int storage
    cdef object state_like
    cdef tuple scalar_inits
    cdef list _state_arrays                    # what the state pointers point into
    cdef int kernel
    cdef const AlgorithmKernels* alg
    cdef const KernelTable* table
    cdef unsigned int lazy_mask
    cdef int config_same
    cdef int config_f32
    cdef int param_size
    cdef int state_size
    cdef public uint64_t seed      # public: load_state_dict restores a saved seed
    cdef Py_ssize_t* _offsets
    cdef char** _params
    cdef char** _grads
    cdef int* _config
    cdef int* _grad_size
    cdef uint64_t* _sr_key
    cdef char* _per_array
    cdef int* _variant
    cdef Py_ssize_t* _index
    cdef Py_ssize_t _max_index
    cdef char* _state[MAX_STATE]
    cdef float* _absmax[MAX_STATE]
    cdef float* _scalar[MAX_SCALAR_STATE]
    cdef float* _master
    cdef readonly tuple code_maps            # 8-bit states: per state, its map (empty: not 8-bit)
    cdef Py_ssize_t* _block_offsets          # 8-bit states: per array, its first block
    cdef readonly Py_ssize_t total_blocks

    def __cinit__(self, BucketSpec spec not None):
        cdef const KernelTable* table = kernel_table()
        cdef int kernel = spec.kernel
        if table == NULL:
            raise RuntimeError("fastopt's kernels are not loaded (import fastopt first)")
        if not 0 <= kernel < table.n_algorithms:
            raise ValueError(f"no kernel {kernel}")
        self.table = table
        self.alg = &table.algorithms[kernel]
        cdef Py_ssize_t n = len(spec.params)
        self.n_arrays = n
        self._offsets = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self._params = <char**>malloc((n + 1) * sizeof(char*))
        self._grads = <char**>malloc((n + 1) * sizeof(char*))
        self._config = <int*>malloc((n + 1) * sizeof(int))
        self._grad_size = <int*>malloc((n + 1) * sizeof(int))
        self._sr_key = <uint64_t*>malloc((n + 1) * sizeof(uint64_t))
        self._per_array = <char*>malloc((n + 1) * self.alg.array_size)
        self._variant = <int*>malloc((n + 1) * sizeof(int))
        self._index = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        if (self._offsets == NULL or self._params == NULL or self._grads == NULL
                or self._config == NULL or self._grad_size == NULL or self._sr_key == NULL
                or self._per_array == NULL or self._variant == NULL or self._index == NULL):
            raise MemoryError()
        memset(self._state, 0, sizeof(self._state))
        memset(self._absmax, 0, sizeof(self._absmax))
        memset(self._scalar, 0, sizeof(self._scalar))
        memset(self._sr_key, 0, (n + 1) * sizeof(uint64_t))
        self._master = NULL
        self._block_offsets = NULL

    def __dealloc__(self):
        free(self._offsets)
        free(self._params)
        free(self._grads)
        free(self._config)
        free(self._grad_size)
        free(self._sr_key)
        free(self._per_array)
        free(self._variant)
        free(self._index)
        free(self._block_offsets)

    def __init__(self, BucketSpec spec not None):
        cdef Py_ssize_t k, total = 0
        cdef cnp.ndarray p
        if self.n_arrays == 0:
            raise ValueError("a ParamBucket needs at least one param")
        if len(spec.state_names) != self.alg.n_state or len(spec.scalar_states) != self.alg.n_scalar_state:
            raise ValueError("state names do not match the kernel's states")
        if self.alg.n_state > MAX_STATE or self.alg.n_scalar_state > MAX_SCALAR_STATE:
            raise ValueError("the kernel keeps more states than a bucket holds")
        self.kernel = spec.kernel
        self.state_names = spec.state_names
        self.scalar_names = tuple(name for name, _ in spec.scalar_states)
        self.scalar_inits = spec.scalar_states
        self.lazy_mask = 0
        for k in spec.lazy_states:
            self.lazy_mask |= 1u << k
        self.config_same = spec.config
        self.config_f32 = spec.config_f32_grad
        if not 0 <= self.config_same < self.table.n_configs or self.config_f32 >= self.table.n_configs:
            raise ValueError(f"no storage configuration ({spec.config}, {spec.config_f32_grad})")
        self.state_like = spec.state_like
        self.state_size = spec.state_like.dtype.itemsize
        self.code_maps = spec.code_maps
        if self.code_maps and (self.state_size != 1 or self.alg.n_state != len(self.code_maps)):
            raise ValueError("8-bit states are kept as uint8 codes, one map per state")
        self.master = spec.master
        self.seed = <uint64_t>(spec.seed & 0xFFFFFFFFFFFFFFFF)
        self.params = list(spec.params)
        self.indices = spec.indices
        if len(self.indices) != self.n_arrays:
            raise ValueError("params and indices differ in length")
        p = <cnp.ndarray>self.params[0]
        self.storage = storage_code(p)
        if self.storage < 0:
            raise TypeError("ParamBucket holds float32, float64, float16 or bfloat16 params only")
        self.dtype = p.dtype
        self.param_size = cnp.PyArray_ITEMSIZE(p)
        for k in range(self.n_arrays):
            p = <cnp.ndarray>self.params[k]
            if storage_code(p) != self.storage or not cnp.PyArray_IS_C_CONTIGUOUS(p) \
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
        if self.code_maps:
            self._block_offsets = <Py_ssize_t*>malloc((self.n_arrays + 1) * sizeof(Py_ssize_t))
            if self._block_offsets == NULL:
                raise MemoryError()
            self._block_offsets[0] = 0
            for k in range(self.n_arrays):
                self._block_offsets[k + 1] = self._block_offsets[k] + (
                    self._offsets[k + 1] - self._offsets[k] + Q8_BLOCK - 1) // Q8_BLOCK
            self.total_blocks = self._block_offsets[self.n_arrays]
        self.arenas = {}
        self._state_arrays = []
        self.steps = np.zeros(self.n_arrays, dtype=np.int64)
        self.initialized = np.zeros(self.n_arrays, dtype=np.uint8)
        self.master_ready = np.zeros(self.n_arrays, dtype=np.uint8)
        self._make_scalar_states()
        if self.master:
            arr = _aligned_full(total, 0.0, np.empty(0, dtype=np.float32))
            self.arenas["master"] = arr
            self._state_arrays.append(arr)
            self._master = <float*>cnp.PyArray_DATA(<cnp.ndarray>arr)

    cdef _make_scalar_states(self):
        cdef Py_ssize_t k
        for k, (name, init) in enumerate(self.scalar_inits):
            arr = _aligned_full(self.n_arrays, init, np.empty(0, dtype=np.float32))
            self.arenas[name] = arr
            self._state_arrays.append(arr)
            self._scalar[k] = <float*>cnp.PyArray_DATA(<cnp.ndarray>arr)

    # -- state ---------------------------------------------------------------------------------

    @property
    def state_dtype(self):
        """The dtype the elementwise states are kept in."""
        return self.state_like.dtype

    def arena(self, str name, double fill=0.0):
        """The elementwise state arena ``name``, created (filled with ``fill``) on first use. An
        8-bit state's arena holds its codes, and ``name + "_absmax"`` its blocks' absmax: ``fill``
        is then quantized (every block's absmax is ``|fill|``)."""
        arr = self.arenas.get(name)
        cdef Py_ssize_t s
        if arr is None:
            if name not in self.state_names:
                raise KeyError(f"{name!r} is not a state of this bucket's algorithm")
            s = self.state_names.index(name)
            if self.code_maps:
                code, top = quantized_fill(fill, self.code_maps[s])
                arr = _aligned_full(self.total_size, code, self.state_like)
                absmax = _aligned_full(self.total_blocks, top, np.empty(0, dtype=np.float32))
                self.arenas[name + "_absmax"] = absmax
                self._state_arrays.append(absmax)
                self._absmax[s] = <float*>cnp.PyArray_DATA(<cnp.ndarray>absmax)
            else:
                arr = _aligned_full(self.total_size, fill, self.state_like)
            self.arenas[name] = arr
            self._state_arrays.append(arr)
            self._state[s] = <char*>cnp.PyArray_DATA(<cnp.ndarray>arr)
        return arr

    def drop_state(self):
        """Forget every state and step count (before loading a state dict): elementwise states,
        the master copies (remade from the params at their next step) and scalar states."""
        for name in self.state_names:
            self.arenas.pop(name, None)
            self.arenas.pop(name + "_absmax", None)
        memset(self._state, 0, sizeof(self._state))
        memset(self._absmax, 0, sizeof(self._absmax))
        self._state_arrays = [self.arenas[n] for n in ("master",) if n in self.arenas]
        self._make_scalar_states()
        self.steps[:] = 0
        self.initialized[:] = 0
        self.master_ready[:] = 0

    def state_view(self, str name, Py_ssize_t k):
        """Param ``k``'s part of state ``name`` (a view): the param's shape, or () for a scalar;
        for an 8-bit state's ``<name>_absmax``, one float32 per block of the param (flat)."""
        arr = self.arenas[name]
        if name in self.scalar_names:
            return arr[k:k + 1].reshape(())
        if self.code_maps and name.endswith("_absmax") and name[:len(name) - 7] in self.state_names:
            return arr[self._block_offsets[k]:self._block_offsets[k + 1]]
        return arr[self._offsets[k]:self._offsets[k + 1]].reshape((<object>self.params[k]).shape)

    # -- gathering -----------------------------------------------------------------------------

    cdef inline int _use_grad(self, Py_ssize_t k, int grad_storage) except -1:
        """Pick array k's storage configuration for a gradient stored as ``grad_storage``."""
        if grad_storage == self.storage:
            self._config[k] = self.config_same
            self._grad_size[k] = self.param_size
        else:
            self._config[k] = self.config_f32
            self._grad_size[k] = 4
        if self._config[k] < 0:
            raise TypeError(f"grads[{self._index[k]}] must have its param's dtype")
        return 0

    cdef Py_ssize_t _gather(self, object grads, bint need_writeable, list keep_alive) except -1:
        """Fill self._grads from the optimizer-wide grads sequence; return the active element count.

        Arrays made from non-ndarray gradients are appended to ``keep_alive``, which the caller
        holds until the kernels have run.
        """
        cdef Py_ssize_t k, active = 0
        cdef object g
        cdef int grad_storage
        if type(grads) is GradPointers:
            return self._gather_pointers(<GradPointers>grads)
        if type(grads) is not list and type(grads) is not tuple:
            grads = tuple(grads)      # list subclasses, iterables: index an exact copy
        if len(grads) <= self._max_index:
            raise ValueError(f"grads has {len(grads)} entries; this param group needs index {self._max_index}")
        for k in range(self.n_arrays):
            g = (<list>grads)[self._index[k]] if type(grads) is list else (<tuple>grads)[self._index[k]]
            if g is None:
                self._grads[k] = NULL
            else:
                self._grads[k] = checked_grad(g, <cnp.ndarray>self.params[k], self.storage,
                                              self._index[k], need_writeable, keep_alive,
                                              &grad_storage)
                self._use_grad(k, grad_storage)
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
            if grads.sizes[i] != n:
                raise ValueError(f"grads[{i}] does not have its param's size")
            self._use_grad(k, grads.storages[i])
            pp = self._params[k]
            nbytes = n * self.param_size
            if nbytes > 0 and gp < pp + nbytes and pp < gp + n * self._grad_size[k]:
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
        cdef int* per_array = <int*>malloc((self.n_arrays + 1) * sizeof(int))
        if per_array == NULL:
            raise MemoryError()
        cdef Py_ssize_t k
        for k in range(self.n_arrays):
            per_array[k] = self.storage if self._grad_size[k] == self.param_size else ST_F32
        cdef ArraySet s = ArraySet.__new__(ArraySet)
        s._borrow(self.n_arrays, self._grads, self._offsets, per_array)
        try:
            return s.all_finite()
        finally:
            free(per_array)

    # -- the step --------------------------------------------------------------------------------

    def step(self, grads, PackedHyperparameters hyper not None, double gmul, tuple active):
        """Apply one update to every param of this bucket that has a gradient.

        Parameters
        ----------
        grads : list or tuple
            The optimizer-wide gradients (this bucket reads its params' entries; None skips one).
        hyper : PackedHyperparameters
            The algorithm's hyperparameter struct, packed for this bucket's kernel (another
            kernel's is refused with TypeError, even one of the same size).
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
        j.n_arrays = self.n_arrays
        j.total = self.total_size
        j.offsets = self._offsets
        j.params = self._params
        j.grads = self._grads
        j.config = self._config
        j.grad_size = self._grad_size
        j.param_size = self.param_size
        j.state_size = self.state_size
        for s, _ in active:
            j.state[s] = self._state[s]
            j.absmax[s] = self._absmax[s]
        j.block_offsets = self._block_offsets
        j.master = self._master
        j.sr_key = self._sr_key
        j.hyper = hyper_buf
        j.per_array = self._per_array
        j.array_size = self.alg.array_size
        j.variant = self._variant
        j.gmul = gmul
        cdef int64_t* steps = <int64_t*>cnp.PyArray_DATA(self.steps)
        cdef uint8_t* initialized = <uint8_t*>cnp.PyArray_DATA(self.initialized)
        cdef uint8_t* master_ready = <uint8_t*>cnp.PyArray_DATA(self.master_ready)
        with nogil:
            self._prepare(hyper_buf, steps, initialized, master_ready)
            run_plan(plan_for(self.total_size, n_active, self.alg.weight, SPLIT_ALIGN),
                     _step_chunk, &j)
            self._count_step(steps, initialized, mark_lazy)

    cdef Py_ssize_t _begin_step(self, grads, PackedHyperparameters hyper, tuple active,
                                list keep_alive, double* hyper_buf, bint* mark_lazy) except -1:
        """What every step does before writing anything: check that the hyperparameters were
        packed for this bucket's kernel, gather and validate the gradients (returning the active
        element count), copy the hyperparameter struct into ``hyper_buf`` (MAX_HYPER doubles),
        create the arenas of the active states, and tell whether one of them is lazy."""
        if hyper.kernel != self.kernel:
            raise TypeError(f"hyper holds hyperparameters packed for the {hyper.kernel_name} "
                            f"kernel, but this bucket runs the {self.alg.name.decode()} kernel")
        cdef Py_ssize_t n_active = self._gather(grads, False, keep_alive)
        cdef Py_ssize_t s
        cdef bytes data = hyper.data
        if len(data) != self.alg.hyper_size or self.alg.hyper_size > MAX_HYPER * <Py_ssize_t>sizeof(double):
            raise ValueError("hyper does not hold this kernel's hyperparameter struct")
        mark_lazy[0] = False
        for s, fill in active:
            if self._state[s] == NULL:
                self.arena(self.state_names[s], fill)
            if self.lazy_mask & (1u << s):
                mark_lazy[0] = True
        memcpy(hyper_buf, <const char*>data, self.alg.hyper_size)
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

    cdef void _prepare(self, const void* hyper, const int64_t* steps, const uint8_t* initialized,
                       uint8_t* ready) noexcept nogil:
        """Per array with a gradient: its prologue (see the module's design note), its master copy
        on its first step, and its stochastic-rounding stream for this step."""
        cdef Py_ssize_t k, size = self.alg.array_size, last = -1, n
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
            elif self.storage == ST_F64:
                self._variant[k] = self.alg.prepare_f64(hyper, <double>step, first, self._scalar, k, out)
            else:
                self._variant[k] = self.alg.prepare_f32(hyper, <double>step, first, self._scalar, k, out)
            last = k
            if self._master != NULL and not ready[k]:
                n = self._offsets[k + 1] - self._offsets[k]
                self.table.widen(self.storage, self._params[k], self._master + self._offsets[k], n)
                ready[k] = 1
            self._sr_key[k] = _mix64(self.seed ^ _mix64(<uint64_t>self._index[k] * 0x9E3779B97F4A7C15ULL
                                                         + <uint64_t>step))


# The compiled drivers of the algorithms that declare one (generated from fastopt/algorithms).
include "_drivers.pxi"
