# The interface between the kernel modules (one per instruction set: _kernels, _kernels_avx2, ...)
# and the drivers (_bucket, itself built per instruction set for the compiled drivers' own loops,
# and _reduce, compiled once). A kernel module fills a KernelTable; the driver gets a pointer to it
# through a capsule (see _table.pyx) and only ever calls through it, so the instruction set is
# chosen once, at import.
from libc.stdint cimport uint64_t

# How an array is stored: the codes of fastopt/_core/_storage.py, which the build writes into
# _storage.h (build_tools/codegen.py).
cdef extern from "_storage.h":
    enum:
        ST_F32
        ST_F64
        ST_BF16
        ST_F16
        ST_Q8
    # 8-bit states: elements per block (one float32 absmax each), and where a loop finds the
    # absmax pointers among its state pointers
    const Py_ssize_t Q8_BLOCK "FO_Q8_BLOCK"
    const int Q8_ABSMAX "FO_Q8_ABSMAX"

# One array span of an element loop: (hyperparameter struct, this array's per-array scalars,
# gradient multiplier, param, grad, elementwise states, float32 master copy or NULL, element count,
# stochastic-rounding key of this array and step, index in the array of the span's first element).
# Pointers are to each array's own storage (the loop knows its storage configuration).
ctypedef void (*loop_fn)(const void* hyper, const void* arr, double gmul, char* p, const char* g,
                         char** state, float* master, Py_ssize_t n, uint64_t sr_key,
                         Py_ssize_t index0) noexcept nogil
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
    prepare_fn prepare_f32   # float32 compute (float32 and half-precision storage)
    prepare_fn prepare_f64
    const loop_fn* const* loops     # [storage configuration][variant]

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

# (storage, kind, p, data, n) and (storage, kind, a, data, n).
ctypedef double (*reduce_fn)(int storage, int kind, double p, const char* x, Py_ssize_t n) noexcept nogil
ctypedef void (*transform_fn)(int storage, int kind, double a, char* x, Py_ssize_t n) noexcept nogil
# Copy (converting) n elements of storage `storage` into float32 (a master copy's first values).
ctypedef void (*widen_fn)(int storage, const char* x, float* out, Py_ssize_t n) noexcept nogil

cdef struct KernelTable:
    const char* vector_isa
    int n_algorithms
    const AlgorithmKernels* algorithms
    int n_configs
    reduce_fn reduce
    transform_fn transform
    widen_fn widen
