# LAMB's driver (fastopt/algorithms/lamb.py declares the algorithm): the trust ratio's passes of
# _driver_trust_ratio.pxi, with d = u = m / (sqrt(v) + eps sqrt(1 - beta2^t)) written by the
# moment phase into a scratch block (and recomputed by the apply phase, m read through g), and coef = step_size * s = -lr sqrt(1 - beta2^t) /
# (1 - beta1^t) * s.


cdef class LambBucket(TrustRatioBucket):
    """The bucket of fastopt.LAMB (see _driver_trust_ratio.pxi)."""

    def __cinit__(self, BucketSpec spec not None):
        self._phase_moment = LAMB_PHASE_MOMENT
        self._phase_apply = LAMB_PHASE_APPLY
        self._phase_fused = LAMB_PHASE_FUSED
        self._measured_state = -1     # u goes to scratch, through the loop's p

    def __init__(self, BucketSpec spec not None):
        TrustRatioBucket.__init__(self, spec)
        self._apply_state = self.state_names.index("exp_avg")

    cdef double _max_unorm(self, const void* hyper) noexcept nogil:
        return (<const lamb_hyper*>hyper).max_unorm

    cdef void _set_coef(self, Py_ssize_t k, double scale) noexcept nogil:
        cdef lamb_array* s = <lamb_array*>(self._per_array + k * self.alg.array_size)
        s.coef = s.step_size * scale
