# Reductions and in-place transforms over many arrays: the gradient norm and scaling of
# clip_grad_norm_, clip_grad_value_, and the finiteness check of skip_nonfinite.
#
# Many arrays are one range of elements (prefix offsets), cut into fixed REDUCE_BLOCK-element
# blocks. Each block is reduced by the kernel module's span reduction (16 accumulators in index
# order) into its own partial, and the partials are combined in block order: the result is the same
# for any thread count. Chunks are contiguous runs of blocks that threads claim; a transform that
# follows a norm cuts the same chunks and walks each backwards (see _transform_chunk).
cimport cython
cimport numpy as cnp
from libc.math cimport sqrt, pow, INFINITY, NAN
from libc.stdlib cimport malloc, free

from fastopt._core._gather cimport GradPointers, checked_array
from fastopt._core._kernel_api cimport (
    KernelTable, RED_SUMSQ, RED_MAXABS, RED_SUMPOW, RED_NONFINITE, TR_SCALE, TR_CLAMP,
    ST_F32, ST_F64)
from fastopt._core._table cimport kernel_table
from fastopt._core._fastopt_threads cimport plan_for, run_plan

cnp.import_array()

cdef enum:
    # Reductions are summed in blocks of this many elements, then the block sums in block order.
    REDUCE_BLOCK = 4096


cdef struct Job:
    const KernelTable* table
    int kind
    double p                 # the norm's order, or the transform's factor / bound
    Py_ssize_t n_arrays
    Py_ssize_t total
    Py_ssize_t n_blocks
    const Py_ssize_t* offsets
    char** data
    const int* storages      # per array (ST_* codes)
    double* partial          # one per block (reductions)


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


cdef inline double _combine(int kind, double a, double b) noexcept nogil:
    if kind == RED_MAXABS:
        if a != a or b != b:
            return NAN
        return a if a >= b else b
    return a + b


cdef inline Py_ssize_t _itemsize(int storage) noexcept nogil:
    return 4 if storage == ST_F32 else 8 if storage == ST_F64 else 2


cdef void _reduce_block(const Job* j, Py_ssize_t block) noexcept nogil:
    cdef Py_ssize_t start = block * REDUCE_BLOCK
    cdef Py_ssize_t stop = start + REDUCE_BLOCK
    cdef Py_ssize_t k, a, b
    cdef int storage
    cdef double r = 0.0, part
    if stop > j.total:
        stop = j.total
    k = _first_array_at(j.offsets, j.n_arrays, start)
    while k < j.n_arrays and j.offsets[k] < stop:
        a = start if start > j.offsets[k] else j.offsets[k]
        b = stop if stop < j.offsets[k + 1] else j.offsets[k + 1]
        if b > a and j.data[k] != NULL:
            storage = j.storages[k]
            part = j.table.reduce(storage, j.kind, j.p,
                                  j.data[k] + (a - j.offsets[k]) * _itemsize(storage), b - a)
            r = _combine(j.kind, r, part)
        k += 1
    j.partial[block] = r


cdef inline Py_ssize_t _first_block_of(Py_ssize_t n_blocks, Py_ssize_t chunk,
                                       Py_ssize_t n_chunks) noexcept nogil:
    """The first block of ``chunk`` (its last is the next chunk's first, minus one).

    Reductions and transforms split alike, so a scaling after a norm touches what its thread read."""
    return (n_blocks * chunk) // n_chunks


