# The typed values the Python layer hands to the compiled drivers (see _contracts.pyx).

cdef class PackedHyperparameters:
    cdef readonly int kernel            # index in the kernel table it was packed for
    cdef readonly str kernel_name
    cdef readonly bytes data            # the kernel's hyperparameter struct


cdef class BucketSpec:
    cdef readonly list params
    cdef readonly tuple indices
    cdef readonly int kernel
    cdef readonly tuple state_names
    cdef readonly tuple scalar_states
    cdef readonly tuple lazy_states
    cdef readonly int config
    cdef readonly int config_f32_grad
    cdef readonly object state_like
    cdef readonly bint master
    cdef readonly object seed
    cdef readonly tuple code_maps       # 8-bit states: per state, its map (empty: not 8-bit)
