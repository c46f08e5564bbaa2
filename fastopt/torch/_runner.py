"""A runner: the fastopt optimizer that steps one configuration of a fastopt.torch optimizer's
param groups, and what a step needs to tell that the configuration still holds.

torch.optim keys its state by param and reads ``param_groups`` afresh at every step, so users and
engines change them between steps: DeepSpeed's ZeRO swaps each group's params for its flat
partition and sets ``optimizer.param_groups`` to one group before each step; ZeRO-3 puts a
sub-group's partition into its group's list for one step and empties it after. A fastopt optimizer
is built over fixed arrays instead (views of the params' memory, state in per-bucket arenas), so
the adapter keeps one runner per configuration -- which params, grouped how, at which memory --
and a configuration that comes back finds its runner again with its state, at no cost.
"""
import weakref

import numpy as np
import torch

from .. import _dtypes
from .._core._tensor_gather import TensorGrads
from . import _compat
from ._tensors import as_numpy, local, tensor_problem, is_dtensor


def config_key(groups):
    """The configuration of ``groups`` (a list of param group dicts) as a hashable key: which
    params, in which group, in which order."""
    try:
        return tuple(tuple(map(id, group["params"])) for group in groups)
    except (TypeError, KeyError):
        raise TypeError("optimizer.param_groups must be a list of dicts, each with a 'params' "
                        "list of tensors") from None


def unique(params):
    """``params`` without repeats, in first-seen order (torch allows a param twice in a group)."""
    seen = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


