# Gathering torch gradients for fastopt.torch at C speed, without building a NumPy array per
# gradient per step (``Tensor.numpy()`` costs ~0.7 us a tensor, as much as a whole step of a
# 16-element param: measured on the development machine, an AMD EPYC with AVX-512, December 2026).
# This module never imports torch: the adapter hands it torch's own unbound methods and attribute
# descriptors.
#
# Per param and step: that it is still the param at its place in its group's ``params`` list (one
# pointer comparison: torch.optim lets users and engines such as DeepSpeed replace, add or reorder
# a group's params between steps), its data pointer and ``.grad``; for a gradient, its data
# pointer, dtype, shape, contiguity and negative bit, each one call of torch's C API (these calls
# bound what a step of many small tensors can save). Anything unusual -- a params list that
# changed, a param whose memory moved, a gradient of another kind, dtype, shape or layout, or one
# torch cannot describe this way -- makes gather() return None: the adapter then finds what
# changed and rebuilds what it must, or its precise (slower) checks raise with a message that
# names the param.
#
# The shape, not only the element count: a gradient resized in place (``p.grad.resize_(5, 4)`` on
# a 4x5 param) or swapped under ``.grad.data`` keeps the count, and a matrix algorithm (Muon,
# Adafactor) would read it as the wrong matrix. ``Tensor.shape`` builds a torch.Size (a tuple the
# garbage collector tracks) per call (~0.14 us from Python, where a whole step of 200 tensors of
# 100 elements takes ~110 us; development machine as above); up to two dimensions with a nonzero first one, the dimension count, the first dimension and the
# byte count fix the shape, and each is read without building an object (C getters and the
# ``__len__`` slot of ``torch._C.TensorBase``, called directly). Other shapes compare torch.Size.
cimport cython
from libc.stdint cimport intptr_t
from libc.stdlib cimport malloc, free
from libc.string cimport memmove

from fastopt._core._gather cimport GradPointers
from fastopt._core._kernel_api cimport ST_F32, ST_F64, ST_BF16, ST_F16

from cpython.long cimport PyLong_AsVoidPtr
from cpython.object cimport PyObject_RichCompareBool, Py_EQ


cdef extern from "Python.h":
    # CPython's attribute getter: a new reference, or NULL with an exception set.
    ctypedef object (*getter)(object, void*)
    ctypedef struct PyGetSetDef:
        getter get
        void* closure
    ctypedef struct PyGetSetDescrObject:
        PyGetSetDef* d_getset
    # The C function behind a slot such as __len__ (for __len__: a lenfunc, -1 with an exception).
    ctypedef struct PyWrapperDescrObject:
        void* d_wrapped
    ctypedef Py_ssize_t (*lenfunc)(object) except? -1
    ctypedef struct PyTypeObject:
        pass
    # A __slots__ member: its offset in the instance (structmember.h's PyMemberDef).
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    PyTypeObject PyMemberDescr_Type
    PyTypeObject PyGetSetDescr_Type
    PyTypeObject PyWrapperDescr_Type
    PyTypeObject* Py_TYPE(object)


cdef object _through_descriptor(object obj, void* descriptor):
    """The getter of an attribute that is not a getset descriptor: its ``__get__``."""
    return (<object>descriptor).__get__(obj, type(obj))


cdef extern from *:
    """
    #include <structmember.h>
    /* The object in the __slots__ member at ``offset`` of ``obj`` (a new reference), or NULL
       with AttributeError set when it is unset, as reading the attribute would. */
    static PyObject* fastopt_read_slot(PyObject* obj, void* offset) {
        PyObject* value = *(PyObject**)((char*)obj + (Py_ssize_t)offset);
        if (value == NULL) {
            PyErr_SetString(PyExc_AttributeError, "slot is not set");
            return NULL;
        }
        Py_INCREF(value);
        return value;
    }
    """
    object fastopt_read_slot(object obj, void* offset)
    int T_OBJECT_EX


