# The typed values the Python layer (fastopt/optimizer.py) hands to the compiled drivers
# (_bucket.pyx): what crosses the boundary is named and typed, so a driver never has to trust a
# position or a byte count.
#
# * PackedHyperparameters: a kernel's hyperparameter struct together with the kernel it was packed
#   for. A bucket compares that kernel with its own (one integer comparison per step) and refuses
#   the struct of another kernel, even one of the same size, whose bytes it would otherwise read
#   as its own fields.
# * BucketSpec: what a bucket is built from, given by name (keyword arguments only).
cimport cython

from fastopt._core._kernel_api cimport KernelTable
from fastopt._core._table cimport kernel_table, kernel_module


@cython.final
cdef class PackedHyperparameters:
    """The checked hyperparameters of one param group as kernel ``kernel``'s struct.

    Parameters
    ----------
    kernel : int
        The kernel's index in the kernel table (``fastopt._backend.kernel_index``).
    values : dict
        Every field of the kernel's hyperparameter struct, by name (a missing one raises).
    """

    def __init__(self, int kernel, dict values):
        cdef const KernelTable* table = kernel_table()
        if table == NULL:
            raise RuntimeError("fastopt's kernels are not loaded (import fastopt first)")
        if not 0 <= kernel < table.n_algorithms:
            raise ValueError(f"kernel must be a kernel table index in [0, {table.n_algorithms}), "
                             f"got {kernel}")
        data = kernel_module().PACKERS[kernel](values)
        if len(data) != table.algorithms[kernel].hyper_size:
            raise RuntimeError(f"the {table.algorithms[kernel].name.decode()} kernel's packer made "
                               f"{len(data)} bytes, not its struct's "
                               f"{table.algorithms[kernel].hyper_size}; rebuild fastopt")
        self.kernel = kernel
        self.kernel_name = table.algorithms[kernel].name.decode()
        self.data = data

    def __bytes__(self):
        return self.data

    def __repr__(self):
        return f"PackedHyperparameters(kernel={self.kernel_name!r}, {len(self.data)} bytes)"


@cython.final
cdef class BucketSpec:
    """What a ParamBucket is built from: the params of one param group that share a dtype, and
    how their algorithm's kernel runs them. Every value is given by name.

    Parameters
    ----------
    params : list of ndarray
        Validated, C-contiguous, writeable arrays of one dtype (float32, float64, float16 or
        bfloat16).
    indices : sequence of int
        For each param, its position in the optimizer's flat list of params (and of grads).
    kernel : int
        The algorithm's index in the kernel table (``fastopt.algorithms.KERNELS`` order).
    state_names : tuple of str
        The algorithm's elementwise states, in declaration order (the kernel's order).
    scalar_states : tuple of (str, float)
        Its scalar states and their initial values.
    lazy_states : tuple of int
        Indices (into ``state_names``) of states whose first write replaces the buffer: a step in
        which one is active marks the array initialized (``first_use`` turns 0).
    config : int
        The storage configuration (kernel table index) of a step whose gradient is stored as the
        param.
    config_f32_grad : int
        The storage configuration of a step whose gradient is float32 (-1: not allowed).
    state_like : ndarray
        An array of the dtype (and kind) the elementwise states are kept in.
    master : bool
        Keep a float32 master copy of every param (half-precision params).
    seed : int
        The stochastic-rounding seed (used by configurations that round stochastically).
    code_maps : tuple of str, optional
        For states kept in 8 bits (bitsandbytes' blockwise format; ``state_like`` is uint8): each
        state's dynamic map, ``"signed"`` or ``"unsigned"``, in ``state_names`` order. Empty (the
        default): the states are kept as ``state_like``.
    """

    def __init__(self, *, list params, indices, int kernel, tuple state_names,
                 tuple scalar_states, tuple lazy_states, int config, int config_f32_grad,
                 state_like, bint master, seed, tuple code_maps=()):
        if code_maps and (len(code_maps) != len(state_names)
                          or any(m not in ("signed", "unsigned") for m in code_maps)):
            raise ValueError("code_maps must give 'signed' or 'unsigned' for every state")
        self.code_maps = code_maps
        self.params = params
        self.indices = tuple(int(i) for i in indices)
        self.kernel = kernel
        self.state_names = state_names
        self.scalar_states = scalar_states
        self.lazy_states = lazy_states
        self.config = config
        self.config_f32_grad = config_f32_grad
        self.state_like = state_like
        self.master = master
        self.seed = int(seed)

    def __repr__(self):
        return (f"BucketSpec(kernel={self.kernel}, {len(self.params)} params, "
                f"config={self.config}, config_f32_grad={self.config_f32_grad}, "
                f"master={self.master})")
