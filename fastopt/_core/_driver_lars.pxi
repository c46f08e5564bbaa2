# LARS's driver (fastopt/algorithms/lars.py declares the algorithm): the trust ratio's passes of
# _driver_trust_ratio.pxi, with d = B, the momentum buffer the moment phase updates (it reads a
# copy of p for the weight decay; the apply phase reads B through g), and coef = -lr * s.


cdef class LarsBucket(TrustRatioBucket):
    """The bucket of fastopt.LARS (see _driver_trust_ratio.pxi)."""

    def __cinit__(self, BucketSpec spec not None):
        self._phase_moment = LARS_PHASE_MOMENT
        self._phase_apply = LARS_PHASE_APPLY
        self._phase_fused = LARS_PHASE_FUSED

    def __init__(self, BucketSpec spec not None):
        TrustRatioBucket.__init__(self, spec)
        self._measured_state = self._apply_state = self.state_names.index("momentum_buffer")

    cdef double _max_unorm(self, const void* hyper) noexcept nogil:
        return (<const lars_hyper*>hyper).max_unorm

    cdef void _set_coef(self, Py_ssize_t k, double scale) noexcept nogil:
        cdef lars_array* s = <lars_array*>(self._per_array + k * self.alg.array_size)
        s.coef = s.lr_neg * scale