@cython.final
cdef class _Attribute:
    """A torch attribute read by calling its C getter directly (on an instance of the exact class
    that defines it: a subclass might override it), or a ``__slots__`` member (DTensor's local
    shard) read at its offset, as CPython's member descriptor does."""
    cdef object descriptor            # kept alive: get and closure point into it
    cdef getter get
    cdef void* closure

    def __init__(self, descriptor):
        self.descriptor = descriptor
        if Py_TYPE(descriptor) == &PyMemberDescr_Type \
                and (<PyMemberDescrObject*>descriptor).d_member.type == T_OBJECT_EX:
            self.get = <getter>fastopt_read_slot
            self.closure = <void*>(<PyMemberDescrObject*>descriptor).d_member.offset
        elif Py_TYPE(descriptor) == &PyGetSetDescr_Type:
            self.get = (<PyGetSetDescrObject*>descriptor).d_getset.get
            self.closure = (<PyGetSetDescrObject*>descriptor).d_getset.closure
        else:
            self.get = _through_descriptor
            self.closure = <void*>descriptor

    cdef inline object of(self, object obj):
        return self.get(obj, self.closure)


@cython.final
cdef class _Length:
    """``torch._C.TensorBase.__len__`` (a tensor's first dimension, 0 for a 0-d one), calling the
    slot function behind it directly (torch.Tensor overrides ``__len__`` in Python)."""
    cdef object descriptor            # kept alive: length points into it
    cdef lenfunc length

    def __init__(self, descriptor):
        self.descriptor = descriptor
        self.length = NULL
        if Py_TYPE(descriptor) == &PyWrapperDescr_Type:
            self.length = <lenfunc>(<PyWrapperDescrObject*>descriptor).d_wrapped

    cdef inline Py_ssize_t of(self, object obj) except? -1:
        if self.length != NULL:
            return self.length(obj)
        return self.descriptor(obj)


# An empty gradient's data pointer may be NULL, which GradPointers reads as "no gradient": it gets
# this address instead (never dereferenced: nothing is read or written for zero elements).
cdef char _empty_gradient


cdef inline Py_ssize_t _itemsize(int storage) noexcept:
    if storage == ST_F64:
        return 8
    if storage == ST_F32:
        return 4
    return 2


