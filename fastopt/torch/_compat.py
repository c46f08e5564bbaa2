"""Every private name of torch that ``fastopt.torch`` relies on, each with its fallback.

torch does not promise to keep its private names (a leading underscore) from one release to the
next. fastopt uses a few of them, for speed only; they are all read here, once, at import, and
nothing else in fastopt names a private attribute of torch (``tests/torch/test_torch_compat.py`` checks
both: the other modules' sources, and that each fallback steps as torch.optim does). Checked on
torch 2.13. When a name is missing, the adapter keeps working through the fallback given with it:

``torch.autograd._profiler_enabled``, ``torch.optim.optimizer._global_optimizer_pre_hooks`` and
``torch.optim.optimizer._global_optimizer_post_hooks``
    Whether the autograd profiler is on, and the hooks registered for every optimizer. With them
    the adapter's ``step()`` skips torch's hook-running, profiler-range wrapper (about 15 us a
    step on an AMD EPYC, 2 cores, 2026) when nothing would use it. Fallback: every step goes
    through torch's public wrapper
    ``torch.optim.Optimizer.profile_hook_step`` (same results, about 15 us slower a step).

``_optimizer_step_pre_hooks`` and ``_optimizer_step_post_hooks`` of a ``torch.optim.Optimizer``
    The optimizer's own step hooks (``register_step_pre_hook``...), read by
    :func:`needs_hooked_step` for the same decision. Fallback: as above, torch's wrapper each step.

``torch.optim.Optimizer._patch_step_function``
    What ``torch.optim.Optimizer.__init__`` calls to wrap ``step()`` in ``profile_hook_step``; the
    adapter overrides it with :func:`keep_step_unwrapped`, as its ``step()`` calls the wrapper
    itself when needed. Fallback: none needed to be correct (torch does not call it, so the light
    path stays off: see :data:`LIGHT_STEP`).

``torch._C.TensorBase`` (its ``data_ptr``, ``is_contiguous``, ``is_neg``, ``__len__`` methods
and ``grad``, ``dtype``, ``shape``, ``ndim``, ``nbytes`` descriptors)
    The C base class of ``torch.Tensor``, whose slots the compiled gradient gather
    (``fastopt/_core/_tensor_gather.pyx``) calls directly. Fallback: the same public attributes of
    ``torch.Tensor``, which the gather calls through Python (slower per gradient, same results).

``torch._C._storage_Use_Count`` and ``Tensor._use_count``
    How many references a storage (a tensor) has. The flat mode (``flat=True``) compares the
    count of its flat buffers' storages with the one seen at its last full check, one call per
    buffer, to tell that no param was given other memory and no ``.grad`` replaced, instead of
    reading every param and gradient each step; and it gives a param its place in the flat buffer
    with ``torch.utils.swap_tensors`` only when the param has no other C++ holder. Fallback: a
    full check of every param and gradient at each step, and ``param.data = view`` (the param
    then keeps its own autograd version counter, bumped after each step one by one).

``torch._C._increment_version``
    Bumps the autograd version counters of the updated params, as an in-place op does, in one
    call for all of them. Fallback: the public ``torch.autograd.graph.increment_version``.

``torch.optim.optimizer._get_scalar_dtype``
    The dtype torch.optim keeps a ``"step"`` count in (float32, or float64 under a float64
    default dtype). Fallback: that same rule, written out.

``DTensor._local_tensor`` (``torch.distributed.tensor``)
    The slot holding a DTensor's local shard, which the compiled gather reads for the params and
    gradients of FSDP2 or tensor-parallel models (what the public ``to_local()`` returns outside
    autograd, without a Python call per tensor). Fallback: the adapter's precise path, which
    calls ``to_local()`` on each param and gradient (same results, a few microseconds more per
    tensor and step).

``torch._C.DisableTorchFunctionSubclass``
    A context in which attribute reads of tensor subclasses skip their ``__torch_function__``:
    reading a DTensor param's ``.grad`` inside it takes half the time (~130 instead of ~260 ns a
    tensor, AMD EPYC, 2 cores, 2026-12-06), which the gather pays per param and step under
    FSDP2. Fallback: no context (the same reads, at the slower speed).

``torch._disable_dynamo``
    What torch.optim wraps its ``zero_grad``/``state_dict``/``load_state_dict`` in so that
    torch.compile does not trace them: it imports Dynamo only when first called. The adapter's
    ``step()`` runs its compiled kernel outside any graph, so a compiled training step breaks its
    graph cleanly there. Fallback: the public ``torch.compiler.disable``.

``torch._C._dynamo.eval_frame.get_eval_frame_callback``
    Dynamo's frame callback (None unless torch.compile is running a compiled function, or
    tracing): ``step()`` goes through the Dynamo-disabled wrapper only then, because the wrapper
    costs ~0.9 us a call (AMD EPYC, 2026-12-06), as much as the rest of a small step. Fallback:
    every step goes through the wrapper.
"""
import contextlib
import weakref

