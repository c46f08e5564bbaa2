"""One rank of tests/torch/test_flat_engines.py: fastopt.torch's flat mode (``flat=True``,
``fastopt.torch.flatten_``) under DistributedDataParallel and ZeroRedundancyOptimizer, against
the same runs without the flat mode and against torch.optim.

Run as ``python flat_ddp_worker.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and WORLD_SIZE set
(tests/_support/two_ranks.py does). For every config of :data:`CONFIGS` it trains a tiny float32
model for :data:`STEPS` seeded steps, each rank on its slice of the batch, once for each side of
:data:`SIDES`:

* ``flat``: ``fastopt.torch.Adam(..., flat=True)``, whose ``zero_grad()`` keeps the gradients as
  views of its flat gradient buffer (under ZeRO, ZeRO's own ``zero_grad()``: ``set_to_none=True``);
* ``plain``: ``fastopt.torch.Adam`` without the flat mode, the flat side's exact reference;
* ``torch``: ``torch.optim.Adam(foreach=False)``;

the last two with ``zero_grad(set_to_none=False)``. Every side is built in the same order
relative to the DDP wrap (``build`` of the config), so the runs differ in the optimizer alone.

After :data:`SAVE_AT` steps rank 0 saves the model's and the optimizer's state dicts to
``OUT_DIR/<config>-<side>.pt`` (ZeRO: after ``consolidate_state_dict(to=0)``); then fresh models
and optimizers on every rank load a checkpoint and train the remaining steps: the flat side from
its own checkpoint (``<config>/flat/resumed``), torch.optim from the flat side's
(``<config>/flat->torch``) and the flat side from torch.optim's (``<config>/torch->flat``).

The harness is checked against itself with ``FASTOPT_FLAT_CANDIDATE=plain`` (the flat side runs
fastopt.torch without the flat mode) or ``FASTOPT_ENGINE_CANDIDATE=torch`` (every fastopt side
runs torch.optim): every comparison must then hold exactly.

Each rank writes ``OUT_DIR/rank<RANK>.pt``: ``{run name: record}`` (run names as above, and
``"<config>/<side>"``); a record holds ``losses`` (the global mean loss of each step trained),
``params`` (this rank's final params by name), ``state`` (this rank's optimizer state by param
name, as its ``state_dict()`` gives it: under ZeRO the local optimizer's, for the params this
rank updates), ``runners`` (the type name of the fastopt.torch runner after each step: FlatRunner
when the step updated the flat buffers; None for torch.optim), ``placement`` (flat side: for
each flat buffer, how many of its params kept their own autograd version counter, i.e. were
placed with ``param.data = view`` rather than ``torch.utils.swap_tensors``, and how many it has),
``warnings`` (``(category, message)`` of every warning the run raised) and ``error`` (None, or the
traceback of the exception that stopped the run); a failing run does not stop the others.
"""
import contextlib
import os
import pathlib
import sys
import traceback
import warnings

import torch

from engine_candidate import optimizer_class, rank_results
from two_rank_data import WORLD, batch, load_checkpoint, save_checkpoint

STEPS = 8
SAVE_AT = 4
SIDES = ("flat", "plain", "torch")
#: What the flat side runs: "flat" (the point of the tests) or "plain" (the harness checked
#: against itself: fastopt.torch without the flat mode on both sides).
FLAT_CANDIDATE = os.environ.get("FASTOPT_FLAT_CANDIDATE", "flat")
#: The start of the warning the flat mode gives when it steps per tensor.
PER_TENSOR_WARNING = "flat=True: the optimizer steps per tensor"

ADAM = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2)

#: name -> how the run is set up:
#:
#: * ``build``: ``"before"``: the optimizer is built over the module's params, then the module is
#:   wrapped in DDP; ``"after"``: built over the DDP model's params (DDP's reducer then holds
#:   them: the flat mode moves them with ``param.data = view``); ``"flatten_"``:
#:   ``fastopt.torch.flatten_(module.parameters())`` on the flat side, then DDP, then the
#:   optimizer;
#: * ``ddp``: DistributedDataParallel's options;
#: * ``micro``: backward passes per step (all but the last under ``ddp.no_sync()``);
#: * ``groups``: 1, or 2 (weights at twice the lr, biases without weight decay);
#: * ``zero``: None, or ZeroRedundancyOptimizer's options (the optimizer then is
#:   ``ZeroRedundancyOptimizer(params, optimizer_class=..., **zero, ...)``, built after DDP).
CONFIGS = {
    "ddp-before": dict(build="before", ddp=dict(gradient_as_bucket_view=False)),
    "ddp-before-grad-as-bucket-view": dict(build="before", ddp=dict(gradient_as_bucket_view=True)),
    "ddp-before-two-groups": dict(build="before", ddp=dict(gradient_as_bucket_view=False), groups=2),
    "ddp-after": dict(build="after", ddp=dict(gradient_as_bucket_view=False)),
    "ddp-after-grad-as-bucket-view": dict(build="after", ddp=dict(gradient_as_bucket_view=True)),
    "flatten_-then-ddp": dict(build="flatten_", ddp=dict(gradient_as_bucket_view=False)),
    "flatten_-then-ddp-grad-as-bucket-view": dict(build="flatten_", ddp=dict(gradient_as_bucket_view=True)),
    "accumulate-no-sync": dict(build="before", ddp=dict(gradient_as_bucket_view=False), micro=3),
    "accumulate-no-sync-grad-as-bucket-view": dict(build="before", ddp=dict(gradient_as_bucket_view=True),
                                                   micro=3),
    "zero": dict(build="after", ddp={}, zero=dict(parameters_as_bucket_view=False)),
    "zero-params-as-bucket-view": dict(build="after", ddp={}, zero=dict(parameters_as_bucket_view=True)),
}


