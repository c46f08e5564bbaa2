"""``optimizer.state`` of a fastopt.torch optimizer: torch.optim's ``{param: {name: value}}``,
live.

torch.optim's state is a plain dict that engines write into: ZeroRedundancyOptimizer and
DeepSpeed load checkpoints by assigning ``opt.state[p] = {...}`` and ``opt.state[p][name] = t``,
Lightning moves states by assigning them back, users edit buffers and step counts in place. A
fastopt optimizer keeps its state in per-bucket arenas, so these mappings show it and write into
it: a buffer is a tensor sharing the arena's memory, assigning a tensor of the same shape copies
into it, and ``"step"`` is a tensor that the optimizer reads before and advances after each step.
Anything else -- a new entry, a whole dict, a deletion -- takes the param's state out of the
arenas into a plain dict (the optimizer's *detached* state, see ``_adapter.py``), edited as torch
would and loaded back, checked, when the param is next stepped.
"""
import numbers
from collections.abc import Mapping, MutableMapping

import torch

from ._tensors import as_tensor, like_param, local


class ParamState(MutableMapping):
    """``optimizer.state[param]`` for a param whose state lives in the optimizer's arenas."""

    __slots__ = ("_optimizer", "_param")

    def __init__(self, optimizer, param):
        self._optimizer = optimizer
        self._param = param

    def _live(self):
        """(runner, index) holding the param's state in its arenas, or None if it is detached."""
        runner = self._optimizer._owner.get(id(self._param))
        if runner is None:
            return None
        runner.read_step_tensors()     # an edited step tensor is the state, as in torch
        return runner, runner.index[id(self._param)]

    def _detached(self):
        return self._optimizer._detach(self._param)

    def __getitem__(self, name):
        live = self._live()
        if live is None:
            return self._detached()[name]
        runner, index = live
        value = runner.param_state(index)[name]
        if name == "step":
            return runner.step_tensor(index)
        return like_param(as_tensor(value), self._param)

    def __setitem__(self, name, value):
        live = self._live()
        if live is not None:
            runner, index = live
            entry = runner.param_state(index)
            if name in entry and name == "step":
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, numbers.Real):
                    runner.set_step(index, value)
                    return
            elif name in entry and isinstance(value, torch.Tensor):
                target = as_tensor(entry[name])
                value = local(value)
                if value.shape == target.shape and value.device == target.device:
                    if value.data_ptr() != target.data_ptr():   # not its own view given back
                        with torch.no_grad():
                            target.copy_(value)
                    return
        self._detached()[name] = value     # a new entry or another shape: checked when stepped

    def __delitem__(self, name):
        del self._detached()[name]

    def __iter__(self):
        live = self._live()
        return iter(list(self._detached() if live is None else live[0].param_state(live[1])))

    def __len__(self):
        live = self._live()
        return len(self._detached() if live is None else live[0].param_state(live[1]))

    def __repr__(self):
        return repr(dict(self.items()))


class State(MutableMapping):
    """``optimizer.state``: ``{param: state}`` for every param that has state, like torch.optim's
    ``defaultdict(dict)`` (reading the state of a param without any gives an empty one)."""

    __slots__ = ("_optimizer",)

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def __getitem__(self, param):
        if not isinstance(param, torch.Tensor):
            raise KeyError(param)
        return self._optimizer._state_of(param)

    def __setitem__(self, param, value):
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"optimizer.state is keyed by params (tensors), got {type(param).__name__}")
        if not isinstance(value, Mapping):
            raise TypeError(f"the state of a param must be a dict, got {type(value).__name__}")
        self._optimizer._detach(param, replace=dict(value))

    def __delitem__(self, param):
        if param not in self:
            raise KeyError(param)
        self._optimizer._detach(param, replace=None)

    def __contains__(self, param):
        return isinstance(param, torch.Tensor) and self._optimizer._has_state(param)

    def __iter__(self):
        return iter(self._optimizer._params_with_state())

    def __len__(self):
        return len(self._optimizer._params_with_state())

    def __repr__(self):
        return repr(dict(self.items()))
