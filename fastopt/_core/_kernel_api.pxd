# The interface between the kernel modules (one per instruction set: _kernels, _kernels_avx2) and
# the drivers that are compiled once (_bucket, _reduce). A kernel module fills a KernelTable; the
# driver gets a pointer to it through a capsule (see _table.pyx) and only ever calls through it, so
# the instruction set is chosen once, at import.

# One array span of an element loop: (hyperparameter struct, this array's per-array scalars,
# gradient multiplier, param, grad, elementwise states, element count).
ctypedef void (*loop_f32_fn)(const void* hyper, const void* arr, float gmul, float* p,
                             const float* g, float** state, Py_ssize_t n) noexcept nogil
ctypedef void (*loop_f64_fn)(const void* hyper, const void* arr, double gmul, double* p,
                             const double* g, double** state, Py_ssize_t n) noexcept nogil
# The per-array prologue: fills the array's scalars, updates its scalar states, returns its variant.
ctypedef int (*prepare_fn)(const void* hyper, double step, int first_use, float** scalar_state,
                           Py_ssize_t k, void* out) noexcept nogil

cdef struct AlgorithmKernels:
    const char* name
    int n_variants
    int n_state              # elementwise states, in declaration order
    int n_scalar_state
    Py_ssize_t hyper_size    # sizeof the hyperparameter struct
    Py_ssize_t array_size    # sizeof the per-array scalars struct
    int weight               # relative cost per element (thread threshold)
    prepare_fn prepare_f32
    prepare_fn prepare_f64
    const loop_f32_fn* loops_f32    # n_variants entries
    const loop_f64_fn* loops_f64

# Reductions over a span: sum of squares, max |x| (NaN-propagating), sum |x|^p, finiteness (a sum
# of x - x: 0 when finite, NaN otherwise). All accumulate in float64 in a fixed order.
cdef enum:
    RED_SUMSQ = 0
    RED_MAXABS = 1
    RED_SUMPOW = 2
    RED_NONFINITE = 3
# In-place transforms over a span: multiply by a factor; clamp to [-a, a] (NaN stays NaN).
cdef enum:
    TR_SCALE = 0
    TR_CLAMP = 1

ctypedef double (*reduce_f32_fn)(int kind, double p, const float* x, Py_ssize_t n) noexcept nogil
ctypedef double (*reduce_f64_fn)(int kind, double p, const double* x, Py_ssize_t n) noexcept nogil
ctypedef void (*transform_f32_fn)(int kind, double a, float* x, Py_ssize_t n) noexcept nogil
ctypedef void (*transform_f64_fn)(int kind, double a, double* x, Py_ssize_t n) noexcept nogil

cdef struct KernelTable:
    const char* vector_isa
    int n_algorithms
    const AlgorithmKernels* algorithms
    reduce_f32_fn reduce_f32
    reduce_f64_fn reduce_f64
    transform_f32_fn transform_f32
    transform_f64_fn transform_f64
