"""Argument checks shared by every public function and class.

All checks live here (and, for the per-step gradient checks that must run at C speed, in
``fastopt/_core/_gather.pyx``). Hyperparameters are checked against the constraints their
algorithm declares (``fastopt/algorithms``) by :func:`check_constraint`. Each failure raises TypeError (wrong kind of value) or ValueError
(right kind, wrong value) whose message names the argument and says what was expected.
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_param_array(obj, name):
    """``obj`` as a float32/float64 C-contiguous writeable ndarray, without copying.

    Objects with the buffer protocol (``torch_tensor.numpy()``, ``memoryview``, ``array.array``) are
    viewed, never copied, so updates land in the caller's memory.
    """
    if not isinstance(obj, np.ndarray):
        if isinstance(obj, (dict, str, bytes, numbers.Number)) or obj is None:
            raise TypeError(f"{name} must be a float32 or float64 array, got {type(obj).__name__}")
        try:
            arr = np.asarray(obj)
        except Exception as exc:  # an object NumPy cannot view
            raise TypeError(f"{name} must be a float32 or float64 array, got {type(obj).__name__}") from exc
        if arr.dtype == object or arr.base is None and not isinstance(obj, np.ndarray):
            # np.asarray made a new array (a list, say): updates would never reach the caller.
            raise TypeError(
                f"{name} must be an array that can be updated in place (a NumPy array or a writable "
                f"buffer), got {type(obj).__name__}")
    else:
        arr = obj
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray and keep that array)")
    if not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; params are updated in place")
    if not arr.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype")
    return arr


def check_no_overlap(arrays, names):
    """Raise ValueError if two of ``arrays`` share memory (the same param twice, or two views)."""
    spans = []
    for arr, name in zip(arrays, names):
        if arr.nbytes == 0:
            continue
        start = arr.__array_interface__["data"][0]
        spans.append((start, start + arr.nbytes, name))
    spans.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(
                f"{n0} and {n1} share memory; each param must appear once, in one param group")


def check_real(name, value, *, low=None, high=None, low_inclusive=True, high_inclusive=True):
    """``value`` as a float, finite and within the given bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:   # an int beyond float range
        raise ValueError(f"{name} must be finite, got an integer too large for a float") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value}")
    return value


def check_bool(name, value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_integer(name, value, *, low=None, high=None):
    """``value`` as an int (bools refused) within the given bounds (inclusive)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_constraint(name, value, constraint):
    """Check ``value`` against a declared ``fastopt.algorithms._spec.Constraint``; return it checked.

    A ``pair`` returns a tuple of two checked items, named ``name[0]`` and ``name[1]`` in errors; a
    ``tuple`` one checked item per declared item; a ``choice`` the index of the value; an
    ``optional`` constraint passes None through.
    """
    kind = constraint.kind
    if value is None and constraint.optional:
        return None
    if kind == "real":
        return check_real(name, value, low=constraint.low, high=constraint.high,
                          low_inclusive=constraint.low_inclusive,
                          high_inclusive=constraint.high_inclusive)
    if kind == "flag":
        return check_bool(name, value)
    if kind == "integer":
        return check_integer(name, value, low=constraint.low, high=constraint.high)
    if kind == "pair":
        if isinstance(value, (str, bytes, dict)):
            raise TypeError(f"{name} must be a pair, got {value!r}")
        try:
            first, second = value
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a pair, got {value!r}") from None
        return (check_constraint(f"{name}[0]", first, constraint.item),
                check_constraint(f"{name}[1]", second, constraint.item))
    if kind == "tuple":
        n = len(constraint.items)
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) != n:
            raise TypeError(f"{name} must be a tuple of {n} values, got {value!r}")
        return tuple(check_constraint(f"{name}[{i}]", v, c)
                     for i, (v, c) in enumerate(zip(value, constraint.items)))
    if kind == "choice":
        for index, allowed in enumerate(constraint.values):
            if type(value) is type(allowed) and value == allowed:
                return index
        raise ValueError(f"{name} must be one of {', '.join(map(repr, constraint.values))}; "
                         f"{value!r} is not supported")
    raise ValueError(f"unknown constraint kind {kind!r} for {name}")


def check_norm_type(norm_type):
    """A norm's order: a real number > 0, or ``inf`` (the string "inf" too), as a float."""
    if isinstance(norm_type, str):
        if norm_type.lower() != "inf":
            raise ValueError(f"norm_type must be a number > 0 or 'inf', got {norm_type!r}")
        return math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not (isinstance(norm_type, numbers.Real)
                                                       or hasattr(norm_type, "__float__")):
        raise TypeError(f"norm_type must be a number > 0 or 'inf', got {type(norm_type).__name__}")
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    return norm_type


#: More threads than this is surely a mistake (and libgomp would try to start them all).
MAX_THREADS = 1 << 16


def check_num_threads(n):
    """``n`` as a thread count for ``set_num_threads``: an int in [0, MAX_THREADS] (0: OpenMP's default)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_threads must be an integer, got {type(n).__name__}")
    n = int(n)
    if not 0 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads must be in [0, {MAX_THREADS}], got {n}")
    return n
