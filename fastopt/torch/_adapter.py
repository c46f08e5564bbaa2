"""The adapter class behind ``fastopt.torch``: a ``torch.optim.Optimizer`` around a fastopt optimizer
over zero-copy views of the params (see the package docstring), and the factory of its subclasses."""
import re
from collections.abc import Mapping

import numpy as np
import torch

from .. import _dtypes
from .. import _validation as V
from .. import _factory
from ..algorithms._spec import identifiers
from ..optimizer import ParamGroup as _ParamGroup
from . import _compat as _torch_compat
from ._flat import FlatRunner, NotFlat, dtype_runs, flattened, warn_per_tensor
from ._runner import Runner, config_key, unique as _unique
from ._state import ParamState, State
from . import _bitsandbytes
from ._tensors import as_numpy, as_tensor, is_dtensor, like_param, local, tensor_problem, torch_dtype
from .._core._tensor_gather import TensorGrads, copy_gathered, same_items

# torch's private names (each with its fallback) are read in fastopt/torch/_compat.py only.
_increment_version = _torch_compat.increment_version
_scalar_dtype = _torch_compat.scalar_dtype
_needs_hooked_step = _torch_compat.needs_hooked_step
_dynamo_callback = _torch_compat.dynamo_callback


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


def _codes(value, saved, name):
    """The uint8 codes of an 8-bit state: ``saved[name]`` (as a checkpoint held it) or ``value``
    if either is uint8, else None."""
    original = saved.get(name) if isinstance(saved, dict) else None
    if isinstance(original, torch.Tensor) and original.dtype == torch.uint8:
        return original
    return value if value.dtype == torch.uint8 else None


