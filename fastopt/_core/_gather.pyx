# Gathering arrays for a kernel: the per-call checks that must run at C speed, before anything is
# written (the checks of everything else live in fastopt/_validation.py).
cimport cython
cimport numpy as cnp
from libc.stdlib cimport calloc, free, malloc

from fastopt._core._kernel_api cimport ST_F32, ST_F64, ST_BF16, ST_F16

import numpy as np

from fastopt._core._bf16 import BF16Array
from fastopt._core._storage import NAMES as STORAGE_NAMES

cnp.import_array()


cdef int storage_code(cnp.ndarray a) noexcept:
    """How ``a`` is stored (ST_* code), or -1 for a dtype fastopt does not store (including any
    dtype in non-native byte order: its type number is the native one's, its bytes are not)."""
    cdef int t = cnp.PyArray_TYPE(a)
    if cnp.PyArray_ISBYTESWAPPED(a):
        return -1
    if t == cnp.NPY_FLOAT32:
        return ST_F32
    if t == cnp.NPY_FLOAT64:
        return ST_F64
    if t == cnp.NPY_FLOAT16:
        return ST_F16
    if cnp.PyArray_ITEMSIZE(a) == 2 and (
            (t == cnp.NPY_USHORT and type(a) is BF16Array) or (<object>a).dtype.name == "bfloat16"):
        return ST_BF16
    return -1


cdef str storage_name(int storage):
    """The dtype name of a storage code, for messages (a BF16Array's dtype says uint16)."""
    return STORAGE_NAMES[storage]


cdef object as_array(object obj, str what):
    """``obj`` as an ndarray without copying (buffer-protocol objects are viewed, never copied)."""
    if cnp.PyArray_Check(obj):
        return obj
    try:
        arr = np.asarray(obj)
    except Exception as exc:
        raise TypeError(f"{what} must be an array (NumPy array or buffer), got {type(obj).__name__}") from exc
    if arr.dtype.kind != "f":
        raise TypeError(f"{what} must be a float32, float64, float16 or bfloat16 array, got "
                        f"{type(obj).__name__} (as an array: dtype {arr.dtype})")
    return arr


cdef str byte_order_message(str what, object dtype):
    """Why an array whose bytes are swapped (a big-endian one here) is refused: the kernels read
    native bytes, and converting would be a copy of every step's gradient."""
    return (f"{what} has non-native byte order ({dtype.str}); convert it with "
            f"g.astype(g.dtype.newbyteorder('='))")


cdef char* checked_grad(object grad, cnp.ndarray param, int storage, Py_ssize_t index,
                        bint need_writeable, list keep_alive, int* grad_storage) except? NULL:
    """Validate one gradient against its param; return its data pointer and set its storage.

    A gradient has its param's dtype, or float32 when the param is bfloat16/float16. A gradient
    that is not an ndarray (a NumPy scalar for a 0-d param, a buffer) is viewed as one; that view
    goes into ``keep_alive`` so the memory stays valid until the step is done.
    """
    cdef cnp.ndarray g
    cdef int nd, d
    cdef cnp.npy_intp* gd
    cdef cnp.npy_intp* pd
    cdef char* gp
    cdef char* pp
    cdef Py_ssize_t nbytes
    if cnp.PyArray_Check(grad):
        g = <cnp.ndarray>grad
    else:
        g = as_array(grad, f"grads[{index}]")
        keep_alive.append(g)
    if cnp.PyArray_ISBYTESWAPPED(g):    # same type number as a native array: check before reading
        raise TypeError(byte_order_message(f"grads[{index}]", g.dtype))
    grad_storage[0] = storage_code(g)
    if grad_storage[0] != storage and not (grad_storage[0] == ST_F32 and
                                           (storage == ST_BF16 or storage == ST_F16)):
        raise TypeError(
            f"grads[{index}] has dtype {g.dtype}, but its param has dtype {storage_name(storage)}; "
            "grads must have their param's dtype (or float32, for a bfloat16/float16 param)")
    nd = cnp.PyArray_NDIM(g)
    gd = cnp.PyArray_DIMS(g)
    pd = cnp.PyArray_DIMS(param)
    if nd != cnp.PyArray_NDIM(param):
        raise ValueError(f"grads[{index}] has shape {(<object>g).shape}, but its param has shape {(<object>param).shape}")
    for d in range(nd):
        if gd[d] != pd[d]:
            raise ValueError(f"grads[{index}] has shape {(<object>g).shape}, but its param has shape {(<object>param).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(g):
        raise ValueError(f"grads[{index}] must be C-contiguous (use np.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(g):
        raise ValueError(f"grads[{index}] must be aligned to its dtype")
    if need_writeable and not cnp.PyArray_ISWRITEABLE(g):
        raise ValueError(f"grads[{index}] is read-only, but is modified in place")
    gp = <char*>cnp.PyArray_DATA(g)
    pp = <char*>cnp.PyArray_DATA(param)
    nbytes = cnp.PyArray_NBYTES(g)
    if nbytes > 0 and gp < pp + cnp.PyArray_NBYTES(param) and pp < gp + nbytes:
        raise ValueError(f"grads[{index}] shares memory with its param; pass a separate gradient array")
    return gp


cdef cnp.ndarray checked_array(object obj, str what, bint need_writeable, int* storage):
    """``obj`` (one of the arrays of a clipping or finiteness call) as a checked ndarray view; sets
    its storage."""
    cdef cnp.ndarray a
    if obj is None:
        raise TypeError(f"{what} is None; pass only the gradients to use")
    if cnp.PyArray_Check(obj):
        a = <cnp.ndarray>obj
    else:
        a = <cnp.ndarray>as_array(obj, what)
        if need_writeable and (<object>a).base is None:
            # np.asarray made a new array (from a list, say): an in-place change would be lost.
            raise TypeError(f"{what} must be an array that can be modified in place, "
                            f"got {type(obj).__name__}")
    if cnp.PyArray_ISBYTESWAPPED(a):    # same type number as a native array: check before reading
        raise TypeError(byte_order_message(what, a.dtype))
    storage[0] = storage_code(a)
    if storage[0] < 0:
        raise TypeError(f"{what} must be float32, float64, float16 or bfloat16, got {a.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{what} must be C-contiguous (use np.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{what} must be aligned to its dtype")
    if need_writeable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{what} is read-only, but is modified in place")
    return a


@cython.final
cdef class GradPointers:
    """The optimizer-wide gradients as raw pointers, for a front end that is not NumPy.

    ``fastopt.torch`` reads each param's ``.grad`` (pointer, dtype, size, layout) through torch's
    API and validates it itself; building a NumPy view per gradient per step would cost more than
    the update of a small tensor. The buckets take this object wherever they take a list of
    arrays: entry i is param i's gradient (NULL: none this step), with param i's size, stored as
    ``storages[i]`` says (its param's dtype, or float32 for a half-precision param).
    """

    def __cinit__(self, Py_ssize_t n, sizes):
        cdef Py_ssize_t i
        self.n = n
        self.data = <char**>calloc(n + 1, sizeof(char*))
        self.sizes = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
        self.storages = <int*>calloc(n + 1, sizeof(int))
        if self.data == NULL or self.sizes == NULL or self.storages == NULL:
            raise MemoryError()
        for i in range(n):
            self.sizes[i] = sizes[i]
        self.updated = []

    def __dealloc__(self):
        free(self.data)
        free(self.sizes)
        free(self.storages)

    def __len__(self):
        return self.n