import torch
import torch.optim.optimizer as _torch_optimizer

_CHECKED_ON = "2.13"   # the torch version every name here was checked on

# -- whether a step needs torch's hook and profiler wrapper -----------------------------------------

_profiler_enabled = getattr(torch.autograd, "_profiler_enabled", None)
_global_pre_hooks = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
_global_post_hooks = getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)

#: Whether the adapter may skip torch's step wrapper when nothing uses it: only when every name
#: that decision reads exists, and torch calls the override that keeps step() unwrapped.
LIGHT_STEP = (None not in (_profiler_enabled, _global_pre_hooks, _global_post_hooks)
              and hasattr(torch.optim.Optimizer, "_patch_step_function"))

#: ``step()`` wrapped in torch's hooks and profiler range (public, undocumented staticmethod).
profile_hook_step = torch.optim.Optimizer.profile_hook_step


def needs_hooked_step(optimizer):
    """Whether ``optimizer.step()`` must go through torch's hook and profiler wrapper: a step
    hook is registered (on it or on every optimizer), the profiler is on, or the names that tell
    are missing from this torch (then always)."""
    # one Python call a step (not per param), as cheap as the test it makes
    try:
        return (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _global_pre_hooks or _global_post_hooks or _profiler_enabled())
    except AttributeError:      # a torch.optim.Optimizer without these hook dicts
        return True


def _always_hooked_step(optimizer):
    """Always True: this torch lacks a name the decision reads (see the module docstring)."""
    return True


if not LIGHT_STEP:
    needs_hooked_step = _always_hooked_step


def keep_step_unwrapped(optimizer):
    """The adapter's ``_patch_step_function``: set what torch's would except the ``step()``
    wrapper (the adapter's ``step()`` applies it itself, only when :func:`needs_hooked_step`)."""
    optimizer._zero_grad_profile_name = f"Optimizer.zero_grad#{type(optimizer).__name__}.zero_grad"


# -- the compiled gradient gather's torch API -----------------------------------------------------

_TENSOR_SLOTS = ("data_ptr", "is_contiguous", "is_neg", "__len__", "grad", "dtype", "shape",
                 "ndim", "nbytes")
_tensor_base = getattr(torch._C, "TensorBase", None)

#: torch's types and the unbound methods and attribute descriptors the gather calls: those of
#: ``torch._C.TensorBase`` (no bound-method object per call; C getters called directly), else the
#: same public ones of ``torch.Tensor``.
TENSOR_API = {"Tensor": torch.Tensor, "Parameter": torch.nn.Parameter, "float32": torch.float32}
TENSOR_API.update({name: getattr(_tensor_base, name, None) or getattr(torch.Tensor, name)
                   for name in _TENSOR_SLOTS})

# -- autograd version counters --------------------------------------------------------------------

#: ``increment_version(tensors)``: bump the autograd version counter of each tensor.
increment_version = getattr(torch._C, "_increment_version", None) or torch.autograd.graph.increment_version