class Runner:
    """The fastopt optimizer ``fo`` over one configuration of param groups.

    Attributes
    ----------
    key : tuple
        The configuration (:func:`config_key`).
    stepped : list of int
        The groups that hold params (fastopt's groups, in order; torch steps an empty group as
        nothing).
    fo : fastopt.Optimizer or None
        Steps the views of ``shards``; holds the state of ``params`` (None: no params).
    params : list of torch.Tensor
        The params, each once, in the groups' order (fastopt's param indices).
    shards : list of torch.Tensor
        The tensor each param's step updates: the param, or its local shard (DTensor).
    index : dict
        ``id(param)`` -> its index in ``params``.
    """

    #: Whether the runner steps flat buffers (``_flat.FlatRunner``) rather than each param.
    flat = False

    def __init__(self, key, groups, stepped, fo, params, shards):
        self.key = key
        self.stepped = stepped      # the groups (indices) with params: fo's groups, in order
        self.fo = fo
        self.params = params
        self.shards = shards
        self.index = {id(p): i for i, p in enumerate(params)}
        self.ptrs = [t.data_ptr() for t in shards]
        self.distributed = any(is_dtensor(p) for p in params)
        # torch steps a param listed twice in a group twice (it warns); fastopt holds it once
        counts = {}
        for group in groups:
            for p in group["params"]:
                counts[id(p)] = counts.get(id(p), 0) + 1
        self.repeats = [(i, counts[id(p)] - 1) for i, p in enumerate(params) if counts[id(p)] > 1]
        #: How many more times than once a step steps some param (0: none is listed twice).
        self.extra_steps = max((n for _, n in self.repeats), default=0)
        # every param's step count as a float tensor, once opt.state[p]["step"] handed out a view
        # of it (see step_tensor)
        self.step_floats = None
        self.step_views = []
        self.tensor_grads = None
        #: ``gather(lists)``: the gradients (GradPointers with ``updated``) if ``lists`` -- the
        #: groups' current ``params`` lists -- hold exactly this runner's params at their memory
        #: and every gradient passes the fast checks, else None; None if there is no fast gather
        #: (a param listed twice, or no slot to read a DTensor's shard from).
        self.gather = None
        api = _compat.dtensor_api() if self.distributed else {}
        if not self.repeats and api is not None and fo is not None:
            arrays = fo.params
            self.tensor_grads = TensorGrads(
                params, shards, [len(group["params"]) for group in groups],
                [a.size for a in arrays], [_dtypes.storage_of(a) for a in arrays],
                [p.dtype for p in params], dict(_compat.TENSOR_API, **api))
            self.gather = self._gather_sharded if self.distributed else self.tensor_grads.gather

    # -- state, per param (a flat runner's params share their buffer's arenas) -------------------

    def param_state(self, index, copy=False):
        """Param ``index``'s state in fastopt's format (views of the arenas; copies with ``copy``)."""
        return self.fo.param_state(index, copy)

    def has_state(self, index):
        return self.fo.has_state(index)

    def set_step(self, index, step):
        self.fo.set_step(index, step)

    def step_counts(self):
        """Every param's step count, in param index order."""
        return self.fo.step_counts()

    def set_steps(self, indices, steps):
        """Take the step counts ``steps`` users set for params ``indices`` (in step tensors)."""
        for index, step in zip(indices, steps):
            self.fo.set_step(int(index), float(step))

    def kept_dtypes(self):
        """``kept(index, name)``: the NumPy dtype state ``name`` of param ``index`` is kept in."""
        return self.fo.kept_dtypes()

    def fo_states(self, states):
        """``{param index: entry}`` as the fastopt optimizer's ``load_state_dict`` takes it."""
        return states

    def _gather_sharded(self, lists):
        with _compat.no_torch_function():     # a DTensor's .grad, without its dispatch
            return self.tensor_grads.gather(lists)

    def same_memory(self):
        """Whether every param still lives at the memory the runner's views show."""
        if self.distributed:
            return all(local(p).data_ptr() == ptr for p, ptr in zip(self.params, self.ptrs))
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self.ptrs))

    def grads(self):
        """The gradients as NumPy views, and the tensors they update, each gradient checked with a
        message that names its param (the precise path: repeats, sharded params without the fast
        gather's slot, or anything the fast gather did not vouch for)."""
        grads = []
        updated = []
        for i, (p, shard) in enumerate(zip(self.params, self.shards)):
            g = p.grad
            if g is None:
                grads.append(None)
                continue
            if self.distributed:
                g = local(g)
            # torch.optim raises RuntimeError for a gradient shaped unlike its param (even with the
            # same element count, e.g. after p.grad.resize_ or p.grad.data = ...)
            problem = tensor_problem(g, f"the .grad of param {i} (shape {tuple(p.shape)})",
                                     like=shard, shape_error=RuntimeError)
            if problem is not None:
                raise problem
            grads.append(as_numpy(g))
            updated.append(shard)
        return grads, updated

    # -- step tensors -----------------------------------------------------------------------------

    def step_tensor(self, index):
        """``opt.state[p]["step"]`` of param ``index``: a 0-d view of one float tensor of every
        param's step count (torch.optim keeps each count as a tensor, which users edit in place
        and see advance). Once one is handed out, each step reads the edits from the whole
        tensor and writes the new counts into it, a vector operation each, whatever the count."""
        if self.step_floats is None:
            self.step_floats = torch.from_numpy(self.step_counts()).to(_compat.scalar_dtype())
        view = self.step_floats[index]
        self.step_views.append(weakref.ref(view))
        return view

    def read_step_tensors(self):
        """Take the step counts users edited in the tensors handed out, if any (before a step,
        and before the state is read or moved: torch's step tensor is the state itself)."""
        if self.step_floats is None:
            return
        floats = self.step_floats.numpy()
        edited = np.flatnonzero(floats != self.step_counts())
        self.set_steps(edited, floats[edited])

    def write_step_tensors(self):
        """After a step: the new counts into the tensors handed out; once none is held any more,
        the steps stop paying for them (the next read of a step hands out new ones)."""
        if self.step_floats is None:
            return
        self.step_views = [ref for ref in self.step_views if ref() is not None]
        if self.step_views:
            self.step_floats.numpy()[:] = self.step_counts()
        else:
            self.step_floats = None     # (their edits were read before the step)
