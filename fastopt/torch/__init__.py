"""PyTorch adapter: ``torch.optim.Optimizer`` subclasses that run fastopt's kernels.

``fastopt.torch.<Name>`` exists for every algorithm fastopt declares (``fastopt/algorithms``):
``Adam``, ``AdamW``, ``SGD``, ``RMSprop``, ``Adagrad``, ``NAdam``, ... Each takes the same arguments
as its ``torch.optim`` namesake (its signature, defaults and group keys come from the declaration)
and drops into an existing training loop::

    import fastopt.torch
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()

How it works: each optimizer holds a fastopt optimizer built over zero-copy NumPy views of the
params (``p.detach().numpy()`` shares the tensor's memory), with one fastopt param group per torch
param group. torch.optim's whole contract holds: between steps a group's params may be replaced,
added, removed or reordered, ``optimizer.param_groups`` reassigned (DeepSpeed sets it to one group
before each step), a param given new memory (``p.data = ...``): the step sees it (the C gather
checks each param's place in its group's list and its data pointer as it reads the gradient) and
steps the groups as they are, each param with its state. Each configuration of the groups gets its
own fastopt optimizer, found again when it comes back, so alternating configurations cost nothing;
a new one costs one copy of the state it takes in. A param whose kept state no longer fits it
(resized, another dtype) is refused with an error that says so, nothing dropped. ``step()`` copies
the torch groups' hyperparameters into it (they stay the source of truth, so LR schedulers and hand
edits of ``param_groups`` work), reads each ``p.grad``'s data pointer, dtype, size and layout in C
(``fastopt/_core/_tensor_gather.pyx``: no NumPy array per gradient per step; anything unusual takes
a precise path that raises naming the param) and runs the fused update in place. The params'
autograd version counters are bumped, as an in-place torch op would do. ``step(max_norm=...,
norm_type=2.0)`` clips by the global gradient norm inside the step (``grad_norm`` keeps the norm),
bit-identical to :func:`fastopt.clip_grad_norm_` on the gradients followed by ``step()``.

State lives in fastopt's arenas. ``opt.state`` is live, in torch's format: ``opt.state[p]`` holds
``"step"`` as a scalar tensor (an edit of it is seen by the next step, which advances it) and
``"exp_avg"``, ... as tensors sharing the arena's memory (edit them in place, or assign a tensor of
the same shape, which is copied in); ``opt.state[p] = {...}`` (ZeroRedundancyOptimizer's and
DeepSpeed's way of loading), new entries and ``del`` are kept as given and checked when ``p`` is
next stepped. DTensor params (FSDP2, tensor parallel) are stepped on their local shards, as
torch.optim's ops on DTensors are, and their states are DTensors with the param's placements, so
``torch.distributed.checkpoint`` saves and loads them as it does torch.optim's (Muon and Adafactor,
whose updates need the whole matrix, refuse DTensor params). Under ``torch.compile``, ``step()``
runs eagerly (a clean graph break). ``state_dict()`` returns copies in torch's format, so
checkpoints load into ``torch.optim.Adam`` and a ``torch.optim.Adam`` checkpoint loads into
``fastopt.torch.Adam`` (likewise for the others), from older torch versions too; a checkpoint of
another optimizer (an SGD one into Adam) is refused. Bad hyperparameters raise torch.optim's error
type, with its words followed by fastopt's.

Supported tensors: dense (strided), contiguous, CPU, float32, float64, float16 or bfloat16 params
(half-precision ones with the ``master_weights``, ``state_dtype`` and ``stochastic_rounding``
options of the NumPy classes; ``stochastic_rounding`` acts on bfloat16 params and refuses float16
ones), with grads of the param's dtype or, for half params, float32.
Anything else (CUDA, sparse, complex, non-contiguous) raises a TypeError or ValueError that names
the param; nothing is copied behind your back. ``capturable=True`` and
``differentiable=True`` are not supported; ``foreach`` and ``fused`` are accepted (and stored, for
checkpoint compatibility) but do not change anything: the update is always fastopt's fused kernel.

Flat mode: ``flat=True`` (or :func:`flatten_` on a list of params) moves the params of each param
group and dtype into one flat buffer and their gradients into one flat gradient buffer, so a step
updates each buffer with one call and checks a few numbers per buffer instead of every tensor (see
``_flat.py`` for exactly what it detects); ``zero_grad()`` then zeroes the gradient buffer and keeps
the views.

``import fastopt`` never imports torch; only ``import fastopt.torch`` does.
"""
from ._adapter import ADAPTERS as _ADAPTERS
from ._flat import FlatParams, flatten_
from ._lbfgs import LBFGS

# One adapter per declared algorithm, each named here so that readers, IDEs and static tools see
# it; tests/tooling/test_exports.py fails when an algorithm is declared but not named here.
Adadelta = _ADAPTERS["Adadelta"]
Adafactor = _ADAPTERS["Adafactor"]
Adagrad = _ADAPTERS["Adagrad"]
Adam = _ADAPTERS["Adam"]
AdEMAMix = _ADAPTERS["AdEMAMix"]
AdamW = _ADAPTERS["AdamW"]
Adamax = _ADAPTERS["Adamax"]
ASGD = _ADAPTERS["ASGD"]
LAMB = _ADAPTERS["LAMB"]
LARS = _ADAPTERS["LARS"]
Lion = _ADAPTERS["Lion"]
Muon = _ADAPTERS["Muon"]
NAdam = _ADAPTERS["NAdam"]
RAdam = _ADAPTERS["RAdam"]
RMSprop = _ADAPTERS["RMSprop"]
Rprop = _ADAPTERS["Rprop"]
SGD = _ADAPTERS["SGD"]

# bitsandbytes' classes (their arguments and checkpoints; states in 8 bits by default)
Adam8bit = _ADAPTERS["Adam8bit"]
AdamW8bit = _ADAPTERS["AdamW8bit"]
AdEMAMix8bit = _ADAPTERS["AdEMAMix8bit"]
Adagrad8bit = _ADAPTERS["Adagrad8bit"]
LAMB8bit = _ADAPTERS["LAMB8bit"]
LARS8bit = _ADAPTERS["LARS8bit"]
Lion8bit = _ADAPTERS["Lion8bit"]
RMSprop8bit = _ADAPTERS["RMSprop8bit"]
SGD8bit = _ADAPTERS["SGD8bit"]

__all__ = [
    "Adadelta", "Adafactor", "Adagrad", "Adam", "AdEMAMix", "AdamW", "Adamax", "ASGD", "LAMB", "LARS", "Lion",
    "Muon", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD",
    "Adam8bit", "AdamW8bit", "AdEMAMix8bit", "Adagrad8bit", "LAMB8bit", "LARS8bit", "Lion8bit",
    "RMSprop8bit", "SGD8bit",
    "LBFGS", "FlatParams", "flatten_",
]