# -- the dtype of a "step" state --------------------------------------------------------------------


def _default_scalar_dtype():
    """torch.optim's rule for the dtype of a ``"step"`` count."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


#: ``scalar_dtype()``: the dtype torch.optim keeps a ``"step"`` count in.
scalar_dtype = getattr(_torch_optimizer, "_get_scalar_dtype", None) or _default_scalar_dtype


# -- DTensor params (FSDP2, tensor parallel) --------------------------------------------------------


#: ``with no_torch_function(): ...``: tensor subclasses' ``__torch_function__`` skipped inside.
no_torch_function = getattr(torch._C, "DisableTorchFunctionSubclass", None) or contextlib.nullcontext


def dtensor_api():
    """``{"DTensor": the type, "local_tensor": the descriptor of its local shard}`` for the
    compiled gather, or None when this torch has no such slot (the adapter's precise path then
    reads each shard with ``to_local()``). Call it only once a DTensor exists: it imports
    ``torch.distributed.tensor``, which fastopt.torch does not import otherwise."""
    from torch.distributed.tensor import DTensor
    descriptor = DTensor.__dict__.get("_local_tensor")
    if descriptor is None or not hasattr(descriptor, "__get__"):
        return None
    return {"DTensor": DTensor, "local_tensor": descriptor}


# -- torch.compile: step() outside the graph ------------------------------------------------------

#: ``disable_dynamo(fn)``: ``fn`` wrapped so that torch.compile runs it eagerly (a graph break).
disable_dynamo = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable

_eval_frame = getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None)
_get_eval_frame_callback = getattr(_eval_frame, "get_eval_frame_callback", None)


#: ``dynamo_callback()``: Dynamo's frame callback, None unless torch.compile is running (then
#: Dynamo could trace into a step, which must run outside its graph). Fallback: never None.
dynamo_callback = _get_eval_frame_callback if _get_eval_frame_callback is not None else (lambda: True)


# -- flat mode: who still uses a flat buffer --------------------------------------------------------

_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def storage_handle(t):
    """What :func:`storage_users` takes for ``t``'s storage (its StorageImpl's address), or None
    when this torch cannot count a storage's users (the flat mode then checks every param and
    gradient at each step: same results, a per-tensor cost)."""
    if _storage_use_count is None:
        return None
    return t.untyped_storage()._cdata


#: ``storage_users(handle)``: how many references the storage has now (one per tensor viewing it,
#: plus other holders). A param given other memory, or a ``.grad`` replaced, lowers it.
storage_users = _storage_use_count

# What a storage viewed by one tensor alone counts (its Python storage object, which asking for
# the handle creates and torch then keeps, adds one on torch 2.13), measured rather than assumed.
def _alone_count():
    probe = torch.zeros(1)     # (held while its storage is counted)
    return _storage_use_count(storage_handle(probe))


_ALONE = None if _storage_use_count is None else _alone_count()


def alone_in_its_memory(t):
    """Whether no tensor but ``t`` views its memory (False when this torch cannot tell)."""
    return _ALONE is not None and _storage_use_count(storage_handle(t)) == _ALONE


def can_swap(t):
    """Whether ``torch.utils.swap_tensors`` may give param ``t`` new memory while keeping it the
    same object with nothing lost: an exact ``Tensor``/``Parameter`` with no C++ holder besides
    itself (``Tensor._use_count``: an AccumulateGrad node kept by DDP or DeepSpeed, a graph not
    yet run backward), no weak references and no hooks (they live on the tensor it swaps away).
    False when this torch lacks ``_use_count``."""
    use_count = getattr(t, "_use_count", None)
    if use_count is None or type(t) not in (torch.Tensor, torch.nn.Parameter):
        return False
    return (use_count() == 1 and weakref.getweakrefcount(t) == 0 and t.is_leaf
            and not getattr(t, "_backward_hooks", None)
            and not getattr(t, "_post_accumulate_grad_hooks", None))
