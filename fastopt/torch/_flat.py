"""The flat mode of fastopt.torch: params as views of one flat buffer, gradients as views of one
flat gradient buffer, and a step that updates each buffer with one call.

The kernels run at the memory limit; what a step over many small tensors pays is around them:
reading each ``.grad`` through torch costs ~70 ns a tensor, bumping each param's autograd version
~50 ns (AMD EPYC, 2 cores, 2026-12-06), as much as the whole update of a 100-element tensor. So,
as Megatron's and DeepSpeed's contiguous gradient buffers do, :func:`flatten_` moves the params of
each (param group, dtype) into one buffer, and gives each param a ``.grad`` that is a view of one
flat gradient buffer, which backward accumulates into in place. A step then checks a few numbers
per buffer instead of every tensor, and runs the kernel over the flat arrays.

What a flat step checks, per buffer, before it trusts the buffers (:meth:`FlatParams.unchanged`):

* the param groups' ``params`` lists hold the same params in the same order (one pointer
  comparison a param, in C);
* the number of references to the param buffer's storage and to the gradient buffer's storage is
  the one seen at the last full check: a param given other memory (``param.data = ...``,
  ``model.to(...)``) or a ``.grad`` replaced or set to None drops it;
* the gradient buffer's autograd version moved since the last step or ``zero_grad()``: something
  (backward, DDP's averaging, clipping) wrote into it. If it did not -- every ``.grad`` may have
  been replaced while views of the old ones are still held -- the full check runs.

Anything else runs the full check: the compiled gather reads every param and ``.grad`` as a
per-tensor step does, and a gradient that is not the buffer's view but a tensor of the param's
shape and dtype (DDP's ``gradient_as_bucket_view``, ``model.zero_grad()`` then backward,
``p.grad = p.grad * 2``) is copied into the buffer in C (the ``.grad`` stays that tensor until
``zero_grad()`` makes the buffer's views the gradients again; until then each step checks and
copies, at the cost of a per-tensor step). What the gather does not vouch for goes to
:meth:`FlatParams.check`: a param given memory of its own that no other tensor views (a copy made by
``model.to("cpu:0")``) is put back into the buffer with its values; a ``.grad`` of None (the param
is skipped, as torch.optim does), a param whose memory another tensor views or of another dtype or
shape make the optimizer step per tensor, as without the flat mode (it warns once, and does not
repeat a failed check while the buffers' counts stay as they were).

What it cannot see: a ``.grad`` replaced (or a param given other memory) while a reference to the
old gradient (a view of the param buffer) is kept alive, when backward also wrote into the buffer
since the last step: the counts do not move. E.g. ``old = [p.grad for p in params]`` followed by
``p.grad = f(p.grad)`` for every param. Torch, DDP, ZeroRedundancyOptimizer, the Trainer and
Lightning do not do this; a user who does writes into the gradients in place instead.
"""
import warnings
import weakref

import numpy as np
import torch

from . import _compat
from ._runner import Runner
from ._tensors import DTYPES, as_numpy, is_dtensor, tensor_problem
from .._core._tensor_gather import same_items


#: Every live FlatParams by the id of its first param, so that an optimizer built with flat=True
#: over params that ``flatten_`` already laid out takes their buffers as they are.
_LAID_OUT = weakref.WeakValueDictionary()


class NotFlat(Exception):
    """The params, gradients or state of a configuration cannot be stepped flat now; the
    optimizer steps them per tensor (the message says why)."""


