# Muon's driver (fastopt/algorithms/muon.py declares the algorithm). Per param with a gradient:
#   1. phase momentum (generated loop, on the pool): the momentum buffer and X = bf16(update)
#      into a float workspace (float64 params: a double one, then converted, exactly);
#   2. the Newton-Schulz iteration as torch runs it in bfloat16: X / max(||X||, eps), then
#      ns_steps times  G = X X^T, G' = b G + c G G, X = a X + G' X  (X^T X for tall matrices,
#      as torch transposes them), with the products in float32 through BLAS (ssyrk for the
#      symmetric ones, sgemm; SciPy's cython_blas, without the GIL, reached as below) on
#      bfloat16 values, and every result rounded to bfloat16 where torch's bfloat16 tensors
#      round it;
#   3. phase apply (generated loop): p * (1 - lr wd) - lr s X.
# The products of bfloat16 values are exact in float32, so what differs from torch is only the
# order of the float32 sums inside the matrix products (BLAS's blocking against torch's bfloat16
# kernels): a sum that lands next to a bfloat16 rounding boundary rounds the other way, and the
# iteration carries that on. The result agrees with torch to a few bfloat16 ulps of the update
# (tests/optim/test_muon.py holds it to that); within fastopt it is deterministic for any fastopt
# thread count (BLAS runs on OpenBLAS's own threads).
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.stdint cimport uint16_t

# SciPy's BLAS is reached through the function pointers scipy.linalg.cython_blas exports in its
# __pyx_capi__ (the C-API export of Cython modules, what `cimport` itself uses), taken when the
# first MuonBucket is built. A `cimport` of it would import all of scipy.linalg (more than
# `import fastopt` costs) whenever this module is imported, that is, for the first optimizer of
# any kind. The signatures are those of scipy/linalg/cython_blas.pxd (`s` is float there).
ctypedef void (*sgemm_t)(char* transa, char* transb, int* m, int* n, int* k, float* alpha,
                         float* a, int* lda, float* b, int* ldb, float* beta, float* c,
                         int* ldc) noexcept nogil
ctypedef void (*ssyrk_t)(char* uplo, char* trans, int* n, int* k, float* alpha, float* a,
                         int* lda, float* beta, float* c, int* ldc) noexcept nogil

cdef sgemm_t _sgemm = NULL
cdef ssyrk_t _ssyrk = NULL


cdef void* _blas_function(dict capi, str name) except NULL:
    """The C function ``name`` of scipy.linalg.cython_blas, from its capsule in ``capi``."""
    capsule = capi[name]
    return PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


cdef int _load_blas() except -1:
    """Take sgemm and ssyrk from SciPy's BLAS, once (imports scipy.linalg.cython_blas)."""
    global _sgemm, _ssyrk
    if _sgemm != NULL and _ssyrk != NULL:
        return 0
    try:
        from scipy.linalg import cython_blas
    except ImportError as exc:
        raise ImportError(
            "Muon needs SciPy's BLAS (scipy.linalg.cython_blas): pip install scipy") from exc
    capi = cython_blas.__pyx_capi__
    _sgemm = <sgemm_t>_blas_function(capi, "sgemm")
    _ssyrk = <ssyrk_t>_blas_function(capi, "ssyrk")
    return 0


cdef extern from "simd.h":
    float fo_bf16_load(uint16_t b) noexcept nogil
    uint16_t fo_bf16_rne(float f) noexcept nogil


cdef inline float fo_bf16(float x) noexcept nogil:
    """The nearest bfloat16 (ties to even; NaN to torch's quiet NaN), as a float."""
    return fo_bf16_load(fo_bf16_rne(x))


cdef void _mirror_upper(float* a, int n) noexcept nogil:
    """Copy the upper triangle of column-major n x n ``a`` (what ssyrk wrote) into the lower."""
    cdef Py_ssize_t i, j
    for j in range(n):
        for i in range(j + 1, n):
            a[i + j * <Py_ssize_t>n] = a[j + i * <Py_ssize_t>n]


