"""One rank of the two-process DeepSpeed test in tests/torch/test_engine_deepspeed.py.

Run as ``python deepspeed_worker.py OUT_PATH`` with DS_ACCELERATOR=cpu, MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE and LOCAL_RANK set (the test starts both ranks). Every case of :func:`all_cases` runs
in this one launch: a seeded tiny MLP trained for :data:`STEPS` steps through
``deepspeed.initialize(model=..., optimizer=<client optimizer>, config=...)`` with ZeRO's flat fp32
partition handed to the client optimizer. Rank 0 saves, for each case, the per-step losses (mean
over both ranks), the final fp32 master weights gathered in full, and the exception a run raised
(as text; a run that raises is recorded, not fatal: both ranks run the same code, so both raise at
the same place). Rank 0 also saves the same training done in one process without DeepSpeed
("plain"), the reference the DeepSpeed runs must reproduce.
"""
import datetime
import os
import sys
import time
import traceback

import torch

STEPS = 12
RESUME_AT = 5          # checkpoint cases: save after this many steps, resume in a fresh engine
WORLD = 2
PER_RANK = 8           # samples per rank per step
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.1
CLIP = 1.0             # DeepSpeed's default gradient_clipping, spelled out; the plain run clips too

#: (stage, offload, dtype) of the main matrix: ZeRO 1/2/3 x (no offload, offload_optimizer cpu) x
#: (fp32, bf16), each with two param groups (decay / no decay).
MATRIX = [(stage, offload, dtype) for stage in (1, 2, 3) for offload in (False, True)
          for dtype in ("fp32", "bf16")]
#: The offload configs that also run DeepSpeedCPUAdam (the optimizer a switch to fastopt replaces):
#: one per stage, both dtypes. Not all six: each DeepSpeedCPUAdam() loads its op again (~1.5 s).
CPU_ADAM = [(1, True, "fp32"), (2, True, "fp32"), (3, True, "bf16")]
#: A model of one weight in one param group: ZeRO swaps the group's one tensor for its one flat
#: partition (and hands the optimizer a one-group list), so neither the number of groups nor a
#: group's length changes and a check that counts them cannot notice the swap.
ONE_TENSOR = [(1, False, "fp32"), (2, False, "fp32"), (2, True, "fp32"), (3, False, "fp32")]
#: ZeRO-3 with a sub_group_size that splits the decay group in two sub-groups (fc1.weight's and
#: fc2.weight's partitions): each engine step steps the same param group twice, its params set to
#: one sub-group's flat partition, then to the other's, each with its own state.
SPLIT = [(3, False, "fp32"), (3, True, "fp32")]
SUB_GROUP_SIZE = 100
#: Checkpoint resume: save after RESUME_AT steps, load into a fresh engine, continue.
RESUME = [(2, True, "fp32"), (3, False, "fp32"), (3, True, "fp32")]


#: How the params are grouped: "groups" (decay / no decay), "split" (the same, in ZeRO-3 sub-groups),
#: "one-tensor" (a one-weight model, one group).
LAYOUTS = ("groups", "split", "one-tensor")


def case_key(stage, offload, dtype, layout, optimizer, resume=False):
    """The results file's key of one run, e.g. ``z2-offload-fp32-groups-fastopt``."""
    parts = [f"z{stage}", "offload" if offload else "no-offload", dtype, layout, optimizer]
    return "-".join(parts + (["resume"] if resume else []))


def all_cases():
    """[(key, stage, offload, dtype, layout, optimizer, resume)], in run order."""
    cases = []
    for stage, offload, dtype in MATRIX:
        optimizers = ["torch", "fastopt"] + (["dscpuadam"] if (stage, offload, dtype) in CPU_ADAM else [])
        cases += [(stage, offload, dtype, "groups", opt, False) for opt in optimizers]
    cases += [(stage, offload, dtype, "one-tensor", opt, False)
              for stage, offload, dtype in ONE_TENSOR for opt in ("torch", "fastopt")]
    cases += [(stage, offload, dtype, "split", opt, False)
              for stage, offload, dtype in SPLIT for opt in ("torch", "fastopt")]
    cases += [(stage, offload, dtype, "groups", opt, True)
              for stage, offload, dtype in RESUME for opt in ("torch", "fastopt")]
    return [(case_key(*c), *c) for c in cases]


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


def make_model(layout):
    torch.manual_seed(0)
    if layout == "one-tensor":
        return torch.nn.Linear(8, 4, bias=False)
    return MLP()


def param_groups(model, layout):
    """Decay (matrices) and no-decay (biases, LayerNorm) groups; one-tensor: the one weight."""
    if layout == "one-tensor":
        return [{"params": [model.weight], "weight_decay": WEIGHT_DECAY}]
    named = list(model.named_parameters())
    return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]