@cython.final
cdef class TensorGrads:
    """Reads the ``.grad`` of a fixed list of torch params into a :class:`GradPointers`.

    Parameters
    ----------
    params : list of torch.Tensor
        The params, each once, in the fastopt optimizer's order: their groups' ``params`` lists
        one after the other.
    shards : list of torch.Tensor
        The tensor whose memory the step updates, per param: the param itself, or the local shard
        of a DTensor param (then ``api`` names how to read it).
    lengths : list of int
        The length of each group's ``params`` list (they add up to ``len(params)``).
    sizes, storages : list of int
        Each param's element count and storage code (ST_*).
    dtypes : list
        Each param's torch dtype: a gradient has it, or is float32 for a bfloat16/float16 param.
    api : dict
        torch's ``Tensor`` and ``Parameter`` types, ``torch.float32``, the unbound ``data_ptr``,
        ``is_contiguous``, ``is_neg`` and ``__len__`` methods of ``torch._C.TensorBase`` and its
        ``grad``, ``dtype``, ``shape``, ``ndim`` and ``nbytes`` attributes (descriptors).
        Gradients of another type (a subclass) take the adapter's precise path. For DTensor
        params, also ``"DTensor"`` (the type) and ``"local_tensor"`` (the descriptor of a
        DTensor's local shard): each param's and gradient's shard is read through it.
    """
    cdef list params
    cdef list shards
    cdef object sharded_type           # DTensor, for sharded params (else None)
    cdef _Attribute shard_of
    cdef list lengths
    cdef list dtypes
    cdef list sizes
    cdef list shapes
    cdef list storages
    cdef object float32
    cdef Py_ssize_t n
    cdef object tensor_type
    cdef object parameter_type
    cdef object data_ptr
    cdef object is_contiguous
    cdef object is_neg
    cdef _Attribute grad_of
    cdef _Attribute dtype_of
    cdef _Attribute shape_of
    cdef _Attribute ndim_of
    cdef _Attribute nbytes_of
    cdef _Length first_dim_of
    cdef list param_ptrs
    # Per param: its dimension count and first dimension, and whether those with the element
    # count fix its shape (up to two dimensions, the first one nonzero); else torch.Size compares.
    cdef long* ndims
    cdef Py_ssize_t* first_dims
    cdef bint* shape_by_counts
    cdef bint* sharded                 # per param: a DTensor, stepped on its local shard

    def __cinit__(self):
        self.ndims = NULL
        self.first_dims = NULL
        self.shape_by_counts = NULL
        self.sharded = NULL

    def __dealloc__(self):
        free(self.ndims)
        free(self.first_dims)
        free(self.shape_by_counts)
        free(self.sharded)

    def __init__(self, list params, list shards, list lengths, list sizes, list storages,
                 list dtypes, dict api):
        cdef Py_ssize_t i
        self.params = list(params)
        self.shards = list(shards)
        self.n = len(params)
        self.sharded_type = api.get("DTensor")
        self.shard_of = _Attribute(api["local_tensor"]) if self.sharded_type is not None else None
        if sum(lengths) != self.n:
            raise ValueError(f"the group lengths {lengths} do not add up to {self.n} params")
        self.lengths = list(lengths)
        self.sizes = list(sizes)
        self.shapes = [t.shape for t in shards]
        self.storages = list(storages)
        self.float32 = api["float32"]
        self.dtypes = list(dtypes)
        self.tensor_type = api["Tensor"]
        self.parameter_type = api["Parameter"]
        self.data_ptr = api["data_ptr"]
        self.is_contiguous = api["is_contiguous"]
        self.is_neg = api["is_neg"]
        self.grad_of = _Attribute(api["grad"])
        self.dtype_of = _Attribute(api["dtype"])
        self.shape_of = _Attribute(api["shape"])
        self.ndim_of = _Attribute(api["ndim"])
        self.nbytes_of = _Attribute(api["nbytes"])
        self.first_dim_of = _Length(api["__len__"])
        self.param_ptrs = [self.data_ptr(t) for t in shards]
        self.ndims = <long*>malloc((self.n + 1) * sizeof(long))
        self.first_dims = <Py_ssize_t*>malloc((self.n + 1) * sizeof(Py_ssize_t))
        self.shape_by_counts = <bint*>malloc((self.n + 1) * sizeof(bint))
        self.sharded = <bint*>malloc((self.n + 1) * sizeof(bint))
        if self.ndims == NULL or self.first_dims == NULL or self.shape_by_counts == NULL \
                or self.sharded == NULL:
            raise MemoryError()
        for i in range(self.n):
            # (the slot is read at its offset: only ever on an instance of the type that has it)
            self.sharded[i] = self.sharded_type is not None and isinstance(params[i], self.sharded_type)
            shape = self.shapes[i]
            self.ndims[i] = len(shape)
            self.first_dims[i] = shape[0] if len(shape) else 0
            self.shape_by_counts[i] = len(shape) <= 1 or (len(shape) == 2 and shape[0] != 0)

    cdef inline bint _same_shape(self, object g, Py_ssize_t i) except -1:
        """Whether gradient ``g`` (a Tensor or Parameter) has the shape of param ``i``, leaving
        the element count to the caller where the shape is checked by counts."""
        cdef long ndim = self.ndim_of.of(g)
        if ndim != self.ndims[i]:
            return False
        if not self.shape_by_counts[i]:
            return PyObject_RichCompareBool(self.shape_of.of(g), self.shapes[i], Py_EQ)
        return self.ndims[i] == 0 or self.first_dim_of.of(g) == self.first_dims[i]

    def gather(self, list lists):
        """The gradients as GradPointers (with ``updated``: the params that have one), or None when
        ``lists`` (the groups' current ``params`` lists) no longer hold exactly these params, or a
        param or gradient needs the adapter's precise checks."""
        cdef GradPointers out = GradPointers(self.n, self.sizes)
        cdef Py_ssize_t i, size, nbytes, group, start = 0, end = 0
        cdef int storage
        cdef object p, t, g, dtype, group_params = None
        cdef object sharded_type = self.sharded_type     # (its instances have the slot)
        cdef list updated = out.updated
        data_ptr = self.data_ptr
        cdef object tensor_type = self.tensor_type, parameter_type = self.parameter_type
        if len(lists) != len(self.lengths):
            return None
        for group in range(len(lists)):
            group_params = lists[group]
            if type(group_params) is not list or len(<list>group_params) != self.lengths[group]:
                return None
        group = -1
        for i in range(self.n):
            while i == end:                      # the first param of the next (non-empty) group
                group += 1
                group_params = lists[group]
                start = end
                end += len(<list>group_params)
            p = self.params[i]
            if (<list>group_params)[i - start] is not p:
                return None                      # replaced in its group's list since the build
            t = self.shard_of.of(p) if self.sharded[i] else p
            if data_ptr(t) != self.param_ptrs[i]:
                return None                      # p.data = ... since the optimizer was built
            # (a DTensor does not override .grad: its C getter, which the adapter calls with
            # subclasses' __torch_function__ disabled, is the attribute itself)
            g = self.grad_of.of(p) if (type(p) is parameter_type or type(p) is tensor_type
                                       or self.sharded[i]) else p.grad
            if g is None:
                continue
            if self.sharded[i]:
                if type(g) is not sharded_type:
                    return None
                g = self.shard_of.of(g)
            if type(g) is not tensor_type and type(g) is not parameter_type:
                return None
            dtype = self.dtype_of.of(g)
            storage = self.storages[i]
            if dtype is not self.dtypes[i]:
                if dtype is not self.float32 or (storage != ST_BF16 and storage != ST_F16):
                    return None
                storage = ST_F32
            out.storages[i] = storage
            size = self.sizes[i]
            try:
                if not self._same_shape(g, i):
                    return None
                nbytes = self.nbytes_of.of(g)
                if nbytes != size * _itemsize(storage):    # the element count
                    return None
                if not self.is_contiguous(g) or self.is_neg(g):
                    return None
            except RuntimeError:                 # e.g. a sparse gradient has no strides, no nbytes
                return None
            out.data[i] = <char*>PyLong_AsVoidPtr(data_ptr(g)) if size else &_empty_gradient
            updated.append(t)
        return out


