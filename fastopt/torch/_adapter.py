"""The adapter class behind ``fastopt.torch``: a ``torch.optim.Optimizer`` around a fastopt optimizer
over zero-copy views of the params (see the package docstring), and the factory of its subclasses."""
from collections import Counter, defaultdict

import torch

import numpy as np

from .. import _dtypes
from .. import _validation as V
from .. import _factory
from .._core._tensor_gather import TensorGrads as _TensorGrads
from ..algorithms._spec import identifiers
from ..optimizer import ParamGroup as _ParamGroup
from . import _compat as _torch_compat

# torch's private names (each with its fallback) are read in fastopt/torch/_compat.py only.
_TORCH_API = _torch_compat.TENSOR_API
_increment_version = _torch_compat.increment_version
_scalar_dtype = _torch_compat.scalar_dtype
_needs_hooked_step = _torch_compat.needs_hooked_step

_SUPPORTED = ("dense (strided), contiguous CPU tensors of dtype float32, float64, float16 or "
              "bfloat16 (gradients: their param's dtype, or float32 for a float16/bfloat16 param)")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)


def _torch_dtype(dtype):
    """The torch dtype of a NumPy dtype fastopt keeps state in (bfloat16: ml_dtypes' or the uint16
    bits of a BF16Array)."""
    if dtype.name == "bfloat16" or dtype == np.uint16:
        return torch.bfloat16
    return {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}[dtype.name]


