"""The ``Optimizer`` base class: param groups, state arenas, ``step``, ``state_dict``.

Everything here is generic: an optimizer class (``fastopt.Adam``, built by ``_factory.py``) only
names its declaration (``fastopt/algorithms``), whose hyperparameters, constraints, rules and state
this class reads. The state lives in per-(group, dtype) arenas inside
:class:`fastopt._core._bucket.ParamBucket`, which runs the declared algorithm's compiled kernel.
"""
import functools
import math
import numbers
import threading
from collections import namedtuple

import numpy as np

from . import _dtypes
from . import _validation as V
from ._backend import kernels
from ._core._dynamic_map import BLOCK
from ._core._fastopt_threads import PREWAKE_MIN, prewake as _prewake_helpers
from ._core._gather import GradPointers

#: A group's checked hyperparameters, in the forms the step uses: ``packed`` (the kernel's struct,
#: filled by field name, in a PackedHyperparameters that names its kernel), ``gmul`` (-1.0 when
#: maximizing), ``active`` ((state index, initial value) of each elementwise state the settings
#: use) and ``values`` (field name -> checked value).
Checked = namedtuple("Checked", "packed gmul active values")

# Largest step count load_state_dict takes: the kernels use it as an int64 and as a double.
_MAX_STEP = 2 ** 53


def _exclusive(method):
    """Run ``method`` holding the optimizer's lock, as step() does; raise if another thread holds it.

    A step runs its kernels without the GIL: load_state_dict frees and replaces the state arenas,
    add_param_group grows the param list and state_dict copies the arenas, so none of them may run
    while another thread is inside step() (a torn or freed arena), nor a step while they run.
    """
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"{method.__name__}() called while this optimizer is running step() (or another "
                "state call) in another thread; use an optimizer from one thread at a time")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._lock.release()
    return wrapper


class ParamGroup(dict):
    """A param group: a dict that remembers what was derived from it until it is modified.

    Re-checking every hyperparameter costs ~13 us (Adam or SGD), more than a whole step of a small
    param (under 1 us; both measured on the development machine, an AMD EPYC with AVX-512,
    December 2026), so a step re-checks a group only after one of its entries has been assigned
    (as an LR scheduler does): ``checked`` holds the ``Checked`` hyperparameters of the last
    check (None: check again). ``fastopt.torch`` keeps its torch-side groups in this class too, and
    ``pushed`` is the fastopt group the group's values were last copied into, since it was last
    modified (None: copy them again). Mutable values are stored as tuples so they cannot change
    behind its back.
    """

    __slots__ = ("checked", "pushed")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._modified()

    def _modified(self):
        self.checked = None
        self.pushed = None

    def __setitem__(self, key, value):
        self._modified()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._modified()
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        self._modified()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._modified()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._modified()
        return super().pop(*args)

    def popitem(self):
        self._modified()
        return super().popitem()

    def clear(self):
        self._modified()
        super().clear()

    def __ior__(self, other):
        self._modified()
        return super().__ior__(other)

    def __reduce__(self):
        return (dict, (dict(self),))


def _waking_first(bucket_step, work):
    """``bucket_step`` (a bucket's compiled step) that first wakes the thread pool's helpers for a
    step of ``work`` units, so that their wake-up overlaps the bucket's checks."""
    def step(grads, packed, gmul, active):
        _prewake_helpers(work)
        return bucket_step(grads, packed, gmul, active)
    return step


def _checked_step(value, where):
    """A step count as an int: a whole number in [0, 2**53] (a 1-element array is taken as its
    item); ValueError naming ``where`` otherwise."""
    step = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
    if isinstance(step, (bool, np.bool_)) \
            or not isinstance(step, (int, float, np.integer, np.floating)) \
            or not float(step).is_integer() or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"{where} must be a whole number in [0, 2**53], got {value!r}")
    return int(step)


