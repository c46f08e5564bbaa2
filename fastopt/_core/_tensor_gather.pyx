# Gathering torch gradients for fastopt.torch at C speed, without building a NumPy array per
# gradient per step (``Tensor.numpy()`` costs ~1.4 us a tensor here, more than the update of a small
# one). This module never imports torch: the adapter hands it torch's own unbound methods.
#
# Per param and step: its ``.grad``; for a gradient, its data pointer, dtype, element count,
# contiguity and negative bit, each one call of torch's C API (~40-60 ns each on this machine,
# which bounds what a step of many small tensors can save). Anything unusual -- a param whose
# memory moved, a gradient of another kind, dtype, size or layout, or one torch cannot describe
# this way -- makes gather() return None, and the adapter's precise (slower) checks raise with a
# message that names the param.
cimport cython
from libc.stdint cimport intptr_t

from fastopt._core._gather cimport GradPointers
from fastopt._core._kernel_api cimport ST_F32, ST_BF16, ST_F16

from cpython.long cimport PyLong_AsVoidPtr

# An empty gradient's data pointer may be NULL, which GradPointers reads as "no gradient": it gets
# this address instead (never dereferenced: nothing is read or written for zero elements).
cdef char _empty_gradient


@cython.final
cdef class TensorGrads:
    """Reads the ``.grad`` of a fixed list of torch params into a :class:`GradPointers`.

    Parameters
    ----------
    params : list of torch.Tensor
        The params, each once, in the fastopt optimizer's order.
    sizes, storages : list of int
        Each param's element count and storage code (ST_*).
    dtypes : list
        Each param's torch dtype: a gradient has it, or is float32 for a bfloat16/float16 param.
    api : dict
        torch's ``Tensor`` and ``Parameter`` types, ``torch.float32``, and the unbound
        ``data_ptr``, ``numel``, ``is_contiguous`` and ``is_neg`` methods of
        ``torch._C.TensorBase``. Gradients of another type (a subclass) take the adapter's precise
        path.
    """
    cdef list params
    cdef list dtypes
    cdef list sizes
    cdef list storages
    cdef object float32
    cdef Py_ssize_t n
    cdef object tensor_type
    cdef object parameter_type
    cdef object data_ptr
    cdef object numel
    cdef object is_contiguous
    cdef object is_neg
    cdef list param_ptrs

    def __init__(self, list params, list sizes, list storages, list dtypes, dict api):
        self.params = list(params)
        self.n = len(params)
        self.sizes = list(sizes)
        self.storages = list(storages)
        self.float32 = api["float32"]
        self.dtypes = list(dtypes)
        self.tensor_type = api["Tensor"]
        self.parameter_type = api["Parameter"]
        self.data_ptr = api["data_ptr"]
        self.numel = api["numel"]
        self.is_contiguous = api["is_contiguous"]
        self.is_neg = api["is_neg"]
        self.param_ptrs = [self.data_ptr(p) for p in params]

    def gather(self):
        """The gradients as GradPointers (with ``updated``: the params that have one), or None when
        a param or gradient needs the adapter's precise checks."""
        cdef GradPointers out = GradPointers(self.n, self.sizes)
        cdef Py_ssize_t i
        cdef int storage
        cdef object p, g, dtype
        cdef list updated = out.updated
        data_ptr = self.data_ptr
        cdef object tensor_type = self.tensor_type, parameter_type = self.parameter_type
        for i in range(self.n):
            p = self.params[i]
            if data_ptr(p) != self.param_ptrs[i]:
                return None                      # p.data = ... since the optimizer was built
            g = p.grad
            if g is None:
                continue
            if (type(g) is not tensor_type and type(g) is not parameter_type) \
                    or self.numel(g) != self.sizes[i]:
                return None
            dtype = g.dtype
            storage = self.storages[i]
            if dtype is not self.dtypes[i]:
                if dtype is not self.float32 or (storage != ST_BF16 and storage != ST_F16):
                    return None
                storage = ST_F32
            out.storages[i] = storage
            try:
                if not self.is_contiguous(g) or self.is_neg(g):
                    return None
            except RuntimeError:                 # e.g. a sparse gradient has no strides
                return None
            out.data[i] = <char*>PyLong_AsVoidPtr(data_ptr(g)) if self.sizes[i] else &_empty_gradient
            updated.append(p)
        return out
