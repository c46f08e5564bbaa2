"""One rank of tests/torch/test_engine_fsdp2.py: fastopt.torch under FSDP2 and DCP, against torch.optim.

Run as ``python fsdp_worker.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and WORLD_SIZE set
(tests/_support/two_ranks.py does). For every config of :data:`CONFIGS` and both implementations
(``torch``: ``torch.optim.<Name>(foreach=False)``; ``fastopt``: ``fastopt.torch.<Name>``, or
torch's again with FASTOPT_ENGINE_CANDIDATE=torch) it trains a tiny model sharded with
``fully_shard`` per layer and on the root (params are DTensors, Shard(0) over 2 ranks, some shards
uneven and one empty) for :data:`STEPS` seeded steps, each rank on its half of the batch. After
:data:`SAVE_AT` steps it saves model and optimizer through
``torch.distributed.checkpoint.state_dict.get_state_dict`` and ``dcp.save``; then fresh models and
optimizers load that checkpoint (``dcp.load`` + ``set_state_dict``) and train the remaining steps:
from their own implementation's checkpoint, and from the other one's.

Each rank writes ``OUT_DIR/rank<RANK>.pt``: ``{run name: record}``, run names
``"<config>/<impl>"`` (uninterrupted), ``"<config>/<impl>/resumed"`` (from its own checkpoint) and
``"<config>/<from impl>-><impl>"`` (from the other one's). A record holds ``losses`` (the global
mean loss per step trained), ``params`` (full params, ``DTensor.full_tensor()``, by name),
``layout`` (per param name and state key: kind, placements, local shape and dtype of
``opt.state[p][key]``) and ``error`` (None, or the exception that stopped the run, which the tests
report); a failing run does not stop the others. ``"example"`` holds the losses of
examples/fsdp2.py, run in the same ranks.
"""
import pathlib
import sys
import traceback

import torch

from engine_candidate import CANDIDATE, optimizer_class, rank_results
from two_rank_data import STEPS, WORLD, train_step

SAVE_AT = 4
IMPLS = ("torch", "fastopt")

#: name -> (algorithm, defaults, groups): ``groups`` None for one group of all params, else a list
#: of (param-name predicate, group overrides).
CONFIGS = {
    "AdamW": ("AdamW", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1), None),
    "AdamW-two-groups": ("AdamW", dict(lr=1e-2, weight_decay=0.1), [
        (lambda name: name.endswith("weight") and "norm" not in name, dict(lr=2e-2)),
        (lambda name: not (name.endswith("weight") and "norm" not in name), dict(weight_decay=0.0)),
    ]),
    "Adam-amsgrad": ("Adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True), None),
    "SGD-momentum": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3), None),
    "RMSprop-centered": ("RMSprop", dict(lr=1e-2, alpha=0.9, momentum=0.5, centered=True), None),
}


class Net(torch.nn.Module):
    """Three Linear layers and a LayerNorm, float64. Sharded on dim 0 over two ranks, ``out``
    (1 x 3 weight, 1 bias) leaves rank 1 empty shards and ``mid`` (3 x 16) uneven ones."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(6, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.mid = torch.nn.Linear(16, 3)
        self.out = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.mid(torch.tanh(self.norm(self.inp(x))))))


def make_model(mesh):
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    model = Net().double()
    for layer in (model.inp, model.norm, model.mid, model.out):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def make_optimizer(model, config, impl):
    algorithm, defaults, groups = CONFIGS[config]
    cls, extra = optimizer_class(impl, algorithm)
    named = list(model.named_parameters())
    if groups is None:
        params = [p for _, p in named]
    else:
        params = [dict(params=[p for name, p in named if belongs(name)], **overrides)
                  for belongs, overrides in groups]
    return cls(params, **defaults, **extra)




def describe(value):
    """What the tests compare of an optimizer state value: kind, placements, local shape, dtype."""
    from torch.distributed.tensor import DTensor
    if isinstance(value, DTensor):
        return ("DTensor", str(tuple(value.placements)), tuple(value.to_local().shape), str(value.dtype))
    if isinstance(value, torch.Tensor):
        return (type(value).__name__, None, tuple(value.shape), str(value.dtype))
    return (type(value).__name__, None, None, None)


def state_layout(model, opt):
    return {name: {key: describe(value) for key, value in opt.state[p].items()}
            for name, p in model.named_parameters() if p in opt.state}


def full_params(model):
    return {name: p.full_tensor().clone() for name, p in model.named_parameters()}


def save_checkpoint(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


def load_checkpoint(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, opt)     # the layout dcp.load fills in
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def run(mesh, rank, config, impl, checkpoints, load_from=None):
    """Train ``config`` with ``impl``: from scratch (saving at SAVE_AT into checkpoints[impl]) or,
    with ``load_from``, from checkpoints[load_from] for the remaining steps."""
    record = dict(losses=[], params=None, layout=None, error=None)
    if load_from is not None and not checkpoints[load_from].exists():
        record["error"] = f"no checkpoint to load: the {load_from} run saved none"
        return record
    try:
        model = make_model(mesh)
        opt = make_optimizer(model, config, impl)
        first = 0
        if load_from is not None:
            load_checkpoint(model, opt, checkpoints[load_from])
            first = SAVE_AT
        for step in range(first, STEPS):
            record["losses"].append(train_step(model, opt, step, rank))
            if load_from is None and step + 1 == SAVE_AT:
                save_checkpoint(model, opt, checkpoints[impl])
        record["layout"] = state_layout(model, opt)
        record["params"] = full_params(model)
    except Exception as error:   # recorded for the tests; the other runs go on
        record["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    return record


def run_example(rank, checkpoint_dir, steps=6):
    """examples/fsdp2.py's run() in these ranks (no launch of its own): its losses per step, of
    the original run and of the one resumed from its DCP checkpoint halfway."""
    import importlib.util
    record = dict(original=None, resumed=None, error=None)
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "fsdp2.py"
    if not path.exists():
        record["error"] = f"{path} not found (examples are not part of the installed package)"
        return record
    try:
        spec = importlib.util.spec_from_file_location("fastopt_example_fsdp2", path)
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        optimizer = "fastopt" if CANDIDATE == "fastopt" else "torch"
        record["original"], record["resumed"] = example.run(rank, WORLD, steps, optimizer, str(checkpoint_dir))
    except Exception as error:
        record["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    return record


def main(rank, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    out_dir = pathlib.Path(out_dir)
    with rank_results(rank, WORLD, out_dir) as results:
        mesh = init_device_mesh("cpu", (WORLD,))
        for config in CONFIGS:
            checkpoints = {impl: out_dir / f"{config}-{impl}-ckpt" for impl in IMPLS}
            for impl in IMPLS:
                results[f"{config}/{impl}"] = run(mesh, rank, config, impl, checkpoints)
            for impl in IMPLS:
                results[f"{config}/{impl}/resumed"] = run(mesh, rank, config, impl, checkpoints, load_from=impl)
            for source, impl in (("torch", "fastopt"), ("fastopt", "torch")):
                results[f"{config}/{source}->{impl}"] = run(mesh, rank, config, impl, checkpoints,
                                                            load_from=source)
        results["example"] = run_example(rank, out_dir / "example-ckpt")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
