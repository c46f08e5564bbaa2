"""One rank of tests/torch/test_engine_zero_redundancy.py: fastopt.torch under DistributedDataParallel
and torch.distributed.optim.ZeroRedundancyOptimizer, against torch.optim.

Run as ``python zero_worker.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and WORLD_SIZE set
(tests/_support/two_ranks.py does). For every config of :data:`CONFIGS` and both implementations
(``torch``: ``torch.optim.<Name>(foreach=False)``; ``fastopt``: ``fastopt.torch.<Name>``, or
torch's again with FASTOPT_ENGINE_CANDIDATE=torch) it trains a tiny DDP model for :data:`STEPS`
seeded steps, each rank on its half of the batch, with the optimizer plain (``ddp-*`` configs) or
as ZeroRedundancyOptimizer's ``optimizer_class`` (``zero-*``: each rank steps its partition of
the params, then ZeRO broadcasts them). After :data:`SAVE_AT` steps rank 0 saves model and
optimizer state dicts to a file (ZeRO: after ``consolidate_state_dict(to=0)``); then a fresh
model and optimizer on every rank load it and train the remaining steps: from their own
implementation's checkpoint, and from the other one's.

Each rank writes ``OUT_DIR/rank<RANK>.pt``: ``{run name: record}``, run names as in
fsdp_worker.py (``"<config>/<impl>"``, ``"<config>/<impl>/resumed"``,
``"<config>/<from impl>-><impl>"``); a record holds ``losses`` (the global mean loss per step
trained), ``params`` (this rank's final params by name) and ``error`` (None, or the exception
that stopped the run); a failing run does not stop the others.
"""
import pathlib
import sys
import traceback

import torch

from engine_candidate import optimizer_class, rank_results
from two_rank_data import STEPS, WORLD, load_checkpoint, save_checkpoint, train_step

SAVE_AT = 4
IMPLS = ("torch", "fastopt")

ADAMW = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
#: name -> (algorithm, defaults, two groups?, DDP options, ZeRO options or None for no ZeRO).
#: Two groups: weights at twice the lr, biases without weight decay. ZeRO's
#: ``parameters_as_bucket_view=True`` moves every param's data into a flat bucket after the
#: optimizer was built over the params (``param.data = bucket[...]``).
CONFIGS = {
    "zero-AdamW": ("AdamW", ADAMW, False, {}, {}),
    "zero-AdamW-two-groups": ("AdamW", ADAMW, True, {}, {}),
    "zero-AdamW-params-as-bucket-view": ("AdamW", ADAMW, False, {}, dict(parameters_as_bucket_view=True)),
    "zero-SGD-momentum": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3), False, {}, {}),
    "ddp-AdamW": ("AdamW", ADAMW, False, dict(gradient_as_bucket_view=False), None),
    "ddp-AdamW-grad-as-bucket-view": ("AdamW", ADAMW, False, dict(gradient_as_bucket_view=True), None),
}


def make_module():
    """The model every run starts from (float64, seeded)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def make_model(ddp_options):
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(make_module(), **ddp_options)



def make_optimizer(model, config, impl):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    algorithm, defaults, two_groups, _, zero_options = CONFIGS[config]
    cls, extra = optimizer_class(impl, algorithm)
    named = list(model.module.named_parameters())
    if two_groups:
        params = [dict(params=[p for name, p in named if name.endswith("weight")], lr=2 * defaults["lr"]),
                  dict(params=[p for name, p in named if name.endswith("bias")], weight_decay=0.0)]
    else:
        params = [p for _, p in named]
    if zero_options is None:
        return cls(params, **defaults, **extra)
    return ZeroRedundancyOptimizer(params, optimizer_class=cls, **zero_options, **defaults, **extra)


def run(rank, config, impl, checkpoints, load_from=None):
    """Train ``config`` with ``impl``: from scratch (saving at SAVE_AT into checkpoints[impl]) or,
    with ``load_from``, from checkpoints[load_from] for the remaining steps."""
    record = dict(losses=[], params=None, error=None)
    if load_from is not None and not checkpoints[load_from].exists():
        record["error"] = f"no checkpoint to load: the {load_from} run saved none"
        return record
    try:
        model = make_model(CONFIGS[config][3])
        opt = make_optimizer(model, config, impl)
        first = 0
        if load_from is not None:
            load_checkpoint(model, opt, checkpoints[load_from])
            first = SAVE_AT
        for step in range(first, STEPS):
            record["losses"].append(train_step(model, opt, step, rank))
            if load_from is None and step + 1 == SAVE_AT:
                save_checkpoint(model, opt, checkpoints[impl], rank)
        record["params"] = {name: p.detach().clone() for name, p in model.module.named_parameters()}
    except Exception as error:   # recorded for the tests; the other runs go on
        record["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    return record


def main(rank, out_dir):
    out_dir = pathlib.Path(out_dir)
    with rank_results(rank, WORLD, out_dir) as results:
        for config in CONFIGS:
            checkpoints = {impl: out_dir / f"{config}-{impl}.pt" for impl in IMPLS}
            for impl in IMPLS:
                results[f"{config}/{impl}"] = run(rank, config, impl, checkpoints)
            for impl in IMPLS:
                results[f"{config}/{impl}/resumed"] = run(rank, config, impl, checkpoints, load_from=impl)
            for source, impl in (("torch", "fastopt"), ("fastopt", "torch")):
                results[f"{config}/{source}->{impl}"] = run(rank, config, impl, checkpoints, load_from=source)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
