"""Argument checks shared by every public function and class.

All checks live here (and, for the per-step gradient checks that must run at C speed, in
``fastopt/_core/_gather.pyx``). Hyperparameters are checked against the constraints their
algorithm declares (``fastopt/algorithms``) by :func:`check_constraint`. Each failure raises
TypeError (wrong kind of value) or ValueError
(right kind, wrong value) whose message names the argument and says what was expected.
"""
import math
import numbers

import numpy as np

from . import _dtypes
from .algorithms._spec import REQUIRED

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PARAM_DTYPES = "float32, float64, float16 or bfloat16"


def is_torch_tensor(obj):
    """Whether ``obj`` is a torch tensor (a ``Parameter`` too), told by its type, without importing
    torch."""
    return any(cls.__name__ in ("Tensor", "TensorBase") and cls.__module__.split(".")[0] == "torch"
               for cls in type(obj).__mro__)


def as_param_array(obj, name, torch_class=None):
    """``obj`` as a C-contiguous writeable ndarray of a dtype fastopt steps, without copying.

    Objects with the buffer protocol (``torch_tensor.numpy()``, ``memoryview``, ``array.array``) are
    viewed, never copied, so updates land in the caller's memory. A torch tensor that cannot be
    viewed so (a ``Parameter`` that requires grad, say) is refused with a pointer to
    ``torch_class``, the torch front end's class (``"fastopt.torch.Adam"``).
    """
    try:
        return _as_param_array(obj, name)
    except (TypeError, ValueError) as exc:
        if torch_class is None or not is_torch_tensor(obj):
            raise
        raise type(exc)(
            f"{exc}. {name} is a torch {type(obj).__name__}: this is the NumPy API, which takes "
            f"arrays and their gradients as arguments (opt.step(grads)); for torch params use "
            f"{torch_class}, a torch.optim.Optimizer that steps from their .grad") from None


def _as_param_array(obj, name):
    if not isinstance(obj, np.ndarray):
        if isinstance(obj, (dict, str, bytes, numbers.Number)) or obj is None:
            raise TypeError(f"{name} must be a {PARAM_DTYPES} array, got {type(obj).__name__}")
        try:
            arr = np.asarray(obj)
        except Exception as exc:  # an object NumPy cannot view
            raise TypeError(f"{name} must be a {PARAM_DTYPES} array, got {type(obj).__name__}") from exc
        if arr.dtype == object or arr.base is None and not isinstance(obj, np.ndarray):
            # np.asarray made a new array (a list, say): updates would never reach the caller.
            raise TypeError(
                f"{name} must be an array that can be updated in place (a NumPy array or a writable "
                f"buffer), got {type(obj).__name__}")
    else:
        arr = obj
    if not arr.dtype.isnative or _dtypes.storage_of(arr) is None:
        if not arr.dtype.isnative and \
                _dtypes.storage_of(np.empty(0, arr.dtype.newbyteorder("="))) is not None:
            # a float dtype fastopt steps, but byte-swapped: the kernels read native bytes
            raise TypeError(
                f"{name} has non-native byte order ({arr.dtype.str}); params are updated in place "
                f"in native byte order: convert it with p = p.astype(p.dtype.newbyteorder('=')) "
                f"and use that array")
        raise TypeError(f"{name} must have dtype {PARAM_DTYPES} (ml_dtypes.bfloat16), got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray and keep that array)")
    if not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; params are updated in place")
    if not arr.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype")
    return arr


def check_stochastic_rounding_target(arr, name):
    """Raise ValueError if ``arr`` is a float16 param: its stores round to nearest, so
    ``stochastic_rounding=True`` would be silently ignored for it. float32 and float64 params are
    stored as computed (there is nothing to round) and may sit beside the bfloat16 params the option
    acts on."""
    if _dtypes.storage_of(arr) == _dtypes.F16:
        raise ValueError(
            f"stochastic_rounding=True rounds bfloat16 params, but {name} has dtype float16, "
            "which is rounded to nearest; give float16 params master_weights=True (or an "
            "optimizer of their own), or leave stochastic_rounding off")