class _Adapter(torch.optim.Optimizer):
    """Base class: a torch optimizer whose step runs a fastopt optimizer over NumPy views.

    torch.optim's whole contract holds: between steps, a group's params may be replaced, added,
    removed or reordered, ``param_groups`` reassigned (DeepSpeed sets it to one group before each
    step), params given new memory (``p.data = ...``), and ``state`` read and written as torch's
    dict. Each configuration of the groups gets a :class:`Runner` (a fastopt optimizer over views
    of its params), found again when the configuration comes back; a param's state lives in the
    runner that last stepped it, or, detached, in a plain dict until a runner takes it in.
    """

    #: fastopt class that does the work.
    _fastopt_cls = None
    #: Hyperparameters mirrored from the torch groups into the fastopt groups before each step.
    _keys = ()

    def __init__(self, params, defaults, skip_nonfinite=False, master_weights=False,
                 state_dtype=None, stochastic_rounding=False, seed=None, optim_bits=32,
                 min_8bit_size=4096, flat=False):
        self._flat = None            # flat=True: every FlatParams, in group order (see _flat.py)
        self._flat_groups = []       # ... per param group
        self._flat_lists = None      # the groups' params lists the flat runner steps
        self._flat_blocked = None    # why the state cannot go back into the flat buffers now
        self._flat_failed_counts = None   # the buffers' counts when the last full check failed
        self._flat_warned = False
        self._runner = None          # the runner of the configuration last stepped
        self._runners = {}           # configuration key -> Runner
        self._owner = {}             # id(param) -> the Runner holding its state
        self._detached_state = {}    # id(param) -> (param, torch-format state dict)
        # torch.optim builds Adafactor and Muon over complex params and refuses them at step():
        # the error each step raises, as torch's does (None: nothing refused)
        self._refused_at_step = None
        self._skip_nonfinite = skip_nonfinite
        self._grad_norm = None
        self._found_inf = False
        self._skipped_steps = 0
        stochastic_rounding = V.check_bool("stochastic_rounding", stochastic_rounding)
        # one seed for every runner (drawn once when not given), so a resumed run rounds alike
        self._precision = dict(master_weights=master_weights, state_dtype=state_dtype,
                               stochastic_rounding=stochastic_rounding, seed=V.check_seed(seed),
                               optim_bits=V.check_optim_bits(optim_bits),
                               min_8bit_size=V.check_integer("min_8bit_size", min_8bit_size, low=0))
        self._check_defaults(defaults)   # as torch: hyperparameters are checked before params
        flat = V.check_bool("flat", flat)
        if flat and self._precision["optim_bits"] == 8:
            raise ValueError("flat=True is not available with 8-bit states (optim_bits=8): their "
                             "blocks are each param's own, which a flat buffer does not keep apart")
        if flat and self._fastopt_cls.algorithm.driver is not None:
            raise ValueError(f"flat=True is not available for {self._fastopt_cls.algorithm.name}: "
                             "its update reads each param as a whole (its matrix, or its norms), "
                             "which a flat buffer does not keep apart")
        super().__init__(params, defaults)
        if flat:
            self._flat = []
            for g, group in enumerate(self.param_groups):
                self._flatten_group(g, group)
            self._flat_prepare(self.param_groups, [g["params"] for g in self.param_groups])
        else:
            self._activate(self.param_groups)

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

    def _refuses_at_step(self, p):
        """Whether ``p`` is a param this algorithm takes at construction and refuses at step(),
        as torch.optim does (complex params of Adafactor and Muon)."""
        return (self._fastopt_cls.algorithm.torch_rejects_complex and isinstance(p, torch.Tensor)
                and p.is_complex())

    def _check_param(self, p, what):
        """Raise the error that says why param ``p`` cannot be stepped, if any."""
        if self._refuses_at_step(p):
            return
        algorithm = self._fastopt_cls.algorithm
        if algorithm.driver is not None and is_dtensor(p):
            # its update reads the whole matrix (Newton-Schulz, row and column statistics): on a
            # local shard it would be another algorithm
            raise TypeError(f"{what} is a DTensor (FSDP2, tensor parallel); {algorithm.name}'s "
                            "update needs each param as a whole (its matrix, or its norms), which "
                            "fastopt.torch does not gather: use it on plain tensors")
        problem = tensor_problem(local(p) if isinstance(p, torch.Tensor) else p, what)
        if problem is not None:
            raise problem
        if self._precision["stochastic_rounding"] and p.dtype == torch.float16:
            V.check_stochastic_rounding_target(as_numpy(local(p)), what)

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
            self._fastopt_cls.check_hyperparameters(
                {key: _plain(group[key], key, f"param group {n_groups}") for key in self._keys})
            algorithm = self._fastopt_cls.algorithm
            for i, p in enumerate(group["params"]):
                if self._refuses_at_step(p):
                    refused = RuntimeError(f"{algorithm.name} does not support complex parameters")
                    continue
                self._check_param(p, f"param {first + i} (group {n_groups}, shape {tuple(p.shape)})")
        except Exception:
            del self.param_groups[n_groups:]
            raise
        if refused is not None and self._refused_at_step is None:
            self._refused_at_step = refused
        if self.__dict__.get("_flat") is not None:     # (torch's __init__ adds groups before)
            try:
                self._flatten_group(n_groups, group)
            except Exception:
                del self.param_groups[n_groups:]
                raise
        # the next step sees the new configuration and builds its runner

    # ------------------------------------------------------------------------------------------
    # Flat mode (flat=True; see _flat.py)
    # ------------------------------------------------------------------------------------------

    def _flatten_group(self, g, group):
        """Move group ``g``'s params into one flat buffer per dtype (checked first: on an error
        nothing moved)."""
        params = group["params"]
        if len(_unique(params)) != len(params):
            raise ValueError(f"flat=True: param_groups[{g}] lists a param twice")
        flats = []
        for run in dtype_runs(params):
            try:
                flats.append(flattened(run))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"flat=True, param_groups[{g}]: {exc}") from None
        self._flat_groups.append(flats)
        self._flat.extend(flats)
        self._flat_lists = [list(group["params"]) for group in self.param_groups[:len(self._flat_groups)]]
        self._flat_blocked = None
        # the full check's fast form: the compiled gather over the flattened params, and where
        # each one's gradient goes in its buffer
        place = {id(p): (flat._grad_ptrs[i], _dtypes.storage_of(flat.grad_array))
                 for flat in self._flat for i, p in enumerate(flat.params)}
        params = [p for group in self._flat_lists for p in group]
        self._flat_targets = [place[id(p)] for p in params]
        self._flat_gather = TensorGrads(
            params, params, [len(group) for group in self._flat_lists],
            [p.numel() for p in params], [storage for _, storage in self._flat_targets],
            [p.dtype for p in params], dict(_torch_compat.TENSOR_API))

    def _flat_where(self, groups):
        names = {id(p): f"param_groups[{g}]['params'][{j}]"
                 for g, group in enumerate(groups) for j, p in enumerate(group["params"])}
        return lambda p: names.get(id(p), "a flattened param")

    def _new_flat_runner(self, groups, key):
        stepped = [g for g, group in enumerate(groups) if len(group["params"])]
        fo_groups = []
        layouts = []
        for g in stepped:
            fo_group = {k: _plain(groups[g][k], k, f"param group {g}") for k in self._keys}
            fo_group["params"] = [flat.data_array for flat in self._flat_groups[g]]
            fo_groups.append(fo_group)
            layouts.extend(self._flat_groups[g])
        fo = self._make_fastopt(fo_groups)
        params = [p for g in stepped for p in groups[g]["params"]]
        scalars = {s.name for s in self._fastopt_cls.algorithm.scalar_state}
        return FlatRunner(key, groups, stepped, fo, params, layouts, scalars)

    def _flat_prepare(self, groups, lists):
        """The flat runner, after the full check of every param and gradient (gradients that are
        not the buffers' views copied in), its state taken in; NotFlat if the groups, params,
        gradients or state cannot be stepped flat now (nothing written then)."""
        if self._flat_blocked is not None:
            raise NotFlat(self._flat_blocked)
        if lists is None or not same_items(lists, self._flat_lists):
            raise NotFlat("the param groups no longer hold the params that flat=True flattened")
        # The compiled gather checks every param's place and gradient as a per-tensor step does,
        # and the gradients not at their place in the buffer are copied in; anything it does not
        # vouch for takes the precise checks, which say what keeps the step from running flat.
        gathered = self._flat_gather.gather(lists)
        copied = -1 if gathered is None else copy_gathered(gathered, self._flat_targets)
        checked = None
        if copied < 0:
            # (a full check that failed is not repeated while the buffers' counts stay as they
            # were then: the step goes per tensor at once)
            counts = tuple(flat.counts() for flat in self._flat)
            if None in counts:
                counts = None      # (without counts, every step checks)
            elif counts == self._flat_failed_counts:
                raise NotFlat("unchanged since the last check")
            where = self._flat_where(groups)
            try:
                checked = [flat.check(lambda i, flat=flat: where(flat.params[i])) for flat in self._flat]
            except NotFlat:
                self._flat_failed_counts = counts
                raise
        key = ("flat",) + config_key(groups)
        runner = self._runners.get(key)
        if runner is not None and not runner.settle():
            raise NotFlat("a param's step count was set apart from the rest of its flat buffer's")
        if runner is None:
            runner = self._new_flat_runner(groups, key)
            try:
                self._build_runner(groups, key, runner)
            except NotFlat as exc:
                self._flat_blocked = str(exc)
                raise
        if checked is not None:
            for flat, (grads, moved) in zip(self._flat, checked):
                flat.put_back(moved)
                flat.copy_in(grads)
            runner.refresh()
            copied = sum(len(grads) for grads, _ in checked)
        if not copied:      # every .grad is its view: trust the counts from now on (else the
            for flat in self._flat:     # next step checks again: see FlatParams.copy_in)
                flat.recount()
        self._runner = runner
        return runner

    def _flat_runner(self, runner, groups, lists):
        """The flat runner if this step can update the flat buffers, else None (the step goes
        per tensor, as without the flat mode)."""
        if runner is not None and runner.flat:
            if runner.step_floats is not None:
                runner.read_step_tensors()
            if not runner.ready(lists):
                runner = None
        else:
            runner = None
        if runner is None:
            try:
                runner = self._flat_prepare(groups, lists)
            except NotFlat as exc:
                if not self._flat_warned:
                    self._flat_warned = True
                    warn_per_tensor(str(exc))
                return None
        # the gradients as they are now are the ones this step uses (the step does not write
        # them: marking them before it is marking them after)
        runner.mark_seen()
        return runner

    def _zero_grad(self, set_to_none=None):
        if self._flat is None or set_to_none:
            return super().zero_grad(True if set_to_none is None else set_to_none)
        groups = self.param_groups
        lists = [group["params"] for group in groups]
        if not same_items(lists, self._flat_lists):
            return super().zero_grad(False)
        for flat in self._flat:
            flat.zero_grad()

    # torch.optim's zero_grad is not traced by torch.compile either
    zero_grad = _torch_compat.disable_dynamo(_zero_grad)
    zero_grad.__doc__ = """Reset the gradients of all params.

        As torch.optim's, with ``set_to_none=True`` by default. With ``flat=True`` the default
        keeps every ``.grad`` a view of its flat gradient buffer and zeroes the buffer in one pass
        (a param whose ``.grad`` was replaced or set to None gets its view back, zeroed); pass
        ``set_to_none=True`` to set them to None (the next step then copies the new gradients
        into the buffer).
        """

    def _fo_group(self, group, params, g):
        out = {key: _plain(group[key], key, f"param group {g}") for key in self._keys}
        out["params"] = [as_numpy(local(p)) if not self._refuses_at_step(p) else
                         np.zeros(p.shape, dtype=np.float32)   # never stepped: step() raises
                         for p in _unique(params)]
        return out

    def _make_fastopt(self, groups):
        return self._fastopt_cls(groups, skip_nonfinite=self._skip_nonfinite, **self._precision)

    # ------------------------------------------------------------------------------------------
    # Runners: one per configuration of param_groups
    # ------------------------------------------------------------------------------------------

    def _activate(self, groups):
        """The runner of ``groups`` (their configuration now), built if it is new or its params'
        memory moved, carrying every param's state over."""
        key = config_key(groups)
        runner = self._runners.get(key)
        if runner is None or not runner.same_memory():
            runner = self._build_runner(groups, key)
        self._runner = runner
        return runner

    def _new_runner(self, groups, key):
        """A runner over ``groups`` with no state, after checking every group and param."""
        params = []
        seen = set()
        for g, group in enumerate(groups):
            if not isinstance(group, dict):
                raise TypeError(f"param_groups[{g}] must be a dict, got {type(group).__name__}")
            self._check_group_flags(group, f"param_groups[{g}]")
            missing = [k for k in self._keys if k not in group]
            if missing:
                raise ValueError(f"param_groups[{g}] has no {', '.join(map(repr, missing))}")
            group_seen = set()
            for i, p in enumerate(group["params"]):
                if id(p) in group_seen:
                    continue
                if id(p) in seen:
                    raise ValueError(f"param_groups[{g}]['params'][{i}] is also in another group: "
                                     "some parameters appear in more than one parameter group")
                group_seen.add(id(p))
                self._check_param(p, f"param_groups[{g}]['params'][{i}] (shape {tuple(p.shape)})")
                params.append(p)
            seen |= group_seen
        # torch steps a group with no params as nothing (ZeRO-3 empties its groups between
        # sub-group steps); fastopt groups are made for the others only
        stepped = [g for g, group in enumerate(groups) if len(group["params"])]
        fo = self._make_fastopt([self._fo_group(groups[g], groups[g]["params"], g)
                                 for g in stepped]) if stepped else None
        shards = [local(p) for p in params]
        return Runner(key, groups, stepped, fo, params, shards)

    def _build_runner(self, groups, key, runner=None):
        """Build, fill and register the runner of ``groups`` (``runner``: one already made, not
        filled yet): each param's state comes from the runner holding it (retired then, its other
        params' state detached) or from the detached state. Everything is checked before anything
        changes: on an error, all stays as it was."""
        if runner is None:
            runner = self._new_runner(groups, key)
        fo = runner.fo
        states = {}
        donors = set()
        kept = None
        for i, p in enumerate(runner.params):
            owner = self._owner.get(id(p))
            if owner is not None:
                owner.read_step_tensors()
                entry = owner.param_state(owner.index[id(p)])   # views: copied by the load
                donors.add(owner)
            elif id(p) in self._detached_state:
                kept = kept or runner.kept_dtypes()
                entry = self._fo_entry(self._detached_state[id(p)][1], kept, i)
            else:
                continue
            if entry:
                states[i] = entry
        if states:
            fo_states = runner.fo_states(states)   # (a flat runner: NotFlat if they differ)
            try:
                fo.load_state_dict({"state": fo_states,
                                    "param_groups": fo.state_dict()["param_groups"]})
            except (TypeError, ValueError) as exc:
                if runner.flat:    # the per-param path says which param's state does not fit
                    raise NotFlat(f"a param's state does not fit it ({exc})") from None
                raise type(exc)(self._kept_state_message(runner, groups, exc)) from None
        for donor in donors:
            self._retire(donor)
        # a runner whose params have no state costs nothing to rebuild: dropping it keeps params
        # that are swapped for new ones at every step from piling up with their runners
        for other in [r for r in self._runners.values() if r is not self._runner]:
            if other.fo is None or not any(other.has_state(i) for i in range(len(other.params))):
                self._retire(other)
        for p in runner.params:
            self._detached_state.pop(id(p), None)
            self._owner[id(p)] = runner
        self._runners[key] = runner
        return runner

    def _kept_state_message(self, runner, groups, exc):
        """``exc`` (fastopt's refusal of a param's kept state) in the terms of ``groups``."""
        where = {}
        for g, group in enumerate(groups):
            for j, p in enumerate(group["params"]):
                where.setdefault(id(p), f"param_groups[{g}]['params'][{j}] (shape {tuple(p.shape)})")

        def name(match):
            return "the state of " + where[id(runner.params[int(match.group(1))])]
        text = re.sub(r"state_dict\['state'\]\[(\d+)\]", name, str(exc))
        return (f"{text}. The optimizer keeps a param's state across changes of its param groups "
                "and memory, and this state no longer fits its param (was the param resized or "
                "given another dtype?); nothing was stepped or dropped: restore the param, or "
                "`del optimizer.state[param]` to start its state afresh")

    def _retire(self, runner):
        """Unregister ``runner``: the state of its params becomes detached state (tensors that
        share its arenas' memory, so nothing is copied until a runner takes them in)."""
        runner.read_step_tensors()
        for i, p in enumerate(runner.params):
            if self._owner.get(id(p)) is not runner:
                continue
            del self._owner[id(p)]
            entry = runner.param_state(i)
            if entry:
                self._detached_state[id(p)] = (p, self._torch_entry(p, entry))
        self._runners.pop(runner.key, None)
        if self._runner is runner:
            self._runner = None

    def _torch_entry(self, p, entry):
        """A fastopt state entry (``{"step": int, name: ndarray}``) in torch's format, its
        tensors sharing the arrays' memory."""
        out = {}
        for name, value in entry.items():
            if name == "step":
                out[name] = torch.tensor(float(value), dtype=_scalar_dtype())
            else:
                out[name] = like_param(as_tensor(value), p)
        return out

    def _fo_entry(self, entry, kept, index, param=None, saved=None):
        """A torch-format state entry of param ``index`` as fastopt's: a floating-point tensor in
        the dtype fastopt keeps it in (``kept``, from ``kept_dtypes()``), taken from ``saved`` --
        the entry as a checkpoint held it, before torch's load cast it to its param's dtype --
        when given; other tensors must match ``param``; a step count as a number (anything else
        as it is, for fastopt's check to show)."""
        out = {}
        for name, value in entry.items():
            if value is None:
                continue
            codes = _codes(value, saved, name) if isinstance(value, torch.Tensor) else None
            if name == "step":
                one = isinstance(value, torch.Tensor) and value.numel() == 1
                out[name] = value.item() if one else value
            elif codes is not None:
                # the codes of an 8-bit state (which torch's load casts to the param's dtype: taken
                # as saved); fastopt's load checks their shape and dtype
                out[name] = local(codes).detach().contiguous().numpy()
            elif isinstance(value, torch.Tensor) and kept is not None \
                    and kept(index, name) == np.uint8:
                # an 8-bit state saved in another dtype (float32 states, int8 codes), which torch's
                # load cast to the param's dtype: taken as saved, for fastopt's load to name its
                # dtype (there is no float dtype of uint8 codes to cast it to)
                original = saved.get(name) if isinstance(saved, dict) else None
                original = original if isinstance(original, torch.Tensor) else value
                out[name] = as_numpy(local(original).detach().contiguous())
            elif isinstance(value, torch.Tensor):
                where = f"state '{name}' of param {index}"
                original = saved.get(name) if isinstance(saved, dict) else value
                if isinstance(original, torch.Tensor) and original.is_floating_point() \
                        and value.is_floating_point():
                    value = local(original).detach().to(torch_dtype(kept(index, name)))
                    problem = tensor_problem(value, where)   # fastopt checks dtype, shape
                else:
                    value = local(value).detach()
                    problem = tensor_problem(value, where, like=None if param is None else local(param))
                if problem is not None and not isinstance(problem, ValueError):
                    raise problem
                out[name] = as_numpy(value.contiguous())
            else:
                out[name] = value
        return out

    # ------------------------------------------------------------------------------------------
    # Step
    # ------------------------------------------------------------------------------------------

    def _push_hyperparameters(self, runner, groups):
        keys = self._keys
        for g, fg in zip(runner.stepped, runner.fo.param_groups):
            tg = groups[g]
            if type(tg) is _ParamGroup and tg.pushed is fg:
                continue    # unchanged since it was last pushed into this fastopt group
            if tg.get("capturable", False) or tg.get("differentiable", False):
                self._check_group_flags(tg, f"param_groups[{g}]")
            tensors = False
            for key in keys:
                try:
                    value = tg[key]
                except KeyError:
                    raise ValueError(f"param_groups[{g}] has no {key!r}") from None
                current = fg[key]
                if value is current:
                    continue
                if isinstance(value, (torch.Tensor, list, tuple)):
                    tensors = tensors or _holds_tensor(value)
                    value = _plain(value, key, g)
                if value != current or type(value) is not type(current):
                    fg[key] = value   # fastopt re-checks this group at the next step
            if type(tg) is _ParamGroup and not tensors:   # a tensor can change in place: not cached
                tg.pushed = fg

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

        Under ``torch.compile``, the step runs eagerly: a compiled training step breaks its graph
        here (the kernel updates memory in place, outside any graph).
        """
        if _dynamo_callback() is not None:   # torch.compile is running: keep Dynamo out of the step
            return self._step_outside_graph(closure, max_norm=max_norm, norm_type=norm_type)
        if _needs_hooked_step(self):
            return self._hooked_step(closure, max_norm=max_norm, norm_type=norm_type)
        return self._step(closure, max_norm=max_norm, norm_type=norm_type)

    # The graph break: Dynamo does not trace this, and runs it (and all it calls) eagerly. Taken
    # only while torch.compile runs: the wrapper costs ~0.9 us a call (AMD EPYC, 2026-12-06), as
    # much as the rest of a small step.
    @_torch_compat.disable_dynamo
    def _step_outside_graph(self, closure=None, *, max_norm=None, norm_type=2.0):
        if _needs_hooked_step(self):
            return self._hooked_step(closure, max_norm=max_norm, norm_type=norm_type)
        return self._step(closure, max_norm=max_norm, norm_type=norm_type)

    @property
    def grad_norm(self):
        """The gradients' norm in the last step that clipped (``step(max_norm=...)``), else None."""
        return self._grad_norm

    def _step(self, closure=None, *, max_norm=None, norm_type=2.0):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._refused_at_step is not None:
            raise self._refused_at_step
        groups = self.param_groups
        try:    # (one group, the common case, without a comprehension: 0.15 us of a 4 us step)
            lists = [groups[0]["params"]] if len(groups) == 1 else [g["params"] for g in groups]
        except (TypeError, KeyError, IndexError):
            lists = None
        # The fast gather reads every .grad through torch's C API into raw pointers, and checks
        # on the way that the groups still hold this runner's params at their memory; anything
        # it does not vouch for goes through the runner of the groups as they are now, and the
        # precise checks.
        flat_runner = None if self._flat is None else self._flat_runner(self._runner, groups, lists)
        if flat_runner is not None:      # each flat buffer with one call (see _flat.py)
            runner = flat_runner
            self._push_hyperparameters(runner, groups)
            grads, updated = runner.grad_arrays, runner.bumped
        else:
            runner = self._runner
            gathered = (runner.gather(lists) if runner is not None and lists is not None
                        and runner.gather is not None else None)
            if gathered is None:
                runner = self._activate(groups)
                gathered = runner.gather(lists) if runner.gather is not None else None
            if runner.fo is None:          # no group holds a param: nothing to step
                self._grad_norm = None
                return loss
            self._push_hyperparameters(runner, groups)
            if gathered is not None:
                grads, updated = gathered, gathered.updated
            else:
                grads, updated = runner.grads()
            if not updated:
                self._grad_norm = None
                return loss
            if runner.step_floats is not None:
                runner.read_step_tensors()
        fo = runner.fo
        try:
            fo.step(grads, max_norm=max_norm, norm_type=norm_type)
            for extra in range(1, runner.extra_steps + 1):
                again = {i for i, n in runner.repeats if n >= extra}
                fo.step([g if i in again else None for i, g in enumerate(grads)])
        except (TypeError, ValueError) as exc:
            # A grad NumPy could view but fastopt rejects (non-contiguous, wrong dtype or shape):
            # say which param in torch's terms.
            runner.grads()
            raise type(exc)(f"fastopt.torch.{type(self).__name__}.step: {exc}") from None
        if max_norm is not None or self._skip_nonfinite:
            self._grad_norm = fo.grad_norm
            self._found_inf = fo.found_inf
            if fo.found_inf:
                self._skipped_steps += 1
        else:
            self._grad_norm = None
        _increment_version(updated)     # (flat: the buffers, whose counters the params share)
        if runner.step_floats is not None:   # (the check spares the hot path a call)
            runner.write_step_tensors()
        return loss

    #: step() with torch's hooks and profiler range (torch.optim.Optimizer.profile_hook_step).
    _hooked_step = _torch_compat.profile_hook_step(_step)

    @property
    def found_inf(self):
        """With ``skip_nonfinite=True``: whether the last step was skipped for a NaN/Inf gradient."""
        return self._found_inf

    @property
    def skipped_steps(self):
        """With ``skip_nonfinite=True``: how many steps were skipped for NaN/Inf gradients."""
        return self._skipped_steps

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------

    def _state_of(self, p):
        """``optimizer.state[p]``: live in its runner's arenas, or its detached dict (created
        empty, as torch.optim's ``defaultdict(dict)`` does)."""
        if id(p) in self._owner:
            return ParamState(self, p)
        held = self._detached_state.get(id(p))
        if held is None:
            held = self._detached_state[id(p)] = (p, {})
        return held[1]

    def _detach(self, p, replace=ParamState):
        """Take ``p``'s state out of its runner's arenas (retiring the runner: its params' state
        is detached) and return its detached dict; with ``replace``, make that dict ``replace``
        (None: drop the state). The next step that holds ``p`` loads it back, checked."""
        runner = self._owner.get(id(p))
        if runner is not None:
            self._retire(runner)
        self._flat_blocked = None     # the edited state may fit the flat buffers again
        if replace is None:
            self._detached_state.pop(id(p), None)
            return None
        if replace is not ParamState:
            self._detached_state[id(p)] = (p, replace)
            return replace
        return self._state_of(p)

    def _has_state(self, p):
        runner = self._owner.get(id(p))
        if runner is not None:
            return runner.has_state(runner.index[id(p)])
        return id(p) in self._detached_state

    def _params_with_state(self):
        out = [p for runner in self._runners.values() for i, p in enumerate(runner.params)
               if self._owner.get(id(p)) is runner and runner.has_state(i)]
        out.extend(p for p, _ in self._detached_state.values())
        return out

    def _state_copies(self):
        """``{param: copy of its state}`` for the params of ``param_groups`` (state_dict())."""
        out = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in out:
                    continue
                runner = self._owner.get(id(p))
                if runner is not None:
                    runner.read_step_tensors()
                    entry = runner.param_state(runner.index[id(p)], copy=True)
                    if entry:
                        out[p] = self._torch_entry(p, entry)
                elif id(p) in self._detached_state:
                    out[p] = {name: value.clone() if isinstance(value, torch.Tensor) else value
                              for name, value in self._detached_state[id(p)][1].items()}
        return out

    @property
    def state(self):
        """Per-param state in torch's format, ``{param: {name: value}}``, live.

        The buffers (``"exp_avg"``, ...) share memory with the optimizer's state: reading them is
        free, and editing them in place (or assigning a tensor of the same shape, which is copied
        in) changes the state. ``"step"`` is a scalar tensor, as in torch: an edit of it is seen
        by the next step, which advances it. ``optimizer.state[p] = {...}``, new entries and
        deletions are kept as given and checked when ``p`` is next stepped.
        """
        if self.__dict__.get("_copying_state"):
            return self._state_copies()
        return State(self)

    @state.setter
    def state(self, value):
        # torch.optim.Optimizer.__init__ assigns an empty defaultdict; users reset state so
        if "_runners" not in self.__dict__:
            return
        if not isinstance(value, Mapping):
            raise TypeError(f"optimizer.state must be a dict of param states, got {type(value).__name__}")
        entries = list(value.items())
        for key, entry in entries:
            if not isinstance(key, torch.Tensor):
                raise TypeError(f"optimizer.state is keyed by params (tensors), got {type(key).__name__}")
            if not isinstance(entry, Mapping):
                raise TypeError(f"the state of a param must be a dict, got {type(entry).__name__}")
        entries = [(key, dict(entry)) for key, entry in entries]
        for runner in list(self._runners.values()):
            self._retire(runner)
        self._detached_state = {id(key): (key, entry) for key, entry in entries}
        self._flat_blocked = None

    def state_dict(self):
        """torch.optim's ``state_dict()`` (copies of the state, ``"step"`` as a scalar tensor)."""
        self._copying_state = True
        try:
            out = super().state_dict()
        finally:
            self._copying_state = False
        if self._precision["stochastic_rounding"]:
            out["stochastic_rounding_seed"] = int(self._precision["seed"])   # as fastopt's own
        if self._fastopt_cls.algorithm.bitsandbytes_states:
            out = _bitsandbytes.to_bitsandbytes(self._fastopt_cls.algorithm, out)
        return out

    def load_state_dict(self, state_dict):
        """Load a state dict saved by this class or by its ``torch.optim`` namesake.

        As torch, a checkpoint from an older torch may lack the group keys torch added since
        (``maximize``, ``foreach``, ...) and keep scalar states and step counts as Python numbers.
        A group without one of the algorithm's other hyperparameters, or a state it does not keep,
        comes from another optimizer and is refused (ValueError). Everything is checked before the
        fastopt state is replaced; on an error the optimizer is left as it was.
        """
        if self._fastopt_cls.algorithm.bitsandbytes_states:
            state_dict = _bitsandbytes.from_bitsandbytes(self._fastopt_cls.algorithm, state_dict,
                                                         self._declared)
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
            fo_groups = []
            start = 0
            for g, group in enumerate(self.param_groups):
                entry = {key: _plain(group[key], key, f"state_dict['param_groups'][{g}]")
                         for key in self._keys}
                n = len(_unique(group["params"]))
                entry["params"] = list(range(start, start + n))
                start += n
                if n:                  # (a group with no params has no fastopt group)
                    fo_groups.append(entry)
            runner = self._new_runner(self.param_groups, config_key(self.param_groups))
            fo_state = {}
            index = runner.index
            kept_dtype = runner.fo.kept_dtypes() if runner.fo is not None else None
            for key, entry in loaded.items():
                if not isinstance(key, torch.Tensor) or id(key) not in index:
                    raise ValueError(f"state_dict['state'] has an entry {key!r} for no param of this optimizer")
                if not isinstance(entry, dict):
                    raise TypeError(f"the state of param {index[id(key)]} must be a dict")
                converted = self._fo_entry(entry, kept_dtype, index[id(key)], param=key,
                                           saved=saved.get(id(key)))
                if converted:
                    fo_state[index[id(key)]] = converted
            fo_dict = {"state": fo_state, "param_groups": fo_groups}
            seed = state_dict.get("stochastic_rounding_seed")
            if seed is not None:
                fo_dict["stochastic_rounding_seed"] = seed
            if runner.fo is not None:
                runner.fo.load_state_dict(fo_dict)
        except Exception:
            self.param_groups = old_groups
            self.defaults = old_defaults
            raise
        # torch's load replaces the whole state: every other runner and detached state goes
        if seed is not None and self._precision["stochastic_rounding"] and runner.fo is not None:
            self._precision["seed"] = runner.fo.seed
        self._runners = {runner.key: runner}
        self._owner = {id(p): runner for p in runner.params}
        self._detached_state = {}
        self._runner = runner
        self._flat_blocked = None

    def __getstate__(self):
        raise TypeError(
            f"fastopt.torch.{type(self).__name__} cannot be pickled or deep-copied (it holds raw "
            "pointers to its params); save optimizer.state_dict() instead")


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
    doc = _factory.class_doc(algorithm, torch=True)
    if algorithm.driver is None:     # (flat=True is refused by whole-matrix updates)
        doc = doc.replace("skip_nonfinite : bool", _factory.TORCH_OPTIONS_DOC + "\nskip_nonfinite : bool", 1)
    return type(algorithm.name, (base,), {
        "__init__": _factory.make_init(algorithm, _Adapter, torch=True),
        "__doc__": (f"{follows} running :class:`fastopt.{algorithm.name}`'s fused kernel (same "
                    f"arguments, plus ``skip_nonfinite``"
                    + (" and ``flat``" if algorithm.driver is None else "") + ").\n\n" + doc),
        "__module__": __package__,   # fastopt.torch: where users find it (and pickle too)
        "__qualname__": algorithm.name,
        "_fastopt_cls": fastopt_cls,
        "_keys": tuple(h.name for h in algorithm.hyperparameters),
        "_declared": declared,
        "_required": _required_in_checkpoints(algorithm),
    })


#: ``{name: adapter class}`` for every declared algorithm.
ADAPTERS = _factory.build_classes(_make_adapter, _Adapter, lambda cls: cls._fastopt_cls.algorithm)
