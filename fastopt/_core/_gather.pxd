cimport numpy as cnp

cdef int storage_code(cnp.ndarray a) noexcept
cdef object as_array(object obj, str what)
cdef char* checked_grad(object grad, cnp.ndarray param, int storage, Py_ssize_t index,
                        bint need_writeable, list keep_alive, int* grad_storage) except? NULL
cdef cnp.ndarray checked_array(object obj, str what, bint need_writeable, int* storage)


cdef class GradPointers:
    cdef Py_ssize_t n
    cdef char** data          # one per param, NULL: no gradient this step
    cdef Py_ssize_t* sizes    # elements of each param
    cdef int* storages        # how each gradient is stored (_kernel_api's ST_* codes)
    cdef readonly list updated    # what the front end says was given a gradient (to bump versions)