cdef void _reduce_chunk(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil:
    cdef const Job* j = <const Job*>ctx
    cdef Py_ssize_t b
    for b in range(_first_block_of(j.n_blocks, chunk, n_chunks),
                   _first_block_of(j.n_blocks, chunk + 1, n_chunks)):
        _reduce_block(j, b)


cdef void _transform_range(const Job* j, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    if start >= stop:
        return
    cdef Py_ssize_t k = _first_array_at(j.offsets, j.n_arrays, start)
    cdef Py_ssize_t lo, hi
    cdef int storage
    while k < j.n_arrays and j.offsets[k] < stop:
        lo = start if start > j.offsets[k] else j.offsets[k]
        hi = stop if stop < j.offsets[k + 1] else j.offsets[k + 1]
        if hi > lo and j.data[k] != NULL:
            storage = j.storages[k]
            j.table.transform(storage, j.kind, j.p,
                              j.data[k] + (lo - j.offsets[k]) * _itemsize(storage), hi - lo)
        k += 1


cdef void _transform_chunk(void* ctx, Py_ssize_t chunk, Py_ssize_t n_chunks) noexcept nogil:
    """The chunk's elements in blocks taken from its end backwards.

    Scaling follows a norm over the same elements (clip_grad_norm_): the norm pass has just left
    the end of each thread's range in its L2, so starting there reads up to L2's size from L2
    instead of L3 or memory before it is evicted. Elementwise, so the order changes no result."""
    cdef const Job* j = <const Job*>ctx
    cdef Py_ssize_t start = _first_block_of(j.n_blocks, chunk, n_chunks) * REDUCE_BLOCK
    cdef Py_ssize_t hi = _first_block_of(j.n_blocks, chunk + 1, n_chunks) * REDUCE_BLOCK
    cdef Py_ssize_t lo
    if hi > j.total:
        hi = j.total
    while hi > start:
        lo = hi - REDUCE_BLOCK
        if lo < start:
            lo = start
        _transform_range(j, lo, hi)
        hi = lo


@cython.final
cdef class ArraySet:
    """Many float32/float64 arrays treated as one range of elements, for reductions and transforms.

    Built by :func:`gather_arrays` (which validates) or borrowed from a ParamBucket's gradients.
    """

    def __cinit__(self):
        self.offsets = NULL
        self.data = NULL
        self.storages = NULL
        self.owner = False

    def __dealloc__(self):
        if self.owner:
            free(self.offsets)
            free(self.data)
            free(self.storages)

    cdef void _borrow(self, Py_ssize_t n, char** data, Py_ssize_t* offsets, int* storages):
        self.n_arrays = n
        self.data = data
        self.offsets = offsets
        self.total = offsets[n]
        self.storages = storages
        self.owner = False

    cdef double _reduce(self, int kind, double p) except? -1.0:
        cdef Job j
        cdef Py_ssize_t b
        cdef double r = 0.0
        _fill_job(self, &j, kind, p)
        j.partial = <double*>malloc((j.n_blocks + 1) * sizeof(double))
        if j.partial == NULL:
            raise MemoryError(f"no memory for {j.n_blocks + 1} partial sums")
        with nogil:
            run_plan(plan_for(j.total, j.total, 1, REDUCE_BLOCK), _reduce_chunk, &j)
            for b in range(j.n_blocks):
                r = _combine(kind, r, j.partial[b])
        free(j.partial)
        return r

    cdef void _transform(self, int kind, double a) noexcept:
        cdef Job j
        _fill_job(self, &j, kind, a)
        with nogil:
            run_plan(plan_for(j.total, j.total, 1, REDUCE_BLOCK), _transform_chunk, &j)

    def all_finite(self):
        """True if every element is finite."""
        return self._reduce(RED_NONFINITE, 0.0) == 0.0

    def norm(self, double norm_type):
        """The ``norm_type``-norm of all elements together, accumulated in float64."""
        if norm_type == INFINITY:
            return self._reduce(RED_MAXABS, 0.0)
        if norm_type == 2.0:
            return sqrt(self._reduce(RED_SUMSQ, 2.0))
        if norm_type == 1.0:
            return self._reduce(RED_SUMPOW, 1.0)
        return pow(self._reduce(RED_SUMPOW, norm_type), 1.0 / norm_type)

    def scale_(self, double factor):
        """Multiply every element in place by ``factor`` (rounded to each array's dtype)."""
        self._transform(TR_SCALE, factor)

    def clamp_(self, double clip_value):
        """Clamp every element in place to [-clip_value, clip_value]; NaN stays NaN."""
        self._transform(TR_CLAMP, clip_value)


cdef void _fill_job(ArraySet s, Job* j, int kind, double p) noexcept:
    j.table = kernel_table()
    j.kind = kind
    j.p = p
    j.n_arrays = s.n_arrays
    j.total = s.total
    j.n_blocks = (s.total + REDUCE_BLOCK - 1) // REDUCE_BLOCK
    j.offsets = s.offsets
    j.data = s.data
    j.storages = s.storages
    j.partial = NULL


cdef ArraySet _from_pointers(GradPointers pointers):
    cdef ArraySet s = ArraySet.__new__(ArraySet)
    cdef Py_ssize_t k, n = pointers.n, total = 0
    s.owner = True
    s.n_arrays = n
    s.offsets = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
    s.data = <char**>malloc((n + 1) * sizeof(char*))
    s.storages = <int*>malloc((n + 1) * sizeof(int))
    if s.offsets == NULL or s.data == NULL or s.storages == NULL:
        raise MemoryError()
    s.keep_alive = [pointers]
    for k in range(n):
        s.data[k] = pointers.data[k]
        s.storages[k] = pointers.storages[k]
        s.offsets[k] = total
        if pointers.data[k] != NULL:
            total += pointers.sizes[k]
    s.offsets[n] = total
    s.total = total
    return s


def gather_arrays(arrays, str name="grads", bint need_writeable=True):
    """Validate ``arrays`` and view them as one :class:`ArraySet` (no copies).

    Raises TypeError / ValueError naming ``name[i]`` for other dtypes than float32, float64,
    float16 and bfloat16, non-contiguous,
    misaligned or (when ``need_writeable``) read-only arrays.
    """
    cdef list items
    cdef GradPointers pointers
    if type(arrays) is GradPointers:    # validated by its front end; NULL entries are skipped
        pointers = <GradPointers>arrays
        return _from_pointers(pointers)
    if cnp.PyArray_Check(arrays):
        items = [arrays]
    else:
        try:
            items = list(arrays)
        except TypeError:
            raise TypeError(f"{name} must be an array or a sequence of arrays, got {type(arrays).__name__}") from None
    cdef Py_ssize_t n = len(items), k, total = 0
    cdef ArraySet s = ArraySet.__new__(ArraySet)
    cdef cnp.ndarray a
    s.owner = True
    s.n_arrays = n
    s.offsets = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
    s.data = <char**>malloc((n + 1) * sizeof(char*))
    s.storages = <int*>malloc((n + 1) * sizeof(int))
    if s.offsets == NULL or s.data == NULL or s.storages == NULL:
        raise MemoryError()
    s.keep_alive = []
    for k in range(n):
        a = checked_array(items[k], f"{name}[{k}]", need_writeable, &s.storages[k])
        s.keep_alive.append(a)
        s.data[k] = <char*>cnp.PyArray_DATA(a)
        s.offsets[k] = total
        total += cnp.PyArray_SIZE(a)
    s.offsets[n] = total
    s.total = total
    return s