def _contiguous_strides(shape):
    """The strides of a contiguous tensor of ``shape`` (torch's rule: a size-0 or 1 dimension
    counts as 1)."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _place(p, view):
    """Make ``view`` (a view of a flat buffer) the memory of param ``p``, keeping ``p`` the same
    object with its attributes. Returns whether ``p`` now shares the buffer's autograd version
    counter (then one bump of the buffer's counter bumps the param's: a step costs nothing per
    param); else ``p.data = view`` gave it the memory and it keeps its own counter."""
    if _compat.can_swap(p):
        new = (torch.nn.Parameter(view, requires_grad=p.requires_grad) if type(p) is torch.nn.Parameter
               else view.detach().requires_grad_(p.requires_grad))   # (detach shares the counter)
        new.__dict__.update(p.__dict__)     # swap_tensors swaps the attribute dicts too
        torch.utils.swap_tensors(p, new)
        return True
    p.data = view
    return False


class FlatParams:
    """Params packed back to back in one flat buffer, with their gradients in a matching flat
    gradient buffer: fastopt.torch's counterpart of :class:`fastopt.FlatParams`.

    Made by :func:`flatten_` (which ``flat=True`` calls for each param group and dtype). The params
    stay the same objects (a module's attributes keep pointing at them), with their values and
    ``requires_grad``; their memory is now ``data[offsets[i]:offsets[i + 1]]``, and each ``.grad``
    is a view of ``grad``, which backward accumulates into in place.

    Attributes
    ----------
    data, grad : torch.Tensor
        1-D buffers of ``size`` elements.
    params : list of torch.Tensor
        The packed params, in buffer order.
    shapes : list of torch.Size
    offsets : ndarray
        ``offsets[i]:offsets[i + 1]`` is param i's range in the flat buffers.

    Examples
    --------
    >>> import torch
    >>> import fastopt.torch
    >>> model = torch.nn.Linear(3, 2)
    >>> flat = fastopt.torch.flatten_(model.parameters())
    >>> flat.offsets, flat.size
    (array([0, 6, 8]), 8)
    >>> model.bias.data_ptr() == flat.data.data_ptr() + 6 * flat.data.element_size()
    True
    >>> opt = fastopt.torch.SGD(model.parameters(), lr=0.1)
    >>> model(torch.ones(4, 3)).sum().backward()     # accumulates into flat.grad
    >>> flat.grad[6:]
    tensor([4., 4.])
    >>> bias = model.bias.detach().clone()
    >>> opt.step()
    >>> torch.allclose(model.bias, bias - 0.4)
    True
    """

    def __init__(self, params, data, grad, offsets, own_counters):
        self.params = params
        self.shapes = [p.shape for p in params]
        self.offsets = offsets
        # Python ints: slicing a tensor with NumPy integers takes a slow path (~25 us a slice)
        self._bounds = [(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        # a view of the buffer is one as_strided call (slicing, then view(shape), takes two)
        self._strides = [_contiguous_strides(s) for s in self.shapes]
        self.size = int(offsets[-1])
        self.data = data
        self.grad = grad
        #: The params that keep their own autograd version counter (bumped one by one after a
        #: step): those ``swap_tensors`` could not move (see ``_place``).
        self.own_counters = own_counters
        self.data_array = as_numpy(data)
        self.grad_array = as_numpy(grad)
        itemsize = data.element_size()
        self._data_ptrs = [data.data_ptr() + int(a) * itemsize for a in offsets[:-1]]
        self._grad_ptrs = [grad.data_ptr() + int(a) * itemsize for a in offsets[:-1]]
        self._handles = (_compat.storage_handle(data), _compat.storage_handle(grad))
        self._users = None
        self._seen_version = -1
        self.recount()

    @property
    def dtype(self):
        return self.data.dtype

    def __len__(self):
        return len(self.params)

    def __repr__(self):
        return f"FlatParams({len(self.params)} params, {self.size} elements, {self.dtype})"

    def views(self, buffer):
        """Views of a flat ``buffer`` (``size`` elements) shaped as the params, in order."""
        if buffer.shape != (self.size,):
            raise ValueError(f"buffer must have shape ({self.size},), got {tuple(buffer.shape)}")
        return [self._view(buffer, i) for i in range(len(self.params))]

    @property
    def grads(self):
        """The gradients' views of ``grad``, shaped as the params (made afresh: holding a view
        would hide a ``.grad`` replaced from the step's checks)."""
        return self.views(self.grad)

    # -- what a step checks ------------------------------------------------------------------------

    def recount(self):
        """Remember the references to both buffers' storages, after a full check."""
        self._users = self.counts()

    def counts(self):
        """The buffers' reference counts now (None: no counts in this torch)."""
        if self._handles[0] is None:
            return None
        return (_compat.storage_users(self._handles[0]), _compat.storage_users(self._handles[1]))

    def unchanged(self):
        """Whether, by the buffers' reference counts and the gradient buffer's version, every
        param is still in the buffer and every ``.grad`` the buffer's view, and backward (or
        anything else) wrote into the gradients since the last step."""
        handles = self._handles
        return (self._users is not None
                and _compat.storage_users(handles[0]) == self._users[0]
                and _compat.storage_users(handles[1]) == self._users[1]
                and self.grad._version != self._seen_version)

    def mark_seen(self):
        """After a step or zero_grad(): the gradients as they are now have been used."""
        self._seen_version = self.grad._version

    def _in_place(self, i, p):
        return (p.data_ptr() == self._data_ptrs[i] and p.shape == self.shapes[i]
                and p.dtype == self.data.dtype and p.is_contiguous())

    def _is_view(self, i, g):
        return (g.data_ptr() == self._grad_ptrs[i] and g.shape == self.shapes[i]
                and g.dtype == self.grad.dtype and g.is_contiguous())

    def check(self, where):
        """The full check: ``(foreign, moved)``, the gradients that are not the buffer's views,
        to copy into it, as ``[(index, grad)]``, and the params given memory of their own that
        nothing else uses (``model.to("cpu:0")`` copies), to put back into it, as indices; or
        NotFlat saying why the params cannot be stepped flat (``where(i)`` names param i).
        Writes nothing."""
        foreign = []
        moved = []
        dtype = self.data.dtype
        for i, p in enumerate(self.params):
            if p.data_ptr() != self._data_ptrs[i]:
                # Memory of its own that no other tensor views (a copy made by .to(), say) can go
                # back into the buffer with its values; memory shared with another tensor (a tie
                # made with p.data = q.data) cannot without breaking the sharing.
                if (p.shape != self.shapes[i] or p.dtype != dtype or not p.is_contiguous()
                        or p.layout != torch.strided or p.device.type != "cpu" or is_dtensor(p)
                        or not _compat.alone_in_its_memory(p)):
                    raise NotFlat(f"{where(i)} is no longer a view of its flat buffer (given "
                                  "other memory, shared or of another dtype or shape)")
                moved.append(i)
            elif not self._in_place(i, p):
                raise NotFlat(f"{where(i)} is no longer a view of its flat buffer (given other "
                              "dtype or shape)")
            g = p.grad
            if g is None:
                raise NotFlat(f"{where(i)} has no gradient (.grad is None): it is skipped, as "
                              "torch.optim does")
            if self._is_view(i, g):
                continue
            if tensor_problem(g, "", like=p) is not None or g.dtype != dtype:
                raise NotFlat(f"the .grad of {where(i)} cannot be copied into the flat buffer")
            foreign.append((i, g))
        return foreign, moved

    def put_back(self, moved):
        """Put each param of ``moved`` (indices) back into the buffer, with its values (it gets
        its place as at flattening: swapped, or ``.data`` with a counter of its own)."""
        with torch.no_grad():
            for i in moved:
                p = self.params[i]
                view = self._view(self.data, i)
                view.copy_(p)
                grad = p.grad
                shared = _place(p, view)
                if grad is not None and p.grad is None:    # (swapping leaves it on the old tensor)
                    p.grad = grad
                if not shared and not any(q is p for q in self.own_counters):
                    self.own_counters.append(p)
                elif shared:
                    self.own_counters = [q for q in self.own_counters if q is not p]

    def copy_in(self, foreign):
        """Copy each ``(index, grad)`` into the gradient buffer (the ``.grad`` stays the tensor it
        is: the counts then keep differing from the last full check's, so each step checks and
        copies until :meth:`zero_grad` makes the views the gradients again)."""
        with torch.no_grad():
            for i, g in foreign:
                self._grad_view(i).copy_(g)

    def _view(self, buffer, i):
        """Param i's view of a flat ``buffer``."""
        return buffer.as_strided(self.shapes[i], self._strides[i], self._bounds[i][0])

    def _grad_view(self, i):
        return self._view(self.grad, i)

    def zero_grad(self):
        """Zero the gradient buffer (one pass) and make every ``.grad`` its view again: a param
        whose gradient was replaced or set to None gets its view back (zero), one given other
        memory keeps its own gradient, zeroed as ``zero_grad(set_to_none=False)`` does."""
        with torch.no_grad():
            self.grad.zero_()
        if self._users is None or self.counts() != self._users:
            clean = True
            for i, p in enumerate(self.params):
                g = p.grad
                if g is not None and self._is_view(i, g):
                    continue
                if self._in_place(i, p):
                    p.grad = self._grad_view(i)
                else:
                    clean = False          # the next step's full check steps per tensor
                    if g is not None:
                        if g.grad_fn is not None:
                            g.detach_()
                        else:
                            g.requires_grad_(False)
                        g.zero_()
            if clean:
                self.recount()
        self.mark_seen()


def flatten_(params):
    """Move ``params`` into one flat buffer, and their gradients into one flat gradient buffer.

    Each param stays the same object (modules keep it, with its name, attributes and
    ``requires_grad``) and keeps its values; its memory becomes a view of ``FlatParams.data``.
    Each param's ``.grad`` becomes a view of ``FlatParams.grad`` (holding the gradient it had, or
    zeros), which backward then accumulates into in place. ``fastopt.torch.<Optimizer>(...,
    flat=True)`` calls this for each param group and dtype; call it yourself to flatten before
    wrapping a model in DDP, and keep the FlatParams it returns: an optimizer built later with
    ``flat=True`` over the same params takes its buffers as they are (DDP then holds the params,
    and moving them again would cost each param its shared version counter).

    Parameters
    ----------
    params : iterable of torch.Tensor
        Leaf tensors that require grad, all of one floating dtype, dense, on the CPU, none sharing
        memory with another.

    Returns
    -------
    FlatParams

    Examples
    --------
    >>> import torch, fastopt.torch
    >>> model = torch.nn.Linear(3, 2)
    >>> flat = fastopt.torch.flatten_(model.parameters())
    >>> flat
    FlatParams(2 params, 8 elements, torch.float32)
    >>> model.weight.data_ptr() == flat.data.data_ptr()
    True
    """
    params = list(params)
    seen = set()
    dtype = None
    spans = []
    for i, p in enumerate(params):
        what = f"params[{i}]"
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(p).__name__}")
        if id(p) in seen:
            raise ValueError(f"{what} appears twice; a flat buffer holds each param once")
        seen.add(id(p))
        if is_dtensor(p):
            raise TypeError(f"{what} is a DTensor (FSDP2, tensor parallel): its memory is a shard "
                            "the engine manages, which cannot move into a flat buffer; use the "
                            "optimizer without flat=True")
        problem = tensor_problem(p, what)
        if isinstance(problem, TypeError):
            raise problem
        if p.dtype not in DTYPES:
            raise TypeError(f"{what} has dtype {p.dtype}")
        if dtype is None:
            dtype = p.dtype
        elif p.dtype != dtype:
            raise TypeError(f"{what} has dtype {p.dtype}, params[0] {dtype}: a flat buffer holds "
                            "one dtype (flat=True makes one buffer per param group and dtype)")
        if not p.is_leaf or not p.requires_grad:
            raise ValueError(f"{what} does not require grad (or is not a leaf): a flat buffer holds "
                             "params that backward fills; leave frozen params out of the optimizer")
        if p.grad is not None:
            problem = tensor_problem(p.grad, f"the .grad of {what}", like=p)
            if problem is not None:
                raise problem
        if p.numel():
            start = p.data_ptr()
            spans.append((start, start + p.numel() * p.element_size(), i))
    spans.sort()
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"params[{min(i, j)}] and params[{max(i, j)}] share memory (tied or "
                             "views of one tensor); a flat buffer cannot hold both: tie them as "
                             "one param, or leave them out of flat mode")
    sizes = [p.numel() for p in params]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.intp)
    bounds = [(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
    data = torch.empty(int(offsets[-1]), dtype=dtype or torch.float32)
    grad = torch.zeros(int(offsets[-1]), dtype=dtype or torch.float32)
    own = []
    with torch.no_grad():
        for p, (a, b) in zip(params, bounds):
            data[a:b].view(p.shape).copy_(p)
            if p.grad is not None:
                grad[a:b].view(p.shape).copy_(p.grad)
        for p, (a, b) in zip(params, bounds):
            shape = p.shape
            if not _place(p, data[a:b].view(shape)):
                own.append(p)
            p.grad = grad[a:b].view(shape)
    flat = FlatParams(params, data, grad, offsets, own)
    if params:
        _LAID_OUT[id(params[0])] = flat
    return flat


def flattened(params):
    """The FlatParams holding exactly ``params`` (in order, each still in its place) if
    :func:`flatten_` laid them out and it is alive, with every ``.grad`` made its view again (a
    gradient of another tensor copied in, None made a zero view); else a new :func:`flatten_`."""
    params = list(params)
    flat = _LAID_OUT.get(id(params[0])) if params else None
    if flat is None or not same_items([params], [flat.params]) \
            or not all(flat._in_place(i, p) for i, p in enumerate(params)):
        return flatten_(params)
    with torch.no_grad():
        for i, p in enumerate(params):
            g = p.grad
            if g is not None and flat._is_view(i, g):
                continue
            problem = None if g is None else tensor_problem(g, f"the .grad of params[{i}]", like=p)
            if problem is not None:
                raise problem
            view = flat._grad_view(i)
            if g is None:
                view.zero_()
            else:
                view.copy_(g)
            p.grad = view
    flat.recount()
    return flat


def dtype_runs(params):
    """``params`` split by dtype, in order of first appearance (one flat buffer each)."""
    runs = {}
    for p in params:
        runs.setdefault(p.dtype, []).append(p)
    return list(runs.values())


class FlatRunner(Runner):
    """The runner of the flat mode: its fastopt optimizer steps the flat buffers (one per param
    group and dtype: ``layouts``, in fastopt's param order), and each torch param's state is its
    range of its buffer's state (its step count is the buffer's: they step together).

    Per-param edits that the buffers cannot hold -- a step count set for some of a buffer's params
    only -- are kept aside (``step_overrides``) until the optimizer takes the state out of the
    buffers and steps per tensor.
    """

    flat = True

    def __init__(self, key, groups, stepped, fo, params, layouts, scalar_names):
        self.key = key
        self.stepped = stepped
        self.fo = fo
        self.params = params
        self.shards = params
        self.index = {id(p): i for i, p in enumerate(params)}
        self.distributed = False
        self.repeats = []
        self.extra_steps = 0
        self.step_floats = None
        self.step_views = []
        self.tensor_grads = None
        self.gather = None
        self.layouts = layouts
        self.snapshot = [list(group["params"]) for group in groups]
        self.grad_arrays = [flat.grad_array for flat in layouts]
        where = {}
        for k, flat in enumerate(layouts):
            for j, p in enumerate(flat.params):
                where[id(p)] = (k, int(flat.offsets[j]), int(flat.offsets[j + 1]), flat.shapes[j])
        self.members = [where[id(p)] for p in params]
        self.buffer_of = np.array([m[0] for m in self.members], dtype=np.intp)
        self.refresh()
        self.scalar_names = scalar_names
        self.step_overrides = {}

    def refresh(self):
        #: What a step bumps the autograd version of: the param buffers (their params share their
        #: counters) and the params that keep their own.
        self.bumped = ([flat.data for flat in self.layouts]
                       + [p for flat in self.layouts for p in flat.own_counters])

    # -- the step's checks ---------------------------------------------------------------------

    def ready(self, lists):
        """Whether the flat buffers can be stepped as they are, by the cheap checks (see the
        module docstring); False: the adapter's full check decides."""
        if self.step_overrides or not same_items(lists, self.snapshot):
            return False
        for flat in self.layouts:
            if not flat.unchanged():
                return False
        return True

    def mark_seen(self):
        """The gradients as they are now are the ones a step used (see FlatParams.unchanged)."""
        for flat in self.layouts:
            flat.mark_seen()

    # -- state, per param ----------------------------------------------------------------------

    def param_state(self, index, copy=False):
        k, a, b, shape = self.members[index]
        entry = self.fo.param_state(k)
        out = {}
        for name, value in entry.items():
            if name == "step":
                out[name] = self.step_overrides.get(index, value)
            elif name in self.scalar_names:      # shared by the buffer's params (as their steps)
                out[name] = value.copy() if copy else value
            else:
                view = value[a:b].reshape(shape)
                out[name] = view.copy() if copy else view
        return out

    def has_state(self, index):
        return self.fo.has_state(self.members[index][0])

    def set_step(self, index, step):
        self.step_overrides[index] = step
        self.settle()

    def settle(self):
        """Apply the step counts set for all of a buffer's params alike to the buffer; True if
        none is left aside."""
        if not self.step_overrides:
            return True
        by_buffer = {}
        for index, step in self.step_overrides.items():
            by_buffer.setdefault(self.members[index][0], {})[index] = step
        for k, steps in by_buffer.items():
            values = set(steps.values())
            if len(steps) == len(self.layouts[k]) and len(values) == 1 and self.fo.has_state(k):
                self.fo.set_step(k, values.pop())
                for index in steps:
                    del self.step_overrides[index]
        return not self.step_overrides

    def kept_dtypes(self):
        kept = self.fo.kept_dtypes()
        members = self.members
        return lambda index, name: kept(members[index][0], name)

    def fo_states(self, states):
        """The params' states (``{param index: entry}``) as one state per buffer: each buffer's
        params must all have state, with the same keys, step count and scalar states (NotFlat)."""
        out = {}
        for k, flat in enumerate(self.layouts):
            indices = [self.index[id(p)] for p in flat.params]
            entries = [states.get(i) for i in indices]
            if all(e is None for e in entries):
                continue
            if any(e is None for e in entries):
                raise NotFlat("some params of a flat buffer have state and others none")
            first = entries[0]
            for e in entries[1:]:
                if e.keys() != first.keys():
                    raise NotFlat("the params of a flat buffer keep different states")
                for name in first:
                    if name == "step" or name in self.scalar_names:
                        if not np.array_equal(np.asarray(e[name]), np.asarray(first[name])):
                            raise NotFlat(f"the params of a flat buffer differ in their {name!r} "
                                          "(a param was skipped at some step, or set apart)")
            entry = {}
            for name in first:
                if name == "step" or name in self.scalar_names:
                    entry[name] = first[name]
                else:
                    try:
                        entry[name] = np.concatenate([np.asarray(e[name]).reshape(-1) for e in entries])
                    except ValueError:
                        raise NotFlat(f"state {name!r} cannot be laid out flat") from None
                    if entry[name].shape != (flat.size,):
                        raise NotFlat(f"state {name!r} does not match its params' sizes")
            out[k] = entry
        return out

    # -- step counts, per param (the step tensors are Runner's) -------------------------------

    def step_counts(self):
        counts = self.fo.step_counts()[self.buffer_of].astype(np.float64)
        for index, step in self.step_overrides.items():
            counts[index] = float(step)
        return counts

    def set_steps(self, indices, steps):
        for index, step in zip(indices, steps):
            self.step_overrides[int(index)] = float(step)
        self.settle()


def warn_per_tensor(reason):
    """Say once per optimizer that its flat mode steps per tensor, and why."""
    warnings.warn(f"flat=True: the optimizer steps per tensor ({reason}); it goes back to its flat "
                  "buffers when they can be stepped again (params stepped a different number of "
                  "times keep it per tensor until load_state_dict() or an edit of their state)",
                  RuntimeWarning, stacklevel=4)