cdef void _round_bf16(float* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = fo_bf16(x[i])


cdef void _newton_schulz(float* X, float* P, float* G, float* GG, int rows, int cols, double a,
                         double b, double c, int steps, double eps, const KernelTable* table) noexcept nogil:
    """Orthogonalize the row-major rows x cols matrix X in place (see the top of this file).

    BLAS sees X as the column-major cols x rows matrix X^T (leading dimension cols)."""
    cdef Py_ssize_t n = <Py_ssize_t>rows * cols, i
    cdef int m = rows if rows <= cols else cols
    cdef Py_ssize_t mm = <Py_ssize_t>m * m
    cdef float one = 1.0, zero = 0.0
    cdef float fa = <float>a, fb = <float>b, fc = <float>c
    cdef float norm, floor
    cdef char up = b'U', no = b'N', tr = b'T'
    cdef int it
    # ortho_grad.div_(ortho_grad.norm().clamp(min=eps)): the norm and the clamp in bfloat16
    norm = fo_bf16(<float>sqrt(table.reduce(ST_F32, RED_SUMSQ, 0.0, <const char*>X, n)))
    floor = fo_bf16(<float>eps)
    norm = floor if norm < floor else norm
    for i in range(n):
        X[i] = fo_bf16(X[i] / norm)
    for it in range(steps):
        if rows <= cols:     # G = X X^T (rows x rows)
            _ssyrk(&up, &tr, &m, &cols, &one, X, &cols, &zero, G, &m)
        else:                # torch transposes: G = X^T X (cols x cols)
            _ssyrk(&up, &no, &m, &rows, &one, X, &cols, &zero, G, &m)
        _mirror_upper(G, m)
        _round_bf16(G, mm)
        # torch.addmm(G, G, G, beta=b, alpha=c): b G + c (G G), rounded once
        _ssyrk(&up, &no, &m, &m, &one, G, &m, &zero, GG, &m)
        _mirror_upper(GG, m)
        for i in range(mm):
            GG[i] = fo_bf16(fb * G[i] + fc * GG[i])
        # torch.addmm(X, G', X, beta=a): a X + G' X, rounded once
        if rows <= cols:     # (G' X)^T = X^T G' (G' symmetric)
            _sgemm(&no, &no, &cols, &rows, &rows, &one, X, &cols, GG, &m, &zero, P, &cols)
        else:                # G' X^T (BLAS's X) for the transposed problem
            _sgemm(&no, &no, &cols, &rows, &cols, &one, GG, &m, X, &cols, &zero, P, &cols)
        for i in range(n):
            X[i] = fo_bf16(fa * X[i] + P[i])


cdef class MuonBucket(ParamBucket):
    """The bucket of fastopt.Muon: the generic bucket's gathering and bookkeeping, the momentum
    and the update through the declaration's element loops, and the Newton-Schulz iteration
    through BLAS (see the top of this file)."""
    cdef list _workspace        # float32 X, P, G, GG and, for float64 params, a double X
    cdef float* _X
    cdef float* _P
    cdef float* _G
    cdef float* _GG
    cdef double* _Xd

    def __cinit__(self, BucketSpec spec not None):
        # BLAS before anything can run without the GIL (step() calls it in a nogil block)
        _load_blas()

    cdef _allocate(self):
        cdef Py_ssize_t k, n = 1, mm = 1
        for k in range(self.n_arrays):
            rows, cols = (<object>self.params[k]).shape
            n = max(n, rows * cols)
            mm = max(mm, min(rows, cols) ** 2)
        arrays = [np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(mm, np.float32),
                  np.zeros(mm, np.float32)]
        if self.storage == ST_F64:
            arrays.append(np.zeros(n, np.float64))
            self._Xd = <double*>cnp.PyArray_DATA(<cnp.ndarray>arrays[4])
        self._X = <float*>cnp.PyArray_DATA(<cnp.ndarray>arrays[0])
        self._P = <float*>cnp.PyArray_DATA(<cnp.ndarray>arrays[1])
        self._G = <float*>cnp.PyArray_DATA(<cnp.ndarray>arrays[2])
        self._GG = <float*>cnp.PyArray_DATA(<cnp.ndarray>arrays[3])
        self._workspace = arrays

    def step(self, grads, PackedHyperparameters hyper not None, double gmul, tuple active):
        """One Muon step over the params that have a gradient (see ParamBucket.step)."""
        cdef list keep_alive = []
        cdef double hyper_buf[MAX_HYPER]
        cdef bint mark_lazy
        cdef Py_ssize_t k, i, n
        cdef int rows, cols
        cdef PhaseJob job
        cdef const muon_hyper* h = <const muon_hyper*>hyper_buf
        cdef muon_array* s
        cdef double ratio
        cdef bint f32 = self.storage == ST_F32
        cdef const KernelTable* table = kernel_table()
        cdef int64_t* steps = <int64_t*>cnp.PyArray_DATA(self.steps)
        cdef uint8_t* initialized = <uint8_t*>cnp.PyArray_DATA(self.initialized)
        cdef uint8_t* master_ready = <uint8_t*>cnp.PyArray_DATA(self.master_ready)   # (no master here)
        self._begin_step(grads, hyper, active, keep_alive, hyper_buf, &mark_lazy)
        if self._workspace is None:
            self._allocate()
        shapes = [(<object>p).shape for p in self.params]
        cdef int[:, ::1] dims = np.array(shapes, dtype=np.intc).reshape(self.n_arrays, 2)
        memset(&job, 0, sizeof(job))
        job.alg = self.alg
        job.config = self.config_same
        job.itemsize = 4 if f32 else 8
        job.hyper = hyper_buf
        with nogil:
            self._prepare(hyper_buf, steps, initialized, master_ready)
            for k in range(self.n_arrays):
                if self._grads[k] == NULL:
                    continue
                rows, cols = dims[k, 0], dims[k, 1]
                n = <Py_ssize_t>rows * cols
                # torch's _adjust_lr: A, B = param.shape
                if h.adjust_lr_fn == 2:        # "match_rms_adamw"
                    ratio = 0.2 * sqrt(<double>(rows if rows > cols else cols))
                else:                          # None or "original"
                    ratio = sqrt(<double>rows / cols) if rows > cols else 1.0
                s = <muon_array*>(self._per_array + k * self.alg.array_size)
                s.lr_neg = -(h.lr * ratio)
                job.scalars = s
                job.n = n
                # 1. the momentum buffer, and X = bf16(update)
                job.loop = self._variant[k] + MUON_PHASE_MOMENTUM
                job.gmul = gmul
                job.p = <char*>self._X if f32 else <char*>self._Xd
                job.g = self._grads[k]
                job.state[0] = self._state[0] + self._offsets[k] * job.itemsize
                run_phase(&job)
                if not f32:
                    for i in range(n):
                        self._X[i] = <float>self._Xd[i]      # bfloat16 values: exact
                if n == 0:
                    continue
                # 2. Newton-Schulz
                _newton_schulz(self._X, self._P, self._G, self._GG, rows, cols, h.ns_a, h.ns_b,
                               h.ns_c, <int>h.ns_steps, h.eps, table)
                # 3. the update
                if not f32:
                    for i in range(n):
                        self._Xd[i] = <double>self._X[i]
                job.loop = self._variant[k] + MUON_PHASE_APPLY
                job.gmul = 1.0
                job.p = self._params[k]
                job.g = <const char*>self._X if f32 else <const char*>self._Xd
                job.state[0] = NULL
                run_phase(&job)
            self._count_step(steps, initialized, mark_lazy)