class Optimizer:
    """Base class of fastopt's optimizers (torch.optim.Optimizer's shape over NumPy arrays).

    Parameters
    ----------
    params : iterable of ndarray, or iterable of dict
        The arrays to optimize (float32, float64, float16 or bfloat16 -- ``ml_dtypes.bfloat16`` --,
        C-contiguous, writeable; updated in place), or param groups: dicts with a ``"params"`` list
        and any hyperparameters that override the defaults for that group.
    defaults : dict
        Default hyperparameters.
    skip_nonfinite : bool, default False
        Check every gradient for NaN/Inf before each step; when one is found, skip the step
        entirely (params and state stay bit-identical), set ``found_inf`` and count it in
        ``skipped_steps``, as torch's GradScaler does. The check is one extra read-only pass over
        the gradients. With the default ``False`` non-finite values propagate as in torch.optim.
    master_weights : bool, default False
        For float16/bfloat16 params: keep a float32 master copy of each (state ``"master"``, made
        from the param at its first step). The step updates the master and float32 states exactly
        as a float32 run would, and writes the param as the master rounded to nearest (ties to
        even), in the same pass. Without it, half-precision params are stepped as torch's fused
        CPU kernels step them: float32 arithmetic, states in the param's dtype, one rounding when
        each value is stored.
    state_dtype : None, "float32" or "bfloat16", default None
        With ``master_weights``: the dtype of the moment buffers (float32 by default; bfloat16
        halves their memory traffic).
    stochastic_rounding : bool, default False
        For 8-bit states (``optim_bits=8``): round their codes stochastically (a value between two
        codes takes the farther one with probability equal to its distance from the nearer one
        over their spacing: unbiased). For bfloat16 params without master weights: round the
        params and states stochastically when storing them (unbiased: up with probability equal
        to the distance from the value below), which keeps small updates from being lost.
        Reproducible for a given ``seed``, whatever the thread count. float32/float64 params may
        sit beside them (they are stored as computed); float16 params, or neither a bfloat16
        param nor an 8-bit state at all, are refused (ValueError).
    seed : int, optional
        The stochastic-rounding seed (default: drawn from the OS). ``state_dict()`` keeps it (as
        ``"stochastic_rounding_seed"``) with each param's step count, and ``load_state_dict``
        restores both, so a resumed run rounds exactly as the uninterrupted one.

    Attributes
    ----------
    param_groups : list of dict
        One dict per group with ``"params"`` and the hyperparameters. Hyperparameters are read at
        every :meth:`step`, so assigning ``group["lr"]`` (as an LR scheduler does) takes effect on
        the next step; they are checked again then.
    defaults : dict
    state : dict
        ``{param_index: {state_name: view, "step": int}}`` for params that have state; the arrays are
        views of the optimizer's memory (a copy is in :meth:`state_dict`).

    Examples
    --------
    Every optimizer class (:class:`fastopt.SGD`, :class:`fastopt.Adam`, ...) is an ``Optimizer``:
    params in groups, one gradient per param given to :meth:`step`, params updated in place.

    >>> import numpy as np
    >>> import fastopt
    >>> W, b = np.ones((2, 2)), np.zeros(2)
    >>> opt = fastopt.SGD([{"params": [W]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    >>> isinstance(opt, fastopt.Optimizer)
    True
    >>> opt.step([np.ones((2, 2)), np.ones(2)])
    True
    >>> float(W[0, 0]), float(b[0])
    (0.9, -0.5)
    >>> sorted(opt.state), sorted(opt.state[1])
    ([0, 1], ['momentum_buffer'])

    With ``skip_nonfinite=True`` a step whose gradients hold a NaN or Inf is skipped:

    >>> opt = fastopt.Adam([W], lr=0.1, skip_nonfinite=True)
    >>> opt.step([np.full((2, 2), np.nan)]), opt.found_inf, opt.skipped_steps
    (False, True, 1)
    >>> float(W[0, 0])
    0.9
    """

    #: The algorithm's declaration (a ``fastopt.algorithms._spec.Algorithm``); set by _factory.py.
    algorithm = None

    def __init__(self, params, defaults, skip_nonfinite=False, master_weights=False,
                 state_dtype=None, stochastic_rounding=False, seed=None, optim_bits=32,
                 min_8bit_size=4096):
        self.skip_nonfinite = V.check_bool("skip_nonfinite", skip_nonfinite)
        self.master_weights = V.check_bool("master_weights", master_weights)
        self.state_dtype = V.check_state_dtype(state_dtype)
        self.stochastic_rounding = V.check_bool("stochastic_rounding", stochastic_rounding)
        self.optim_bits = V.check_optim_bits(optim_bits)
        self.min_8bit_size = V.check_integer("min_8bit_size", min_8bit_size, low=0)
        if self.optim_bits == 8:
            if self.algorithm.driver is not None:
                raise ValueError(f"optim_bits=8: {self.algorithm.name} keeps no 8-bit states (its "
                                 "step is not elementwise); use optim_bits=32")
            if self.state_dtype is not None:
                raise ValueError("state_dtype is not available with optim_bits=8: the states of "
                                 "params of min_8bit_size elements or more are kept in 8 bits, "
                                 "the others in float32")
        if self.state_dtype is not None and not self.master_weights:
            raise ValueError("state_dtype needs master_weights=True (without a master copy, "
                             "a half-precision param's states are kept in its own dtype)")
        if self.stochastic_rounding and self.master_weights:
            raise ValueError("stochastic_rounding is for bfloat16 params without master weights "
                             "(with master_weights the param is the master rounded to nearest)")
        self.seed = V.check_seed(seed)
        self.found_inf = False
        self.skipped_steps = 0
        self.grad_norm = None
        self.defaults = dict(defaults)
        self.param_groups = []
        self._buckets = []          # per group: list of ParamBucket (one per dtype)
        self._params = []           # all params, in index order
        self._lock = threading.Lock()
        self._fast = None
        self._wake_work = 0         # the step's work if it may wake the pool's helpers ahead, else 0
        self._slots = None          # param index -> (bucket, position): built on first use
        self._bucket_indices = None  # [(param indices as an array, bucket)]: built on first use
        if isinstance(params, np.ndarray) or isinstance(params, (dict, str, bytes)):
            raise TypeError(
                "params must be an iterable of arrays or of dicts (param groups), "
                f"got {type(params).__name__}; wrap a single array in a list")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of arrays or dicts, got {type(params).__name__}") from None
        if len(groups) == 0:
            raise ValueError("params is empty: the optimizer got no arrays to optimize")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        if self.stochastic_rounding:
            V.check_stochastic_rounding_has_target(
                {_dtypes.storage_of(p) for p in self._params},
                eight_bit=any(self._eight_bit(p) for p in self._params))

    # ------------------------------------------------------------------------------------------
    # Param groups
    # ------------------------------------------------------------------------------------------

    @_exclusive
    def add_param_group(self, param_group):
        """Add a param group (a dict with ``"params"`` and optional hyperparameters)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        g = len(self.param_groups)
        raw = param_group["params"]
        if isinstance(raw, (set, frozenset)):
            raise TypeError("params must be an ordered collection (list or tuple), not a set")
        if isinstance(raw, np.ndarray):
            raw = [raw]
        else:
            raw = list(raw)
        if len(raw) == 0:
            raise ValueError(f"param group {g} has no params")
        first = len(self._params)
        torch_class = f"fastopt.torch.{type(self).__name__}"
        arrays = [V.as_param_array(p, f"params[{first + i}]", torch_class) for i, p in enumerate(raw)]
        if self.stochastic_rounding:
            for i, arr in enumerate(arrays):
                V.check_stochastic_rounding_target(arr, f"params[{first + i}]")
        for i, arr in enumerate(arrays):
            for rule in self.algorithm.param_rules:
                if not rule.test(arr.shape):
                    raise rule.error(f"{rule.message}; params[{first + i}] has shape {arr.shape}")
        everything = self._params + arrays
        V.check_no_overlap(everything, [f"params[{i}]" for i in range(len(everything))])

        group = ParamGroup(params=arrays)
        for key, value in self.defaults.items():
            group[key] = param_group.get(key, value)
        for key, value in param_group.items():
            if key not in group:
                group[key] = value
        self._checked(group)   # raises before anything is stored

        by_dtype = {}    # (dtype, 8-bit states) -> the params' positions
        for i, arr in enumerate(arrays):
            by_dtype.setdefault((arr.dtype, self._eight_bit(arr)), []).append(i)
        buckets = [self._new_bucket([arrays[i] for i in idx], [first + i for i in idx], eight_bit)
                   for (_, eight_bit), idx in by_dtype.items()]
        self.param_groups.append(group)
        self._buckets.append(buckets)
        self._params.extend(arrays)
        self._slots = self._bucket_indices = None
        # The step's work, for waking the thread pool's helpers as step() starts (elementwise
        # steps only: a driver's first job may come after BLAS products, which helpers woken
        # ahead would only spin against).
        work = sum(p.size for p in self._params) * self.algorithm.weight
        self._wake_work = work if work >= PREWAKE_MIN and self.algorithm.driver is None else 0
        # (param count, compiled step) for step()'s fast path: one group of one dtype only. A
        # step worth waking the helpers for wakes them first; smaller ones pay nothing for it.
        only = self._buckets[0][0] if len(self._buckets) == 1 and len(buckets) == 1 else None
        self._fast = (only.n_arrays, _waking_first(only.step, self._wake_work)
                      if self._wake_work else only.step) if only is not None else None
        self._init_group_state(group, buckets)

    def _eight_bit(self, param):
        """Whether ``param``'s states are kept in 8 bits: with ``optim_bits=8``, a param of at least
        ``min_8bit_size`` elements (smaller ones keep float32 states, as in bitsandbytes)."""
        return self.optim_bits == 8 and param.size >= self.min_8bit_size

    def _new_bucket(self, params, indices, eight_bit=False):
        alg = self.algorithm
        storage = _dtypes.storage_of(params[0])
        half = storage in _dtypes.HALF
        master = self.master_weights and half
        if eight_bit:
            if storage == _dtypes.F64:
                raise TypeError(f"8-bit states (optim_bits=8) are kept for float32, bfloat16 and "
                                f"float16 params, got float64 (params[{indices[0]}])")
            state = _dtypes.Q8
        elif master:
            state = _dtypes.BF16 if self.state_dtype == "bfloat16" else _dtypes.F32
        else:
            state = storage
        # bfloat16 params round stochastically; 8-bit states round their codes stochastically
        stochastic = self.stochastic_rounding and (storage == _dtypes.BF16 or eight_bit)
        if alg.driver is not None and half:
            # a driver's reductions and matrix products run in the param's own dtype
            raise TypeError(f"{alg.name} supports float32 and float64 params, got "
                            f"{params[0].dtype} (params[{indices[0]}])")
        spec = kernels.BucketSpec(
            params=params, indices=indices, kernel=kernels.kernel_index(alg.kernel),
            state_names=tuple(s.name for s in alg.loop_state),
            scalar_states=tuple((s.name, float(s.init)) for s in alg.scalar_state),
            lazy_states=tuple(j for j, s in enumerate(alg.loop_state) if s.lazy),
            config=kernels.config_index(storage, storage, state, master, stochastic, alg.kernel),
            config_f32_grad=(kernels.config_index(storage, _dtypes.F32, state, master, stochastic,
                                                  alg.kernel) if half else -1),
            state_like=_dtypes.empty_like_storage(state, (0,), like=params[0]),
            master=master, seed=self.seed,
            code_maps=tuple(s.code_map for s in alg.loop_state) if eight_bit else ())
        bucket = kernels.bucket_class(alg.driver)(spec)
        if alg.shaped_state:
            bucket.set_state_shapes({s.name: [s.shape_for(p.shape) for p in params]
                                     for s in alg.shaped_state})
        return bucket

    @classmethod
    def check_hyperparameters(cls, group):
        """Check the hyperparameters of ``group`` (a mapping holding every declared one) against
        the algorithm's declaration: their constraints, then the rules across them.

        A class method, so that a front end can check hyperparameters before it builds an
        optimizer. Returns the group's ``Checked`` values; raises the declaration's
        TypeError or ValueError naming the argument.
        """
        alg = cls.algorithm
        values = {}
        for h in alg.hyperparameters:
            checked = V.check_constraint(h.name, group[h.name], h.constraint)
            values.update(zip(h.fields, checked) if len(h.fields) > 1 else ((h.name, checked),))
        values.update(alg.constant_values)
        for rule in alg.rules:
            if not rule.test(values):
                raise rule.error(rule.message)
        active = tuple((j, cls._initial_value(s, values))
                       for j, s in enumerate(alg.loop_state) if alg.state_active(s, values))
        packed = {key: math.nan if value is None else value for key, value in values.items()}
        return Checked(kernels.pack(alg.kernel, packed), -1.0 if values["maximize"] else 1.0,
                       active, values)

    @staticmethod
    def _initial_value(state, values):
        return float(values[state.init]) if isinstance(state.init, str) else float(state.init)

    def _checked(self, group):
        """The group's checked hyperparameters, re-checked only if the group was modified."""
        hyper = group.checked if type(group) is ParamGroup else None
        if hyper is None:
            self._check_keys(group)
            hyper = self.check_hyperparameters(group)
            for key, value in list(group.items()):
                if isinstance(value, list) and key != "params":
                    dict.__setitem__(group, key, tuple(value))
            if type(group) is ParamGroup:
                group.checked = hyper
        return hyper

    def _check_keys(self, group):
        """Raise ValueError naming a hyperparameter the group lacks (a KeyError would name nothing)."""
        missing = [key for key in self.defaults if key not in group]
        if missing:
            raise ValueError(
                f"param group has no {', '.join(repr(k) for k in missing)} "
                f"(a {type(self).__name__} param group needs {sorted(self.defaults)})")

    def _init_group_state(self, group, buckets):
        """Create the states the declaration marks ``eager`` (they exist before the first step)."""
        eager = [s for s in self.algorithm.elementwise_state if s.eager]
        if not eager:
            return
        values = self._checked(group).values
        for bucket in buckets:
            for state in eager:
                bucket.arena(state.name, self._initial_value(state, values))

    # ------------------------------------------------------------------------------------------
    # Step
    # ------------------------------------------------------------------------------------------

    def _normalize_grads(self, grads):
        """``grads`` as an exact list or tuple of ``len(params)`` entries.

        The entries themselves are checked by the compiled gather (which views a non-ndarray
        entry as an array and keeps that array alive for the step).
        """
        n = len(self._params)
        if type(grads) is GradPointers:    # gathered and checked by a front end (fastopt.torch)
            if len(grads) != n:
                raise ValueError(f"grads has {len(grads)} entries, but the optimizer has {n} params")
            return grads
        if type(grads) is not list and type(grads) is not tuple:
            if grads is None or callable(grads):
                # torch.optim's habit: step() or step(closure), the gradients in each .grad
                got = "None" if grads is None else "a closure"
                raise TypeError(
                    f"grads must be a list of arrays aligned with the params, got {got}: the NumPy "
                    f"API takes the gradients as an argument, opt.step(grads), one array per "
                    f"param in param order; for torch params whose .grad autograd fills, use "
                    f"fastopt.torch.{type(self).__name__}")
            if isinstance(grads, np.ndarray) or hasattr(grads, "__array__") or hasattr(grads, "__array_interface__"):
                if n != 1:
                    raise TypeError(f"grads must be a list of {n} arrays (one per param), got a single array")
                grads = [grads]
            else:
                try:
                    grads = list(grads)
                except TypeError:
                    raise TypeError("grads must be a list of arrays aligned with the params, got "
                                    f"{type(grads).__name__}") from None
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} entries, but the optimizer has {n} params")
        return grads

    def step(self, grads=None, *, max_norm=None, norm_type=2.0):
        """Apply one update to every param in place.

        Parameters
        ----------
        grads : list of ndarray (or None entries)
            One gradient per param, in param order across groups, each with its param's shape and
            dtype and C-contiguous. A ``None`` entry skips that param (its state is untouched, as in
            torch.optim for a param whose ``.grad`` is None). A single array is accepted when the
            optimizer has one param.
        max_norm : float, optional
            Clip the gradients by their global norm first, inside the step: one read-only pass
            computes the norm of all (non-None) gradients together, as :func:`fastopt.clip_grad_norm_`
            does, and the update multiplies each gradient element by
            ``min(1, max_norm / (norm + 1e-6))`` as it reads it. The gradients themselves are left
            unchanged, and the result is bit-identical to ``clip_grad_norm_`` followed by ``step``
            (two passes over the gradients instead of three). The norm is kept in ``grad_norm``.
        norm_type : float or "inf", default 2.0
            The norm's order, as in :func:`fastopt.clip_grad_norm_`.

        Everything is checked (hyperparameters of every group, every gradient) before any param or
        state is written: a bad argument raises and leaves the optimizer exactly as it was. With
        ``skip_nonfinite`` and ``max_norm``, the norm pass is the finiteness check too.

        Returns
        -------
        bool
            True if the update was applied; False if ``skip_nonfinite`` found a NaN/Inf gradient
            and skipped it.
        """
        # Fast path (one group, one dtype, checked hyperparameters, an exact list, no clipping):
        # the whole Python-side cost of a small step is here, so it does the least that is still
        # safe. The compiled bucket validates every gradient before writing anything (and a step
        # large enough for the thread pool wakes its helpers first: _waking_first).
        fast = self._fast
        if fast is not None and (type(grads) is list or type(grads) is GradPointers) \
                and len(grads) == fast[0] and max_norm is None \
                and not self.skip_nonfinite and len(self.param_groups) == 1:
            group = self.param_groups[0]
            hyper = group.checked if type(group) is ParamGroup else None
            if hyper is not None and len(group["params"]) == fast[0] \
                    and self._lock.acquire(blocking=False):
                try:
                    fast[1](grads, hyper.packed, hyper.gmul, hyper.active)
                    self.grad_norm = None
                finally:
                    self._lock.release()
                return True
        if self._wake_work:
            # A step large enough for the thread pool: wake its helpers now, so that their wake-up
            # overlaps the checks below and the step's jobs find them awake.
            _prewake_helpers(self._wake_work)
        if max_norm is not None:
            max_norm = V.check_real("max_norm", max_norm, low=0.0)
            norm_type = V.check_norm_type(norm_type)
        grads = self._normalize_grads(grads)
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                "this optimizer is already running step() in another thread; an optimizer's "
                "state is not shared between concurrent steps (use one optimizer per thread)")
        try:
            if len(self.param_groups) != len(self._buckets):
                raise RuntimeError("param_groups was resized by hand; use add_param_group")
            hypers = self._checked_groups()
            buckets = [(bucket, hyper) for group_buckets, hyper in zip(self._buckets, hypers)
                       for bucket in group_buckets]
            finite = None
            scale = 1.0
            self.grad_norm = None
            if max_norm is not None:
                for bucket, _ in buckets:   # every gradient checked, and named by its index
                    bucket.check_grads(grads)
                present = grads if type(grads) is GradPointers else [g for g in grads if g is not None]
                arrays = kernels.gather_arrays(present, "grads", False)
                norm = arrays.norm(norm_type)
                self.grad_norm = norm
                # a finite norm means finite gradients; a non-finite one may be an overflow of the
                # float64 sum of huge but finite float64 gradients, which the exact check tells
                finite = math.isfinite(norm) or (norm_type != math.inf and arrays.all_finite())
                coef = max_norm / (norm + 1e-6)
                if not coef >= 1.0:    # as clip_grad_norm_: a NaN norm scales by NaN
                    scale = coef
            if self.skip_nonfinite:
                if finite is None:
                    finite = True
                    for bucket, _ in buckets:
                        finite = bucket.grads_finite(grads) and finite   # validates every gradient
                self.found_inf = not finite
                if not finite:
                    self.skipped_steps += 1
                    return False
            elif max_norm is None and len(buckets) > 1:
                # validate every gradient before any write (one bucket does it itself)
                for bucket, _ in buckets:
                    bucket.check_grads(grads)
            for bucket, hyper in buckets:
                bucket.step(grads, hyper.packed, hyper.gmul * scale, hyper.active)
            return True
        finally:
            self._lock.release()

    def _checked_groups(self):
        """Every group's checked hyperparameters, after checking its params list was not edited."""
        hypers = []
        for g, (group, group_buckets) in enumerate(zip(self.param_groups, self._buckets)):
            if len(group["params"]) != sum(b.n_arrays for b in group_buckets):
                raise RuntimeError(f"param_groups[{g}]['params'] was changed by hand; build a new optimizer")
            hypers.append(self._checked(group))
        return hypers

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------

    @property
    def _state_names(self):
        """Names of the state buffers kept per param, in state_dict order: with 8-bit states, each
        elementwise state's codes are followed by ``<name>_absmax``, one float32 per block."""
        names = []
        for s in self.algorithm.state:
            names.append(s.name)
            if self.optim_bits == 8 and s.shape == "param":
                names.append(s.name + "_absmax")
        return tuple(names) + (("master",) if self.master_weights else ())

    @property
    def _absmax_names(self):
        """``{"<name>_absmax": name}`` of the elementwise states (their 8-bit blocks' absmax)."""
        if self.optim_bits != 8:
            return {}
        return {s.name + "_absmax": s.name for s in self.algorithm.elementwise_state}

    @property
    def _has_step(self):
        """Whether per-param state carries a ``"step"`` count: the algorithm's, or with stochastic
        rounding the count its random stream is keyed on (so a resumed run draws the same bits)."""
        return self.algorithm.has_step or self.stochastic_rounding

    def _has_state(self, bucket, k):
        """Whether param k of ``bucket`` has state yet (torch creates it at the first step)."""
        alg = self.algorithm
        if any(s.eager for s in alg.state):
            return True
        return bool(bucket.steps[k] > 0 if self._has_step else bucket.initialized[k])

    def kept_dtypes(self):
        """A function ``kept(index, name)``: the NumPy dtype this optimizer keeps state ``name`` of
        param ``index`` in -- float32 for scalar states and master copies, else the state dtype of
        the param's bucket. The param-to-bucket map is built once, by this call, for a whole load
        of a checkpoint (call it again after ``add_param_group``)."""
        float32_names = {"master", *(s.name for s in self.algorithm.scalar_state),
                         *self._absmax_names}
        bucket_dtype = {i: bucket.state_dtype for i, bucket, _ in self._iter_param_slots()}

        def kept(index, name):
            return np.dtype(np.float32) if name in float32_names else bucket_dtype[index]
        return kept

    @property
    def params(self):
        """The arrays this optimizer updates, each once, in param index order (the order of
        ``state_dict()``'s indices), as a tuple (read-only; ``add_param_group`` appends)."""
        return tuple(self._params)

    def _iter_param_slots(self):
        """Yield (param index, bucket, position in bucket) for every param."""
        for group_buckets in self._buckets:
            for bucket in group_buckets:
                for k, index in enumerate(bucket.indices):
                    yield index, bucket, k

    def _param_state(self, bucket, k, copy):
        entry = {}
        if self._has_step:
            entry["step"] = int(bucket.steps[k])
        for name in self._state_names:
            if name in bucket.arenas:
                view = bucket.state_view(name, k)
                if view is not None:   # None: a shaped state this param does not have
                    entry[name] = view.copy() if copy else view
        return entry

    def _slot(self, index):
        """(bucket, position in bucket) of param ``index``."""
        if self._slots is None:
            self._slots = {i: (bucket, k) for i, bucket, k in self._iter_param_slots()}
        return self._slots[index]

    def has_state(self, index):
        """Whether param ``index`` has state yet (torch.optim creates it at the first step)."""
        return self._has_state(*self._slot(index))

    def param_state(self, index, copy=False):
        """The state of param ``index``: ``{"step": int, <buffer name>: ndarray}``, or ``{}``
        before its first step. The arrays are views of the optimizer's memory (copies with
        ``copy=True``), as in :attr:`state`, which builds this for every param."""
        bucket, k = self._slot(index)
        return self._param_state(bucket, k, copy) if self._has_state(bucket, k) else {}

    def step_counts(self):
        """Every param's step count, as an int64 array in param index order (0 before a
        param's first step)."""
        if self._bucket_indices is None:
            self._bucket_indices = [(np.asarray(bucket.indices, dtype=np.intp), bucket)
                                    for group_buckets in self._buckets for bucket in group_buckets]
        counts = np.zeros(len(self._params), dtype=np.int64)
        for indices, bucket in self._bucket_indices:
            counts[indices] = bucket.steps
        return counts

    @_exclusive
    def set_step(self, index, step):
        """Set the step count of param ``index``, which has state (a whole number in
        [0, 2**53], as :meth:`load_state_dict` takes it)."""
        if not self._has_step:
            raise ValueError(f"{type(self).__name__} keeps no step count")
        bucket, k = self._slot(index)
        if not self._has_state(bucket, k):
            raise ValueError(f"param {index} has no state yet: its step count is set with the "
                             "rest of its state (load_state_dict)")
        bucket.steps[k] = _checked_step(step, f"the step of param {index}")

    @property
    def state(self):
        """``{param index: state}`` for every param that has state, each as :meth:`param_state`
        gives it (views of the optimizer's memory)."""
        out = {}
        for index, bucket, k in sorted(self._iter_param_slots(), key=lambda t: t[0]):
            if self._has_state(bucket, k):
                out[index] = self._param_state(bucket, k, copy=False)
        return out

    @_exclusive
    def state_dict(self):
        """The optimizer's state as plain data (copies): ``{"state": ..., "param_groups": ...}``.

        ``state`` maps param index to ``{"step": int, <buffer name>: ndarray}``; ``param_groups``
        holds each group's hyperparameters with ``"params"`` replaced by the param indices, as in
        torch.optim. ``load_state_dict(state_dict())`` restores the optimizer bit for bit.
        """
        state = {}
        for index, bucket, k in sorted(self._iter_param_slots(), key=lambda t: t[0]):
            if self._has_state(bucket, k):
                state[index] = self._param_state(bucket, k, copy=True)
        groups = []
        start = 0
        for group in self.param_groups:
            entry = {key: value for key, value in group.items() if key != "params"}
            entry["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(entry)
        out = {"state": state, "param_groups": groups}
        if self.stochastic_rounding:
            out["stochastic_rounding_seed"] = int(self.seed)
        return out

    @_exclusive
    def load_state_dict(self, state_dict):
        """Restore state saved by :meth:`state_dict`.

        Everything is checked first (group and param counts, hyperparameters, each buffer's name,
        shape and dtype, step counts); on any mismatch a ValueError/TypeError names the entry and
        the optimizer is left unchanged.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups' (from state_dict())")
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError("state_dict['param_groups'] must be a list and state_dict['state'] a dict")
        seed = state_dict.get("stochastic_rounding_seed")
        if seed is not None:
            try:
                seed = V.check_seed(seed)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"state_dict['stochastic_rounding_seed']: {exc}") from None
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} param groups, the optimizer has {len(self.param_groups)}")
        new_groups = []
        start = 0
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise TypeError(f"state_dict['param_groups'][{g}] must be a dict with 'params'")
            n = len(group["params"])
            try:
                saved_params = list(saved["params"])
            except TypeError:
                raise TypeError(f"state_dict['param_groups'][{g}]['params'] must be a list of param indices, "
                                f"got {type(saved['params']).__name__}") from None
            if saved_params != list(range(start, start + n)):
                raise ValueError(
                    f"state_dict['param_groups'][{g}] has params {list(saved['params'])}, expected "
                    f"{list(range(start, start + n))} (a different model or grouping)")
            start += n
            missing = [key for key in self.defaults if key not in saved]
            if missing:
                raise ValueError(f"state_dict['param_groups'][{g}] has no {', '.join(map(repr, missing))}")
            merged = ParamGroup((key, value) for key, value in saved.items() if key != "params")
            merged["params"] = group["params"]
            try:
                self._check_keys(merged)
                self.check_hyperparameters(merged)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"state_dict['param_groups'][{g}]: {exc}") from None
            new_groups.append(merged)

        n_params = len(self._params)
        states = {s.name: s for s in self.algorithm.state}
        absmax_names = self._absmax_names
        scalar_names = {s.name for s in self.algorithm.scalar_state}
        allowed = set(self._state_names) | ({"step"} if self._has_step else set())
        plan = []   # (bucket, k, entry) checked entries to write
        slots = {index: (bucket, k) for index, bucket, k in self._iter_param_slots()}
        for key, entry in saved_state.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)) \
                    or not 0 <= key < n_params:
                raise ValueError(f"state_dict['state'] has key {key!r}; expected param indices 0..{n_params - 1}")
            if not isinstance(entry, dict):
                raise TypeError(f"state_dict['state'][{key}] must be a dict")
            unknown = set(entry) - allowed
            if unknown:
                raise ValueError(
                    f"state_dict['state'][{key}] has unknown entries {sorted(unknown)}; "
                    f"{type(self).__name__} keeps {sorted(allowed)}")
            bucket, k = slots[int(key)]
            param = self._params[int(key)]
            checked = {}
            for name, value in entry.items():
                where = f"state_dict['state'][{key}][{name!r}]"
                if name == "step":
                    checked["step"] = _checked_step(value, where)
                    continue
                if name in scalar_names and isinstance(value, numbers.Real) \
                        and not isinstance(value, (bool, np.bool_)):
                    # a Python number, as older torch versions saved NAdam's mu_product or ASGD's
                    # eta and mu (torch makes them tensors on load); stored as float32 below
                    value = np.asarray(value, dtype=np.float64)
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"{where} must be an ndarray, got {type(value).__name__}")
                if name in scalar_names:
                    if value.size != 1 or value.dtype.kind != "f":
                        raise ValueError(f"{where} must hold one float, got shape {value.shape} "
                                         f"and dtype {value.dtype}")
                    checked[name] = value.reshape(())
                    continue
                if name in absmax_names:
                    if not bucket.code_maps:
                        raise ValueError(
                            f"{where}: param {key} keeps float32 states (it has {param.size} "
                            f"elements, fewer than min_8bit_size={self.min_8bit_size}), not 8-bit "
                            "ones with an absmax per block")
                    blocks = -(-param.size // BLOCK)
                    if value.shape != (blocks,):
                        raise ValueError(f"{where} has shape {value.shape}; a param of {param.size} "
                                         f"elements has {blocks} blocks of {BLOCK}, one absmax each")
                    if value.dtype.newbyteorder("=") != np.float32:
                        raise TypeError(f"{where} has dtype {value.dtype}; an absmax is float32")
                    checked[name] = value
                    continue
                declared = states.get(name)    # None: the float32 master copy (the param's shape)
                shape = declared.shape_for(param.shape) if declared is not None else param.shape
                if shape is None:
                    raise ValueError(f"{where}: a param of shape {param.shape} has no {name!r}")
                if value.shape != shape:
                    if shape == param.shape:
                        raise ValueError(f"{where} has shape {value.shape}, its param has shape {param.shape}")
                    raise ValueError(f"{where} has shape {value.shape}; for a param of shape "
                                     f"{param.shape} it must have shape {shape}")
                expected = np.dtype(np.float32) if name == "master" else bucket.state_dtype
                # A byte-swapped array (saved on a big-endian machine) holds the same values: it
                # is converted by value when written into the state below.
                if value.dtype.newbyteorder("=") != expected:
                    raise TypeError(f"{where} has dtype {value.dtype}; this optimizer keeps it as "
                                    f"{expected} (its param has dtype {param.dtype})")
                checked[name] = value
            if bucket.code_maps:
                for absmax, name in absmax_names.items():
                    if (name in checked) != (absmax in checked):
                        raise ValueError(
                            f"state_dict['state'][{key}] has {name if name in checked else absmax!r} "
                            f"without {absmax if name in checked else name!r}: an 8-bit state is its "
                            "codes and its blocks' absmax together")
            g = self._group_of(int(key))
            self._check_entry(key, checked, new_groups[g], param.shape)
            plan.append((g, bucket, k, checked))

        # Everything checked: now write.
        if seed is not None and self.stochastic_rounding:
            self.seed = seed
            for group_buckets in self._buckets:
                for bucket in group_buckets:
                    bucket.seed = seed
        for g, merged in enumerate(new_groups):
            merged.checked = None
            self.param_groups[g] = merged
        for group_buckets, group in zip(self._buckets, self.param_groups):
            for bucket in group_buckets:
                bucket.drop_state()
                self._init_group_state(group, [bucket])
        for g, bucket, k, checked in plan:
            values = self._checked(self.param_groups[g]).values
            for name, value in checked.items():
                if name == "step":
                    bucket.steps[k] = value
                    continue
                if name == "master":
                    bucket.state_view(name, k)[...] = value
                    bucket.master_ready[k] = 1
                    continue
                if name in absmax_names:
                    base = states[absmax_names[name]]
                    bucket.arena(base.name, self._initial_value(base, values))
                    bucket.state_view(name, k)[...] = value
                    continue
                if states[name].shape != "scalar":
                    bucket.arena(name, self._initial_value(states[name], values))
                bucket.state_view(name, k)[...] = value
                if states[name].lazy:
                    bucket.initialized[k] = 1

    def _group_of(self, index):
        start = 0
        for g, group in enumerate(self.param_groups):
            start += len(group["params"])
            if index < start:
                return g
        raise IndexError(index)

    def _check_entry(self, key, entry, group, param_shape):
        """Check that a saved state entry is complete for this optimizer.

        An algorithm with a step count keeps every state its settings use from the first step on,
        so an entry must hold them all; SGD's momentum buffer is optional (torch adds it lazily).
        """
        where = f"state_dict['state'][{key}]"
        alg = self.algorithm
        if not alg.has_step:
            return
        if "step" not in entry:
            raise ValueError(f"{where} has no 'step'")
        values = self.check_hyperparameters(group).values
        for state in alg.state:
            if alg.state_active(state, values) and state.shape_for(param_shape) is not None \
                    and state.name not in entry:
                raise ValueError(f"{where} has no {state.name!r}, which this optimizer needs")

    # ------------------------------------------------------------------------------------------

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for g, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {g}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    def __getstate__(self):
        raise TypeError(
            f"{type(self).__name__} cannot be pickled (it holds raw pointers to its params); "
            "save optimizer.state_dict() or use fastopt.save instead")