def make_module():
    """The model every run starts from (float32, seeded)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 1))


def side_class(side):
    """``(class, extra arguments)`` of the optimizer of ``side``."""
    if side == "torch":
        return optimizer_class("torch", "Adam")
    cls, extra = optimizer_class("fastopt", "Adam")
    if side == "flat" and FLAT_CANDIDATE == "flat" and cls.__module__.startswith("fastopt"):
        extra = dict(extra, flat=True)
    return cls, extra


def param_groups(module, groups):
    named = list(module.named_parameters())
    if groups == 1:
        return [p for _, p in named]
    return [dict(params=[p for name, p in named if name.endswith("weight")], lr=2 * ADAM["lr"]),
            dict(params=[p for name, p in named if name.endswith("bias")], weight_decay=0.0)]


def set_up(config, side):
    """The DDP model and the optimizer of ``config`` for ``side``, built in the config's order."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel
    import fastopt.torch
    options = CONFIGS[config]
    cls, extra = side_class(side)
    module = make_module()
    if options["build"] == "before":
        opt = cls(param_groups(module, options.get("groups", 1)), **ADAM, **extra)
        model = DistributedDataParallel(module, **options["ddp"])
        return model, opt
    if options["build"] == "flatten_" and extra.get("flat"):
        # kept, as flatten_'s docstring says: flat=True then takes its buffers as they are
        module.laid_out = fastopt.torch.flatten_(module.parameters())
    model = DistributedDataParallel(module, **options["ddp"])
    params = param_groups(module, options.get("groups", 1))
    if options.get("zero") is not None:
        opt = ZeroRedundancyOptimizer(params, optimizer_class=cls, **options["zero"], **ADAM, **extra)
    else:
        opt = cls(params, **ADAM, **extra)
    return model, opt


def local_optimizer(opt):
    """The optimizer that updates this rank's params (ZeRO's local one, or ``opt``)."""
    return getattr(opt, "optim", opt)


def runner_name(opt):
    runner = getattr(local_optimizer(opt), "_runner", None)
    return None if runner is None else type(runner).__name__


def placement(opt):
    """For each flat buffer of the flat side: (params with their own version counter, params)."""
    flats = getattr(local_optimizer(opt), "_flat", None) or []
    return [(len(flat.own_counters), len(flat.params)) for flat in flats]


def state_by_name(opt, model):
    """This rank's optimizer state by param name, cloned, as ``state_dict()`` gives it."""
    local = local_optimizer(opt)
    names = {id(p): name for name, p in model.module.named_parameters()}
    order = [p for group in local.param_groups for p in group["params"]]
    return {names[id(order[index])]: {key: value.clone() if isinstance(value, torch.Tensor) else value
                                      for key, value in entry.items()}
            for index, entry in local.state_dict()["state"].items()}


def train_step(model, opt, side, step, rank, micro):
    """One optimizer step over ``micro`` backward passes on this rank's slices (DDP averages the
    gradients over the ranks at the last one); returns the global mean loss."""
    import torch.distributed as dist
    if side == "flat":
        opt.zero_grad()
    else:
        opt.zero_grad(set_to_none=False)
    total = torch.zeros((), dtype=torch.float64)
    for m in range(micro):
        x, y = batch(step * micro + m, rank)
        sync = contextlib.nullcontext() if m == micro - 1 else model.no_sync()
        with sync:
            loss = torch.nn.functional.mse_loss(model(x.float()), y.float()) / micro
            loss.backward()
        total += loss.detach().double()
    opt.step()
    dist.all_reduce(total)                # gloo has no AVG: sum, then divide
    return total.item() / WORLD


def run(rank, config, side, checkpoints, load_from=None):
    """Train ``config`` with ``side``: from scratch (saving at SAVE_AT into checkpoints[side]) or,
    with ``load_from``, from checkpoints[load_from] for the remaining steps."""
    record = dict(losses=[], params=None, state=None, runners=[], placement=None, warnings=[], error=None)
    micro = CONFIGS[config].get("micro", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if load_from is not None and not checkpoints[load_from].exists():
                raise FileNotFoundError(f"no checkpoint to load: the {load_from} run saved none")
            model, opt = set_up(config, side)
            first = 0
            if load_from is not None:
                load_checkpoint(model, opt, checkpoints[load_from])
                first = SAVE_AT
            for step in range(first, STEPS):
                record["losses"].append(train_step(model, opt, side, step, rank, micro))
                record["runners"].append(runner_name(opt))
                if load_from is None and step + 1 == SAVE_AT:
                    save_checkpoint(model, opt, checkpoints[side], rank)
            record["params"] = {name: p.detach().clone() for name, p in model.module.named_parameters()}
            record["state"] = state_by_name(opt, model)
            record["placement"] = placement(opt)
        except Exception:   # recorded for the tests; the other runs go on
            record["error"] = traceback.format_exc()
            traceback.print_exc()
    record["warnings"] = [(w.category.__name__, str(w.message)) for w in caught]
    return record


def main(rank, out_dir):
    out_dir = pathlib.Path(out_dir)
    with rank_results(rank, WORLD, out_dir) as results:
        for config in CONFIGS:
            checkpoints = {side: out_dir / f"{config}-{side}.pt" for side in SIDES}
            for side in SIDES:
                results[f"{config}/{side}"] = run(rank, config, side, checkpoints)
            results[f"{config}/flat/resumed"] = run(rank, config, "flat", checkpoints, load_from="flat")
            results[f"{config}/flat->torch"] = run(rank, config, "torch", checkpoints, load_from="flat")
            results[f"{config}/torch->flat"] = run(rank, config, "flat", checkpoints, load_from="torch")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
