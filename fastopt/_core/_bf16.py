"""bfloat16 without ml_dtypes: the array kind the compiled core recognizes as bfloat16 bits, and
rounding to bfloat16.

It lives in the core because the core's drivers need it (``_gather.storage_code`` tells a
:class:`BF16Array` apart from a plain uint16 array; a bucket fills a bfloat16 state with
:func:`bf16_bits`); ``fastopt._dtypes`` presents it to the Python layer.
"""
import numpy as np


class BF16Array(np.ndarray):
    """bfloat16 values as their uint16 bit patterns (a view; no arithmetic is meant on it).

    fastopt.torch views a torch.bfloat16 tensor this way when ml_dtypes is not installed.
    """

    def __array_finalize__(self, obj):
        pass


def bf16_bits(values):
    """float64/float32 values rounded to bfloat16 (nearest, ties to even), as uint16 bits."""
    f = np.asarray(values, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), rounded)
