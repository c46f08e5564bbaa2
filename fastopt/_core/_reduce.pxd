cdef class ArraySet:
    cdef Py_ssize_t n_arrays
    cdef Py_ssize_t total
    cdef Py_ssize_t* offsets
    cdef char** data
    cdef int* storages          # per array (ST_* codes)
    cdef bint owner
    cdef list keep_alive

    cdef void _borrow(self, Py_ssize_t n, char** data, Py_ssize_t* offsets, int* storages)
    cdef double _reduce(self, int kind, double p) except? -1.0
    cdef void _transform(self, int kind, double a) noexcept