def check_stochastic_rounding_has_target(storages, eight_bit=False):
    """Raise ValueError if none of ``storages`` (the params' storage codes) is bfloat16 and no
    param keeps 8-bit states (``eight_bit``): the option would act on nothing."""
    if _dtypes.BF16 not in storages and not eight_bit:
        names = sorted({_dtypes.NAMES[s] for s in storages})
        raise ValueError(
            "stochastic_rounding=True rounds bfloat16 params and the codes of 8-bit states, and "
            f"params has none (dtypes: {', '.join(names)}); leave stochastic_rounding off")


def check_no_overlap(arrays, names):
    """Raise ValueError if two of ``arrays`` share memory (the same param twice, or two views)."""
    spans = []
    for arr, name in zip(arrays, names):
        if arr.nbytes == 0:
            continue
        start = arr.__array_interface__["data"][0]
        spans.append((start, start + arr.nbytes, name))
    spans.sort()
    for (_, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
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
    if value is REQUIRED:
        raise TypeError(f"{name} is required: it has no default, so the constructor or every "
                        "param group must give it")
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
        if isinstance(value, np.generic):   # np.bool_(True) is True, np.float64(0) is 0.0
            value = value.item()
        for index, allowed in enumerate(constraint.values):
            if type(value) is type(allowed) and value == allowed:
                return index
        raise ValueError(f"{name} must be one of {', '.join(map(repr, constraint.values))}; "
                         f"{value!r} is not supported")
    raise ValueError(f"unknown constraint kind {kind!r} for {name}")


def check_state_dtype(value):
    """``state_dtype``: None, or float32/bfloat16 given as a name, a NumPy dtype or a torch dtype;
    returns None, "float32" or "bfloat16"."""
    if value is None:
        return None
    name = str(value).replace("torch.", "").replace("<class 'numpy.", "").rstrip("'>")
    try:
        name = np.dtype(value).name
    except TypeError:
        pass
    if name in ("float32", "bfloat16"):
        return name
    raise ValueError(f"state_dtype must be None, float32 or bfloat16, got {value!r}")


def check_optim_bits(value):
    """``optim_bits``: 8 (8-bit blockwise states) or 32 (states as the params keep them)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"optim_bits must be 8 or 32, got {value!r}")
    if int(value) not in (8, 32):
        raise ValueError(f"optim_bits must be 8 or 32, got {value!r}")
    return int(value)


def check_seed(seed):
    """A stochastic-rounding seed: an int in [0, 2**64), or None for one drawn from the OS."""
    if seed is None:
        import secrets
        return secrets.randbits(64)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


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


# ---------------------------------------------------------------------------------------------
# Minimizers (L-BFGS, L-BFGS-B, OWL-QN, Newton, BFGS): SciPy-style options
# ---------------------------------------------------------------------------------------------

def check_count(name, value, minimum):
    """``value`` as an int >= minimum; integral floats (``10.0``) are taken, as SciPy takes them."""
    if type(value) is int and value >= minimum:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_limit(name, value, *, exceeded):
    """An iteration or evaluation limit, any real number as SciPy takes it (``maxiter=100.1``).

    Returned as the int the solver compares with: with ``exceeded=False`` the run stops once the
    count reaches the limit (``count >= ceil(limit)``), with ``exceeded=True`` once the count
    passes it (``count > floor(limit)``). Limits below one act like one iteration / evaluation;
    ``inf`` means no limit.
    """
    big = 1 << 62
    if type(value) is int and 0 <= value < big:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value) if not isinstance(value, numbers.Integral) else int(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if value >= big:
        return big
    limit = math.floor(value) if exceeded else math.ceil(value)
    return max(int(limit), 0)


def check_tolerance(name, value):
    """``value`` as a float >= 0 (a stopping tolerance)."""
    if type(value) is float and value >= 0.0:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be non-negative, got {value}")
    return float(value)


def check_start_point(x0, keep_float32=True):
    """``x0`` as a finite, non-empty, C-contiguous 1-d float array (a copy); float32 is kept
    with ``keep_float32``, anything else becomes float64. Scalars become shape (1,), as in
    SciPy."""
    if type(x0) is np.ndarray and x0.ndim == 1 and x0.size and (
            x0.dtype == np.float64 or (keep_float32 and x0.dtype == np.float32)):
        if not np.isfinite(x0).all():
            raise ValueError("x0 must be finite (it contains NaN or Inf)")
        return x0.copy()
    x = np.atleast_1d(np.array(x0, copy=True))
    if not x.dtype.isnative:
        # by value, as SciPy takes it (a big-endian float32 x0 stays float32)
        x = x.astype(x.dtype.newbyteorder("="))
    if x.ndim != 1:
        if x.ndim > 1 and x.size == max(x.shape):
            x = x.ravel()    # SciPy ravels x0
        else:
            raise ValueError(f"x0 must be one-dimensional, got shape {x.shape}")
    if np.iscomplexobj(x):
        raise TypeError("x0 must be real, got a complex array")
    if not (keep_float32 and x.dtype == np.float32):
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"x0 must be numeric, got dtype {x.dtype}") from None
    if x.size == 0:
        raise ValueError("x0 must not be empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 must be finite (it contains NaN or Inf)")
    return np.ascontiguousarray(x)


#: Values ``float()`` would parse as numbers but an objective must not return.
TEXT_TYPES = (str, bytes, bytearray)


def objective_value(value, source="fun"):
    """An objective's value as a float: a real number, or any size-1 array or sequence holding
    one (as SciPy takes it). ``source`` names where it came from in errors: ``"fun"`` (a
    SciPy-style objective) or ``"closure"`` (a torch-style closure's loss).

    Text is refused with TypeError although ``float("1.0")`` would parse it, as SciPy's
    minimizers refuse it (they fail comparing it with a float); so is anything else that is not
    a real number (None, complex). More or fewer than one value is SciPy's ValueError. The
    compiled L-BFGS iteration applies the same rule (``_as_double`` in ``fastopt/minimize/_lbfgs.pyx``).
    """
    if isinstance(value, float):
        return float(value)
    item = value
    if not isinstance(value, TEXT_TYPES):
        if not isinstance(value, np.ndarray):
            try:
                return float(value)          # NumPy and torch scalars, ints
            except TypeError:
                pass
        try:
            item = np.asarray(value).item()
        except (TypeError, ValueError):
            described = f"{type(value).__name__} with shape {np.shape(value)}"
            if source == "fun":   # SciPy's message
                raise ValueError("The user-provided objective function must return a scalar "
                                 f"value (fun returned {described}).") from None
            raise ValueError(f"The loss the {source} returns must be a scalar value (got "
                             f"{described}).") from None
        if not isinstance(item, TEXT_TYPES):
            try:
                return float(item)
            except (TypeError, ValueError):
                pass
    raise TypeError(_objective_type_message(value, isinstance(item, TEXT_TYPES), source))


def _objective_type_message(value, text, source="fun"):
    """Why ``value`` (``text``: holding text) cannot be the value of the objective ``source``."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    described = f"{type(value).__name__} {shown}"
    not_text = ", not text" if text else ""
    if source == "fun":
        return ("The user-provided objective function must return a real number"
                f"{not_text}; fun returned {described}")
    return f"The loss the {source} returns must be a real number{not_text}; got {described}"


def check_line_search_constants(c1, c2):
    """Sufficient-decrease and curvature constants with 0 < c1 < c2 < 1."""
    c1 = check_real("c1", c1)
    c2 = check_real("c2", c2)
    if not (0.0 < c1 < c2 < 1.0):
        raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
    return c1, c2


def check_box(bounds, n):
    """``bounds`` (a ``scipy.optimize.Bounds``-like object with ``lb`` / ``ub``, or a sequence of
    ``(lo, hi)`` pairs with None for an open side) as float64 arrays ``(lower, upper)`` of shape
    (n,), -inf / +inf where open. Errors are ``scipy.optimize.minimize``'s where it has one;
    an infeasible infinite side (a lower bound of +inf, an upper bound of -inf), which SciPy takes
    for a variable fixed at infinity, is a ValueError too."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        try:
            lower = np.broadcast_to(np.asarray(bounds.lb, dtype=float), (n,)).copy()
            upper = np.broadcast_to(np.asarray(bounds.ub, dtype=float), (n,)).copy()
        except ValueError as exc:
            raise ValueError("The number of bounds is not compatible with the length of "
                             "`x0`.") from exc
    else:
        try:
            pairs = list(bounds)
        except TypeError:
            raise TypeError("bounds must be a scipy.optimize.Bounds or a sequence of "
                            f"(min, max) pairs, got {type(bounds).__name__}") from None
        if len(pairs) != n:
            raise ValueError("length of x0 != length of bounds")
        # Fast path: None becomes an infinite bound and NumPy converts the plain numbers in
        # one call per side; anything else (arrays as bounds, bad pairs) goes element-wise below.
        try:
            lows, highs = zip(*pairs)
            lower = np.array([-math.inf if v is None else v for v in lows], dtype=float)
            upper = np.array([math.inf if v is None else v for v in highs], dtype=float)
        except (TypeError, ValueError):
            lower = upper = None
        if lower is not None and lower.shape == upper.shape == (n,):
            _check_box_values(lower, upper)
            return lower, upper
        lower = np.empty(n)
        upper = np.empty(n)
        for i, pair in enumerate(pairs):
            try:
                lo, hi = pair
            except (TypeError, ValueError):
                raise ValueError(f"bounds[{i}] must be a pair (min, max), got {pair!r}") from None
            lower[i] = -np.inf if lo is None else float(np.asarray(lo).item())
            upper[i] = np.inf if hi is None else float(np.asarray(hi).item())
    _check_box_values(lower, upper)
    return lower, upper


#: What ``scipy.optimize.minimize`` raises for crossed bounds (before it calls any method).
MSG_CROSSED_BOUNDS = "An upper bound is less than the corresponding lower bound."


def _check_box_values(lower, upper):
    """Raise ValueError for a box no point lies in: NaN, crossed bounds, a lower bound of +inf or
    an upper bound of -inf (an infinite side is open only towards its own infinity)."""
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise ValueError("bounds must not contain NaN")
    if (lower > upper).any():
        raise ValueError(MSG_CROSSED_BOUNDS)
    for side, values, infeasible, open_value in (("lower", lower, math.inf, "-inf"),
                                                 ("upper", upper, -math.inf, "+inf")):
        where = np.flatnonzero(values == infeasible)
        if where.size:
            raise ValueError(f"bounds[{where[0]}]: the {side} bound is {infeasible:+}, which no "
                             f"finite x satisfies; use None or {open_value} for no {side} bound")


LINE_SEARCHES = {"more-thuente": False, "armijo": True}


def check_search_options(x0, gtol, ftol, maxiter, maxfun, maxls, line_search, c1, c2):
    """The options every line-search minimizer here shares, with x0 as an array.

    Returns ``(x, gtol, ftol, maxiter, maxfun, maxls, armijo)`` where ``armijo`` selects the
    backtracking line search over Moré–Thuente.
    """
    gtol = check_tolerance("gtol", gtol)
    ftol = check_tolerance("ftol", ftol)
    maxiter = check_count("maxiter", maxiter, 1)
    maxfun = check_count("maxfun", maxfun, 1)
    maxls = check_count("maxls", maxls, 1)
    if not isinstance(line_search, str) or line_search.lower() not in LINE_SEARCHES:
        raise ValueError(f"line_search must be one of {sorted(LINE_SEARCHES)}, got {line_search!r}")
    c1, c2 = check_line_search_constants(c1, c2)
    return (check_start_point(x0), gtol, ftol, maxiter, maxfun, maxls,
            LINE_SEARCHES[line_search.lower()])


def check_l1_weights(l1, n):
    """An L1 penalty weight, a number or one per coordinate, as a float64 array of shape (n,),
    finite and >= 0."""
    try:
        weights = np.array(l1, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"l1 must be a number or an array of numbers, got {type(l1).__name__}") \
            from None
    if weights.ndim > 1 or (weights.ndim == 1 and weights.shape[0] != n):
        raise ValueError(f"l1 must be a number or have shape ({n},) like x0, got shape "
                         f"{weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("l1 must be finite and non-negative")
    return np.ascontiguousarray(np.broadcast_to(weights, (n,)))