def _as_numpy(t):
    """A zero-copy NumPy view of a CPU tensor; bfloat16 as a BF16Array (its bits as uint16), as
    NumPy has no bfloat16 of its own."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).view(_dtypes.BF16Array)
    return t.numpy()


def _as_tensor(a):
    """A tensor sharing ``a``'s memory (the inverse of _as_numpy)."""
    if type(a) is _dtypes.BF16Array or a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _plain(value, name, where=None):
    """Hyperparameter ``name`` as a plain Python value (tensors to numbers, lists to tuples).

    ``where`` says which group it is in, for the error: a description, or the index ``g`` of
    ``param_groups[g]`` (an int, so that a step formats nothing unless it raises).
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            # torch.optim's error type and words for a multi-element tensor hyperparameter
            if type(where) is int:
                where = f"param_groups[{where}]"
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}"
                             + (f" ({where})" if where is not None else ""))
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v, f"{name}[{i}]", where) for i, v in enumerate(value))
    return value


def _holds_tensor(value):
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value))


# torch.optim's words for a hyperparameter its constructor refuses, per torch class: (the class's
# style for any argument, {argument: words}). The words see ``{value}`` (the value given) and, when
# one item of a pair or tuple is refused, ``{item}``, its ``{index}`` and ``{number}`` (from 1);
# the style sees ``{name}`` and ``{allowed}`` too. A drop-in raises torch's error type with torch's
# words, which test suites match, followed by fastopt's message (the argument and what it allows).
_INVALID = "Invalid {name} value: {value}"
_SHOULD = "{name} should be {allowed} but is: {value}"
_INVALID_WORDS = {"lr": "Invalid learning rate: {value}", "eps": "Invalid epsilon value: {value}",
                  "betas": "Invalid beta parameter at index {index}: {item}",
                  "etas": "Invalid eta values: {value[0]}, {value[1]}"}
_TORCH_WORDS = {
    "Adafactor": (_SHOULD, {"lr": "Learning rate should be >= 0 but is: {value}",
                            "eps": "epsilon{number} should be >= 0 but is: {item}",
                            "d": "Clipping threshold d should be >= 1 but is: {value}"}),
    "Muon": (_SHOULD, {"lr": "Learning rate should be >= 0 but is: {value}",
                       "weight_decay": "weight decay should be >= 0 but is: {value}",
                       "adjust_lr_fn": "Adjust learning rate function {value} is not supported",
                       "ns_steps": "Number of steps must be less than 100 for computational "
                                   "efficiency"}),
    "SGD": (_INVALID, {**_INVALID_WORDS,
                       "nesterov": "Nesterov momentum requires a momentum and zero dampening"}),
}


def _refused_item(hyper, value):
    """The position of the item of a pair or tuple ``value`` that ``hyper``'s constraint refuses,
    or None."""
    constraint = hyper.constraint
    if constraint.kind not in ("pair", "tuple"):
        return None
    items = (constraint.item, constraint.item) if constraint.kind == "pair" else constraint.items
    try:
        values = list(value)
    except TypeError:
        return None
    for index, (item, item_constraint) in enumerate(zip(values, items)):
        try:
            V.check_constraint(hyper.name, item, item_constraint)
        except (TypeError, ValueError):
            return index
    return None


def _torch_words(algorithm, group, error):
    """torch.optim's words for the hyperparameter of ``group`` that fastopt's ``error`` refuses
    (a constraint or a rule of ``algorithm``), or None if no hyperparameter is to blame."""
    style, words = _TORCH_WORDS.get(algorithm.torch_name, (_INVALID, _INVALID_WORDS))
    culprit = None
    for hyper in algorithm.hyperparameters:
        try:
            V.check_constraint(hyper.name, group[hyper.name], hyper.constraint)
        except (TypeError, ValueError):
            culprit = hyper
            break
    if culprit is None:   # a rule across hyperparameters: its message starts with the argument
        rule = next((r for r in algorithm.rules if r.message == str(error)), None)
        culprit = rule and next((h for h in algorithm.hyperparameters
                                 if rule.message.split()[0].split("=")[0] == h.name), None)
    if culprit is None:
        return None
    value = group[culprit.name]
    index = _refused_item(culprit, value)
    fields = dict(name=culprit.name, value=value, allowed=culprit.constraint.describe())
    if index is not None:
        fields.update(index=index, number=index + 1, item=value[index])
    for template in (words.get(culprit.name), style):
        try:
            return template.format(**fields)
        except (AttributeError, KeyError, IndexError, TypeError):
            continue    # (no words for it, or they name an item and the whole value is refused)
    return None


def _tensor_problem(t, what, like=None, shape_error=ValueError):
    """Why ``t`` cannot be used (an exception instance), or None; a shape unlike ``like``'s is a
    ``shape_error``."""
    if not isinstance(t, torch.Tensor):
        return TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        return TypeError(f"{what} is on device {t.device}; fastopt.torch supports {_SUPPORTED}")
    if t.layout != torch.strided:
        return TypeError(
            f"{what} has layout {t.layout} (sparse tensors, e.g. from nn.Embedding(sparse=True), "
            f"are not supported); fastopt.torch supports {_SUPPORTED}")
    if t.dtype not in _DTYPES:
        return TypeError(f"{what} has dtype {t.dtype}; fastopt.torch supports {_SUPPORTED}")
    if like is not None:
        if t.dtype != like.dtype and not (like.dtype in _HALF and t.dtype == torch.float32):
            return TypeError(f"{what} has dtype {t.dtype}, but its param has dtype {like.dtype}")
        if t.shape != like.shape:
            return shape_error(f"{what} has shape {tuple(t.shape)}, but its param has shape {tuple(like.shape)}")
    if not t.is_contiguous():
        return ValueError(
            f"{what} is not contiguous (strides {t.stride()}); fastopt.torch updates memory in place "
            f"and never copies: it supports {_SUPPORTED}")
    if t.is_conj() or t.is_neg():
        return ValueError(f"{what} has a lazy conj/neg bit; call .resolve_conj()/.resolve_neg() first")
    return None


class _Adapter(torch.optim.Optimizer):
    """Base class: a torch optimizer whose step runs a fastopt optimizer over NumPy views."""

    #: fastopt class that does the work.
    _fastopt_cls = None
    #: Hyperparameters mirrored from the torch groups into the fastopt groups before each step.
    _keys = ()

    def __init__(self, params, defaults, skip_nonfinite=False, master_weights=False,
                 state_dtype=None, stochastic_rounding=False, seed=None):
        self._fo = None
        # torch.optim builds Adafactor and Muon over complex params and refuses them at step():
        # the error each step raises, as torch's does (None: nothing refused)
        self._refused_at_step = None
        self._skip_nonfinite = skip_nonfinite
        stochastic_rounding = V.check_bool("stochastic_rounding", stochastic_rounding)
        self._precision = dict(master_weights=master_weights, state_dtype=state_dtype,
                               stochastic_rounding=stochastic_rounding, seed=seed)
        self._check_defaults(defaults)   # as torch: hyperparameters are checked before params
        super().__init__(params, defaults)
        self._build()

    def _check_defaults(self, defaults):
        """torch.optim's constructor checks, then fastopt's (with torch's error types)."""
        tensor_ok = not defaults.get("foreach") or defaults.get("capturable", False)
        for name, value in defaults.items():
            if isinstance(value, torch.Tensor):
                if not tensor_ok:
                    raise ValueError(f"{name} as a Tensor is not supported for capturable=False "
                                     "and foreach=True")
                _plain(value, name)
            elif isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
                if not all(isinstance(v, torch.Tensor) for v in value):
                    raise ValueError(f"{name} must be either both floats or both Tensors")
                for i, v in enumerate(value):
                    if not tensor_ok:
                        raise ValueError(f"{name}[{i}] as a Tensor is not supported for "
                                         "capturable=False and foreach=True")
                    _plain(v, f"{name}[{i}]")
        self._check_group_flags(defaults, "defaults")
        group = {key: _plain(defaults[key], key) for key in self._keys}
        try:
            self._fastopt_cls.check_hyperparameters(group)
        except (TypeError, ValueError) as exc:
            words = _torch_words(self._fastopt_cls.algorithm, group, exc)
            if words is None:
                raise
            raise type(exc)(f"{words}; {exc}") from None

    # ------------------------------------------------------------------------------------------
    # Params and groups
    # ------------------------------------------------------------------------------------------

    def _check_group_flags(self, group, where):
        if group.get("capturable", False):
            raise ValueError(f"{where}: capturable=True is not supported by fastopt.torch (CPU only)")
        if group.get("differentiable", False):
            raise ValueError(f"{where}: differentiable=True is not supported by fastopt.torch")

    def _fo_group(self, group, params, g):
        out = {key: _plain(group[key], key, f"param group {g}") for key in self._keys}
        out["params"] = [_as_numpy(p) if not self._refuses_at_step(p) else
                         np.zeros(p.shape, dtype=np.float32)   # never stepped: step() raises
                         for p in _unique(params)]
        return out

    def _refuses_at_step(self, p):
        """Whether ``p`` is a param this algorithm takes at construction and refuses at step(),
        as torch.optim does (complex params of Adafactor and Muon)."""
        return (self._fastopt_cls.algorithm.torch_rejects_complex and isinstance(p, torch.Tensor)
                and p.is_complex())

    def add_param_group(self, param_group):
        first = sum(len(g["params"]) for g in self.param_groups)
        n_groups = len(self.param_groups)
        super().add_param_group(param_group)
        # a dict that notices assignments, so a step pushes a group's hyperparameters only after
        # a change (an LR scheduler's, say): comparing them all costs more than a small step
        self.param_groups[-1] = group = _ParamGroup(self.param_groups[-1])
        refused = None
        try:
            self._check_group_flags(group, f"param group {n_groups}")
            algorithm = self._fastopt_cls.algorithm
            for i, p in enumerate(group["params"]):
                if self._refuses_at_step(p):
                    refused = RuntimeError(f"{algorithm.name} does not support complex parameters")
                    continue
                what = f"param {first + i} (group {n_groups}, shape {tuple(p.shape)})"
                problem = _tensor_problem(p, what)
                if problem is not None:
                    raise problem
                if self._precision["stochastic_rounding"] and p.dtype == torch.float16:
                    V.check_stochastic_rounding_target(_as_numpy(p), what)
            if self._fo is not None:
                self._fo.add_param_group(self._fo_group(group, group["params"], n_groups))
                self._sync_params()
        except Exception:
            del self.param_groups[n_groups:]
            raise
        if refused is not None and self._refused_at_step is None:
            self._refused_at_step = refused

    def _build(self):
        groups = [self._fo_group(group, group["params"], g) for g, group in enumerate(self.param_groups)]
        self._fo = self._make_fastopt(groups)
        self._sync_params()

    def _make_fastopt(self, groups):
        return self._fastopt_cls(groups, skip_nonfinite=self._skip_nonfinite, **self._precision)

    def _sync_params(self):
        # fastopt holds each param once; torch updates a param listed twice in a group twice (it
        # warns), which _step repeats for it.
        self._params = [p for g in self.param_groups for p in _unique(g["params"])]
        self._ptrs = [p.data_ptr() for p in self._params]
        self._group_sizes = [len(g["params"]) for g in self.param_groups]
        counts = Counter(id(p) for g in self.param_groups for p in g["params"])
        self._repeats = [(i, counts[id(p)] - 1) for i, p in enumerate(self._params)
                         if counts[id(p)] > 1]
        arrays = self._fo.params
        self._tensor_grads = _TensorGrads(
            self._params, [a.size for a in arrays], [_dtypes.storage_of(a) for a in arrays],
            [p.dtype for p in self._params], _TORCH_API)

    # ------------------------------------------------------------------------------------------
    # Step
    # ------------------------------------------------------------------------------------------

    def _push_hyperparameters(self):
        fo_groups = self._fo.param_groups
        groups = self.param_groups
        if len(groups) != len(fo_groups):
            raise RuntimeError("param_groups was resized by hand; use add_param_group")
        keys = self._keys
        for g, (tg, fg, size) in enumerate(zip(groups, fo_groups, self._group_sizes)):
            if len(tg["params"]) != size:
                raise RuntimeError(
                    f"param_groups[{g}]['params'] was changed by hand; use add_param_group, or build "
                    "a new optimizer")
            if type(tg) is _ParamGroup and tg.pushed:
                continue    # unchanged since it was last pushed
            if tg.get("capturable", False) or tg.get("differentiable", False):
                self._check_group_flags(tg, f"param_groups[{g}]")
            tensors = False
            for key in keys:
                value = tg[key]
                current = fg[key]
                if value is current:
                    continue
                if isinstance(value, (torch.Tensor, list, tuple)):
                    tensors = tensors or _holds_tensor(value)
                    value = _plain(value, key, g)
                if value != current or type(value) is not type(current):
                    fg[key] = value   # fastopt re-checks this group at the next step
            if type(tg) is _ParamGroup and not tensors:   # a tensor can change in place: not cached
                tg.pushed = True

    def _unique_params(self):
        return [p for g in self.param_groups for p in _unique(g["params"])]

    def _grads(self):
        grads = []
        updated = []
        params = self._params
        ptrs = self._ptrs
        try:
            for p in params:
                g = p.grad
                if g is None:
                    grads.append(None)
                else:
                    grads.append(_as_numpy(g))
                    updated.append(p)
        except (TypeError, RuntimeError):
            grads, updated = self._grads_slow()
        for i, p in enumerate(params):
            if p.data_ptr() != ptrs[i]:
                raise RuntimeError(
                    f"param {i} (shape {tuple(p.shape)}) now uses different memory than when the "
                    "optimizer was built (p.data = ... or set_()?); fastopt.torch updates the "
                    "original memory in place, so build a new optimizer after replacing params")
        return grads, updated

    def _grads_slow(self):
        """The gradients, checked one by one with a message that names the bad one."""
        grads = []
        updated = []
        for i, p in enumerate(self._params):
            g = p.grad
            if g is None:
                grads.append(None)
                continue
            # torch.optim raises RuntimeError for a gradient shaped unlike its param (even with the
            # same element count, e.g. after p.grad.resize_ or p.grad.data = ...)
            problem = _tensor_problem(g, f"the .grad of param {i} (shape {tuple(p.shape)})", like=p,
                                      shape_error=RuntimeError)
            if problem is not None:
                raise problem from None    # called while handling the fast path's failure
            grads.append(_as_numpy(g))
            updated.append(p)
        return grads, updated

    # Called by torch.optim.Optimizer.__init__/__setstate__ to wrap step() in torch's
    # profile_hook_step; step() below uses that wrapper itself, only when it is needed.
    _patch_step_function = _torch_compat.keep_step_unwrapped

    def step(self, closure=None, *, max_norm=None, norm_type=2.0):
        """Perform one optimization step (``closure``: reevaluates the model and returns the loss).

        With ``max_norm``, the gradients are first clipped by their global norm of order
        ``norm_type`` inside the step (one read pass for the norm, the coefficient applied as the
        update reads them; the ``.grad`` tensors are left unchanged): the result equals
        :func:`fastopt.clip_grad_norm_` on the gradients followed by ``step()``, to the last bit.
        The norm is then in ``grad_norm``.
        """
        if _needs_hooked_step(self):
            return self._hooked_step(closure, max_norm=max_norm, norm_type=norm_type)
        return self._step(closure, max_norm=max_norm, norm_type=norm_type)

    @property
    def grad_norm(self):
        """The gradients' norm in the last step that clipped (``step(max_norm=...)``), else None."""
        return self._fo.grad_norm

    def _step(self, closure=None, *, max_norm=None, norm_type=2.0):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._refused_at_step is not None:
            raise self._refused_at_step
        self._push_hyperparameters()
        # The fast gather reads every .grad through torch's C API into raw pointers; anything it
        # does not vouch for (and a param listed twice) goes through the precise checks instead.
        gathered = None if self._repeats else self._tensor_grads.gather()
        if gathered is not None:
            grads, updated = gathered, gathered.updated
        else:
            grads, updated = self._grads()
        if not updated:
            self._fo.grad_norm = None
            return loss
        try:
            self._fo.step(grads, max_norm=max_norm, norm_type=norm_type)
            for extra in range(1, max((n for _, n in self._repeats), default=0) + 1):
                again = {i for i, n in self._repeats if n >= extra}
                self._fo.step([g if i in again else None for i, g in enumerate(grads)])
        except (TypeError, ValueError) as exc:
            # A grad NumPy could view but fastopt rejects (non-contiguous, wrong dtype or shape):
            # say which param in torch's terms.
            self._grads_slow()
            raise type(exc)(f"fastopt.torch.{type(self).__name__}.step: {exc}") from None
        _increment_version(updated)
        return loss

    #: step() with torch's hooks and profiler range (torch.optim.Optimizer.profile_hook_step).
    _hooked_step = _torch_compat.profile_hook_step(_step)

    @property
    def found_inf(self):
        """With ``skip_nonfinite=True``: whether the last step was skipped for a NaN/Inf gradient."""
        return self._fo.found_inf

    @property
    def skipped_steps(self):
        """With ``skip_nonfinite=True``: how many steps were skipped for NaN/Inf gradients."""
        return self._fo.skipped_steps

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------

    def _torch_state(self, copy):
        out = defaultdict(dict)
        if self.__dict__.get("_fo") is None:
            return out
        fo_state = self._fo.state_dict()["state"] if copy else self._fo.state
        step_dtype = _scalar_dtype()
        for index, entry in fo_state.items():
            converted = {}
            for name, value in entry.items():
                if name == "step":
                    converted[name] = torch.tensor(float(value), dtype=step_dtype)
                else:
                    converted[name] = _as_tensor(value)
            out[self._params[index]] = converted
        return out

    @property
    def state(self):
        """Per-param state in torch's format, built on access.

        ``"step"`` is a new scalar tensor; the buffers (``"exp_avg"``, ...) share memory with the
        optimizer's state, so reading them is free and writing into them changes the state.
        """
        return self._torch_state(copy=self.__dict__.get("_state_copies", False))

    @state.setter
    def state(self, value):
        # torch.optim.Optimizer.__init__ assigns an empty dict; anything else is not supported.
        if value:
            raise AttributeError("assigning opt.state is not supported; use load_state_dict()")

    def state_dict(self):
        """torch.optim's ``state_dict()`` (copies of the state, ``"step"`` as a scalar tensor)."""
        self._state_copies = True
        try:
            out = super().state_dict()
        finally:
            self._state_copies = False
        if self._fo.stochastic_rounding:
            out["stochastic_rounding_seed"] = int(self._fo.seed)   # as fastopt's own state_dict
        return out

    def load_state_dict(self, state_dict):
        """Load a state dict saved by this class or by its ``torch.optim`` namesake.

        As torch, a checkpoint from an older torch may lack the group keys torch added since
        (``maximize``, ``foreach``, ...) and keep scalar states and step counts as Python numbers.
        A group without one of the algorithm's other hyperparameters, or a state it does not keep,
        comes from another optimizer and is refused (ValueError). Everything is checked before the
        fastopt state is replaced; on an error the optimizer is left as it was.
        """
        old_groups = self.param_groups
        old_defaults = dict(self.defaults)
        super().load_state_dict(state_dict)   # torch's checks, id mapping and dtype casts
        loaded = self.__dict__.pop("state", {})
        # torch casts every floating-point state to its param's dtype; fastopt keeps some in
        # another (a float32 master copy, bfloat16 moments, float32 scalars such as NAdam's
        # mu_product): those are taken as saved and cast to the dtype fastopt keeps them in
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        own = [p for group in self.param_groups for p in group["params"]]
        saved = {id(p): state_dict["state"].get(i, {}) for i, p in zip(saved_ids, own)}
        try:
            self.param_groups = [_ParamGroup(group) for group in self.param_groups]
            for g, group in enumerate(self.param_groups):
                missing = [key for key in self._required if key not in group]
                if missing:
                    raise ValueError(
                        f"state_dict['param_groups'][{g}] has no {', '.join(map(repr, missing))}: "
                        f"every {type(self).__name__} checkpoint holds {', '.join(self._required)} "
                        "(a checkpoint of another optimizer?)")
                # A checkpoint from an older torch lacks the group keys torch added since, which
                # it fills (its optimizers' __setstate__), and so does this class.
                for key, value in self._declared.items():
                    group.setdefault(key, value)
                group.update(self._fastopt_cls.algorithm.fixed)   # AdamW stays decoupled, as in torch
                self._check_group_flags(group, f"state_dict['param_groups'][{g}]")
            fo_state = {}
            index = {id(p): i for i, p in enumerate(self._unique_params())}
            kept_dtype = self._fo.kept_dtypes()
            for key, entry in loaded.items():
                if not isinstance(key, torch.Tensor) or id(key) not in index:
                    raise ValueError(f"state_dict['state'] has an entry {key!r} for no param of this optimizer")
                if not isinstance(entry, dict):
                    raise TypeError(f"the state of param {index[id(key)]} must be a dict")
                converted = {}
                for name, value in entry.items():
                    if value is None:
                        continue
                    if name == "step":
                        # a number for fastopt's check (a whole number in range); anything else
                        # as it is, for the error to show
                        one = isinstance(value, torch.Tensor) and value.numel() == 1
                        converted[name] = value.item() if one else value
                    elif isinstance(value, torch.Tensor):
                        where = f"state '{name}' of param {index[id(key)]}"
                        saved_entry = saved.get(id(key))
                        original = saved_entry.get(name) if isinstance(saved_entry, dict) else None
                        if isinstance(original, torch.Tensor) and original.is_floating_point() \
                                and value.is_floating_point():
                            value = original.detach().to(_torch_dtype(kept_dtype(index[id(key)], name)))
                            problem = _tensor_problem(value, where)   # fastopt checks dtype, shape
                        else:
                            problem = _tensor_problem(value, where, like=key)
                        if problem is not None and not isinstance(problem, ValueError):
                            raise problem
                        converted[name] = _as_numpy(value.contiguous())
                    else:
                        converted[name] = value
                if converted:
                    fo_state[index[id(key)]] = converted
            fo_groups = []
            start = 0
            for g, group in enumerate(self.param_groups):
                entry = {key: _plain(group[key], key, f"state_dict['param_groups'][{g}]")
                         for key in self._keys}
                n = len(_unique(group["params"]))
                entry["params"] = list(range(start, start + n))
                start += n
                fo_groups.append(entry)
            fo_dict = {"state": fo_state, "param_groups": fo_groups}
            if state_dict.get("stochastic_rounding_seed") is not None:
                fo_dict["stochastic_rounding_seed"] = state_dict["stochastic_rounding_seed"]
            self._fo.load_state_dict(fo_dict)
        except Exception:
            self.param_groups = old_groups
            self.defaults = old_defaults
            raise
        self._sync_params()

    def __getstate__(self):
        raise TypeError(
            f"fastopt.torch.{type(self).__name__} cannot be pickled or deep-copied (it holds raw "
            "pointers to its params); save optimizer.state_dict() instead")


def _unique(params):
    """``params`` without repeats, in first-seen order (torch allows a param twice in a group)."""
    seen = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


def _required_in_checkpoints(algorithm):
    """The group keys every checkpoint of ``algorithm`` holds, in declaration order.

    torch fills a key an older checkpoint lacks only where torch added it later (its optimizers'
    ``__setstate__``): an implementation flag (``foreach``, ``fused``, ...), a key a variant pins,
    or a switch that is off by default (``maximize``, ``amsgrad``, ``nesterov``, ``centered``,
    ``decoupled_weight_decay``; RMSprop's ``momentum``, which turns on a state). A group without
    one of the others comes from another optimizer (an SGD checkpoint has no ``betas``).
    """
    switches = {name for state in algorithm.state if state.when for name in identifiers(state.when)}
    filled = set(algorithm.torch_extras) | set(algorithm.torch_load_defaults) | set(algorithm.fixed)
    return tuple(h.name for h in algorithm.hyperparameters
                 if h.name not in filled and h.constraint.kind != "flag"
                 and not switches.intersection(h.fields))


def _make_adapter(algorithm, base):
    fastopt_cls = _factory.CLASSES[algorithm.name]
    follows = f"``torch.optim.{algorithm.torch_name}``" if algorithm.torch_name else algorithm.name
    declared = {h.name: h.default for h in algorithm.hyperparameters}
    declared.update(algorithm.torch_extras)
    declared.update(algorithm.torch_load_defaults)
    declared.update(algorithm.fixed)
    return type(algorithm.name, (base,), {
        "__init__": _factory.make_init(algorithm, _Adapter, torch=True),
        "__doc__": (f"{follows} running :class:`fastopt.{algorithm.name}`'s fused kernel (same "
                    f"arguments, plus ``skip_nonfinite``).\n\n" + fastopt_cls.__doc__),
        "__module__": __package__,   # fastopt.torch: where users find it (and pickle too)
        "__qualname__": algorithm.name,
        "_fastopt_cls": fastopt_cls,
        "_keys": tuple(h.name for h in algorithm.hyperparameters),
        "_declared": declared,
        "_required": _required_in_checkpoints(algorithm),
    })


#: ``{name: adapter class}`` for every declared algorithm.
ADAPTERS = _factory.build_classes(_make_adapter, _Adapter, lambda cls: cls._fastopt_cls.algorithm)
