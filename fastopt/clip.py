"""Gradient clipping over many arrays: by global norm and by value."""
import math

from . import _validation as V
from ._backend import kernels


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    r"""Scale ``grads`` in place so that their global norm is at most ``max_norm``.

    The norm is taken over all elements of all arrays together, accumulated in float64:

    .. math::

        \|g\|_p = \Big(\sum_i \sum_j |g_{ij}|^p\Big)^{1/p}, \qquad
        \|g\|_\infty = \max_{i,j} |g_{ij}|

    and when :math:`c = \text{max\_norm} / (\|g\|_p + 10^{-6}) < 1` every element is multiplied
    by :math:`c` (as ``torch.nn.utils.clip_grad_norm_`` does; a NaN norm makes ``c`` NaN and
    propagates, unless ``error_if_nonfinite``).

    Parameters
    ----------
    grads : ndarray or iterable of ndarray
        float32/float64, C-contiguous, writeable arrays; mixed dtypes are allowed.
    max_norm : float
        The largest allowed norm (>= 0).
    norm_type : float or "inf", default 2.0
        :math:`p > 0`, or ``inf`` for the max-norm.
    error_if_nonfinite : bool, default False
        Raise RuntimeError (before touching the gradients) when the norm is NaN or infinite.

    Returns
    -------
    float
        The total norm before clipping.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> grads = [np.array([3.0, 0.0]), np.array([[0.0, 4.0]])]
    >>> fastopt.clip_grad_norm_(grads, max_norm=1.0)       # the norm before clipping
    5.0
    >>> print(np.round(grads[0], 4), np.round(grads[1], 4))
    [0.6 0. ] [[0.  0.8]]
    >>> round(fastopt.clip_grad_norm_(grads, max_norm=1.0, norm_type="inf"), 6)
    0.8
    """
    max_norm = V.check_real("max_norm", max_norm, low=0.0)
    norm_type = V.check_norm_type(norm_type)
    error_if_nonfinite = V.check_bool("error_if_nonfinite", error_if_nonfinite)
    arrays = kernels.gather_arrays(grads, "grads", True)
    total = arrays.norm(norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients is non-finite ({total}), so it "
            "cannot be clipped; the gradients were left unchanged. Set error_if_nonfinite=False "
            "to clip anyway (the gradients then become NaN).")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:
        arrays.scale_(coef)
    return total


def clip_grad_value_(grads, clip_value):
    r"""Clamp every element of ``grads`` in place to :math:`[-c, c]` (NaN stays NaN).

    Parameters
    ----------
    grads : ndarray or iterable of ndarray
        float32/float64, C-contiguous, writeable arrays.
    clip_value : float
        :math:`c \ge 0`.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> grads = [np.array([-3.0, 0.5, 2.0]), np.array([np.nan, -0.25])]
    >>> fastopt.clip_grad_value_(grads, 1.0)
    >>> grads
    [array([-1. ,  0.5,  1. ]), array([  nan, -0.25])]
    """
    clip_value = V.check_real("clip_value", clip_value, low=0.0)
    kernels.gather_arrays(grads, "grads", True).clamp_(clip_value)


def grads_finite(grads):
    """True if every element of ``grads`` is finite (one read-only pass, any thread count).

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> grads = [np.array([1.0, 2.0]), np.zeros((2, 2), dtype=np.float32)]
    >>> fastopt.grads_finite(grads)
    True
    >>> grads[1][0, 1] = np.inf
    >>> fastopt.grads_finite(grads)
    False
    """
    return kernels.gather_arrays(grads, "grads", False).all_finite()