def data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(STEPS, WORLD * PER_RANK, 8, generator=g)
    teacher = torch.randn(8, 4, generator=g)
    return x, torch.tanh(x @ teacher) + 0.05 * torch.randn(STEPS, WORLD * PER_RANK, 4, generator=g)


def make_optimizer(name, groups):
    kwargs = dict(lr=LR, betas=BETAS, eps=EPS)
    if name == "torch":
        return torch.optim.AdamW(groups, foreach=False, **kwargs)
    if name == "fastopt":
        import fastopt.torch
        return fastopt.torch.AdamW(groups, **kwargs)
    if name == "dscpuadam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}")


def ds_config(stage, offload, dtype, layout):
    zero = {"stage": stage}
    if layout == "split":
        zero["sub_group_size"] = SUB_GROUP_SIZE
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": PER_RANK,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "gradient_clipping": CLIP,
        # a client optimizer under ZeRO (and under ZeRO-Offload, in place of DeepSpeedCPUAdam)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
    }


def make_engine(stage, offload, dtype, layout, optimizer):
    import deepspeed
    model = make_model(layout)
    opt = make_optimizer(optimizer, param_groups(model, layout))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config(stage, offload, dtype, layout))
    if layout == "split" and len(engine.optimizer.fp16_groups) != 3:
        raise RuntimeError(f"expected the decay group in 2 ZeRO-3 sub-groups (3 in all), got "
                           f"{len(engine.optimizer.fp16_groups)}")
    return engine


def train_steps(engine, rank, first, last, losses):
    import torch.distributed as dist
    x, y = data()
    dtype = next(engine.module.parameters()).dtype
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for t in range(first, last):
        loss = torch.nn.functional.mse_loss(engine(x[t, rows].to(dtype)), y[t, rows].to(dtype))
        engine.backward(loss)
        engine.step()
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / WORLD)


def full_fp32_params(engine):
    """{name: the full fp32 master weight} (collective under ZeRO-3: every rank calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param
    return {name: safe_get_full_fp32_param(p).detach().clone().cpu()
            for name, p in engine.module.named_parameters()}


def run_case(rank, stage, offload, dtype, layout, optimizer, resume, checkpoint_dir):
    losses = []
    engine = make_engine(stage, offload, dtype, layout, optimizer)
    if not resume:
        try:
            train_steps(engine, rank, 0, STEPS, losses)
            return losses, full_fp32_params(engine)
        finally:
            _destroy(engine)
    train_steps(engine, rank, 0, RESUME_AT, losses)
    engine.save_checkpoint(checkpoint_dir, tag="resume")
    _destroy(engine)
    engine = make_engine(stage, offload, dtype, layout, optimizer)   # fresh model and optimizer
    path, _ = engine.load_checkpoint(checkpoint_dir, tag="resume")
    if path is None:
        raise RuntimeError("load_checkpoint found no checkpoint")
    try:
        train_steps(engine, rank, RESUME_AT, STEPS, losses)
        return losses, full_fp32_params(engine)
    finally:
        _destroy(engine)


def _destroy(engine):
    try:
        engine.destroy()
    except Exception:   # cleanup of a run that failed half-way must not end the others
        pass


def plain(layout):
    """The same training in one process without DeepSpeed (full batch, torch.optim.AdamW)."""
    model = make_model(layout)
    opt = torch.optim.AdamW(param_groups(model, layout), foreach=False, lr=LR, betas=BETAS, eps=EPS)
    x, y = data()
    losses = []
    for t in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[t]), y[t])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "error": None}


def main(out_path):
    import deepspeed
    import torch.distributed as dist
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    # DeepSpeed's shared-memory all-reduce serves inference only (training's collectives go to
    # gloo); not loading it spares a fresh machine its JIT build.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # a collective that one rank never joins fails after this instead of gloo's 30 minutes
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=120))
    checkpoint_dir = os.path.join(os.path.dirname(out_path), "checkpoints")
    results = {}
    for layout in LAYOUTS:
        results[f"plain-{layout}"] = plain(layout)
        results[f"initial-{layout}"] = {n: p.detach().clone() for n, p in make_model(layout).named_parameters()}
    start = time.perf_counter()
    for key, stage, offload, dtype, layout, optimizer, resume in all_cases():
        t0 = time.perf_counter()
        print(f"case {key}", flush=True)      # where a rank was, in its log, should it hang
        try:
            losses, params = run_case(rank, stage, offload, dtype, layout, optimizer, resume,
                                      os.path.join(checkpoint_dir, key))
            error = None
        except Exception as exc:
            losses, params = None, None
            error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        results[key] = {"losses": losses, "params": params, "error": error,
                        "seconds": time.perf_counter() - t0}
        dist.barrier()
    results["seconds"] = time.perf_counter() - start
    if rank == 0:
        torch.save(results, out_path)
    # Both ranks reach here before either tears its group down (see ddp_worker.py).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
