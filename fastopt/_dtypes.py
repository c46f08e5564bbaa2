"""The dtypes fastopt stores params, gradients and states in, and how each is told apart.

* float32, float64, float16: NumPy's own dtypes.
* bfloat16: ``ml_dtypes.bfloat16`` arrays (the NumPy bfloat16 dtype JAX and TensorFlow use; an
  optional dependency), recognized by the dtype's name so ml_dtypes need not be imported here; or,
  inside fastopt (``fastopt.torch`` without ml_dtypes), :class:`BF16Array`: the bits of bfloat16
  values in a uint16 array.

The storage codes are declared once, in ``fastopt/_core/_storage.py`` (the compiled core's are
generated from it).
"""
import numpy as np

# BF16Array and bf16_bits live in the compiled core's package, which needs them (and imports
# nothing from this layer); they are fastopt's bfloat16 helpers all the same.
from ._core._bf16 import BF16Array, bf16_bits  # noqa: F401
from ._core._storage import BF16, F16, F32, F64, HALF, NAMES, Q8  # noqa: F401 (re-exported)


def bf16_dtype():
    """``ml_dtypes.bfloat16`` if ml_dtypes is installed, else None."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def storage_of(array):
    """The storage code of an ndarray, or None for a dtype fastopt does not store."""
    dtype = array.dtype
    if dtype == np.float32:
        return F32
    if dtype == np.float64:
        return F64
    if dtype == np.float16:
        return F16
    if dtype.itemsize == 2 and (dtype.name == "bfloat16" or
                                (type(array) is BF16Array and dtype == np.uint16)):
        return BF16
    return None


def empty_like_storage(storage, shape, like=None):
    """An array of ``storage``, shaped ``shape``, of the same kind as ``like`` (a bfloat16 array of
    ml_dtypes, or a BF16Array) where that matters; 8-bit states (``Q8``) are uint8 codes."""
    if storage != BF16:
        return np.empty(shape, dtype=NAMES[storage])
    if like is not None and type(like) is BF16Array:
        return np.empty(shape, dtype=np.uint16).view(BF16Array)
    dtype = bf16_dtype()
    if dtype is None:
        return np.empty(shape, dtype=np.uint16).view(BF16Array)
    return np.empty(shape, dtype=dtype)