def same_items(list lists, list expected):
    """Whether ``lists`` (a list of lists) holds exactly the objects of ``expected`` (the same
    shape of lists), compared by identity: one pointer comparison an item. A flat step checks the
    param groups' ``params`` lists with it (``==`` would compare tensors by value)."""
    cdef Py_ssize_t g, i, n
    cdef list a, b
    if len(lists) != len(expected):
        return False
    for g in range(len(lists)):
        a = lists[g] if type(lists[g]) is list else None
        b = expected[g]
        if a is None:
            return False
        n = len(a)
        if n != len(b):
            return False
        for i in range(n):
            if <void*>a[i] is not <void*>b[i]:
                return False
    return True


def copy_gathered(GradPointers grads, list targets):
    """Copy each gathered gradient that is not at its place in a flat gradient buffer into it.

    ``targets[i]`` is ``(address, storage code)`` of param i's place. Returns how many were
    copied, or -1 with nothing copied if a param has no gradient or one is stored in another
    dtype than its place (the flat mode's precise checks then say which)."""
    cdef Py_ssize_t i, n = grads.n, copied = 0
    cdef char* place
    if len(targets) != n:
        return -1
    for i in range(n):
        if grads.data[i] == NULL or grads.storages[i] != <int>targets[i][1]:
            return -1
    for i in range(n):
        place = <char*>PyLong_AsVoidPtr(targets[i][0])
        if grads.data[i] != place and grads.sizes[i]:
            memmove(place, grads.data[i], grads.sizes[i] * _itemsize(grads.storages[i]))
            copied += 1
    return copied
