cimport numpy as cnp

cdef object as_array(object obj, str what)
cdef char* checked_grad(object grad, cnp.ndarray param, int typenum, Py_ssize_t index,
                        bint need_writeable, list keep_alive) except? NULL
cdef cnp.ndarray checked_array(object obj, str what, bint need_writeable)
