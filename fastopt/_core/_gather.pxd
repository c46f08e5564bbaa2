cimport numpy as cnp

cdef object as_array(object obj, str what)
cdef char* checked_grad(object grad, cnp.ndarray param, int typenum, Py_ssize_t index,
                        bint need_writeable, list keep_alive) except? NULL
cdef cnp.ndarray checked_array(object obj, str what, bint need_writeable)


cdef class GradPointers:
    cdef Py_ssize_t n
    cdef char** data          # one per param, NULL: no gradient this step
    cdef Py_ssize_t* sizes    # elements of each param
    cdef int* typenums        # NumPy type number of each param (float32/float64)
    cdef readonly list updated    # what the front end says was given a gradient (to bump versions)
