"""
FSDP2 on a laptop CPU, with a DCP checkpoint
============================================

:class:`fastopt.torch.AdamW` over a model sharded with ``fully_shard`` (FSDP2), and a
``torch.distributed.checkpoint`` (DCP) checkpoint saved and loaded mid-training.

Two ranks (gloo backend) each hold half of every parameter (a DTensor sharded on dim 0) and train
on half of each batch. The script starts them itself, as two processes of this script with the
variables ``torchrun`` would set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and prints rank 0's
output::

    python examples/fsdp2.py
    python examples/fsdp2.py --steps 20 --optimizer torch   # torch.optim.AdamW, for comparison

or lets ``torchrun`` start them::

    torchrun --nproc-per-node 2 examples/fsdp2.py

It trains for ``--steps`` steps, saving model and optimizer with DCP halfway; then a fresh model
and optimizer load the checkpoint and train the second half again. Rank 0 prints the loss of every
step of both runs and whether the resumed run repeated the original one exactly (it printed
``True`` in every run we made: a DCP checkpoint of fastopt's sharded state resumes bit for bit).
"""
import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import fastopt.torch

BATCH = 32          # samples per step, split over the ranks

# %%
# The model, the data and the training loop
# -----------------------------------------
# ``fully_shard`` on each linear layer and on the root turns every parameter into a DTensor
# sharded over the two ranks; the optimizer is built over those parameters as usual.


def build(mesh, optimizer):
    """The model, sharded layer by layer and at the root, and its optimizer."""
    torch.manual_seed(0)                 # every rank starts from the same weights
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(),
                                torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    cls = fastopt.torch.AdamW if optimizer == "fastopt" else torch.optim.AdamW
    return model, cls(model.parameters(), lr=2e-2, weight_decay=0.01)


def batch(step, rank, world):
    """This rank's share of step ``step``'s batch: fit a fixed smooth function of x."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(BATCH, 8, generator=g)
    y = torch.tanh(x[:, :4].sum(dim=1, keepdim=True) - x[:, 4:].sum(dim=1, keepdim=True))
    share = BATCH // world
    return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]


def train(model, opt, steps, rank, world):
    """Train over ``steps``; the global mean loss of each step."""
    losses = []
    for step in steps:
        x, y = batch(step, rank, world)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        total = loss.detach()
        dist.all_reduce(total)           # gloo has no AVG: sum over ranks, then divide
        losses.append(total.item() / world)
    return losses


# %%
# Train, save, resume
# -------------------
# ``get_state_dict`` gives the model's and the optimizer's state as DTensors (each rank its
# shard), ``dcp.save`` writes them; a fresh model and optimizer load them back with ``dcp.load``
# and ``set_state_dict`` and train the second half again.


def run(rank, world, steps, optimizer, checkpoint_dir):
    mesh = init_device_mesh("cpu", (world,))
    half = steps // 2

    model, opt = build(mesh, optimizer)
    first = train(model, opt, range(half), rank, world)
    model_state, optim_state = get_state_dict(model, opt)          # DTensors: each rank its shard
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint_dir)
    original = first + train(model, opt, range(half, steps), rank, world)

    model, opt = build(mesh, optimizer)                            # fresh model and optimizer
    model_state, optim_state = get_state_dict(model, opt)          # the layout to load into
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=checkpoint_dir)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = first + train(model, opt, range(half, steps), rank, world)

    if rank == 0:
        print(f"{optimizer} AdamW under FSDP2, {world} ranks; DCP checkpoint after step {half}")
        print(f"{'step':>4}  {'loss':>10}  {'resumed':>10}")
        for step, (a, b) in enumerate(zip(original, resumed), start=1):
            print(f"{step:>4}  {a:10.6f}  " + (f"{b:10.6f}" if step > half else f"{'':>10}"))
        print("resumed run identical to the original:", original == resumed)
    return original, resumed


# %%
# The ranks
# ---------
# Each rank is a process of this script started with ``RANK`` and ``WORLD_SIZE`` set (by
# ``torchrun``, or by ``launch()``); without them, the script launches two.


def worker(rank, world, steps, optimizer, checkpoint_dir=None, losses_json=None):
    """One rank: join the group, agree on rank 0's checkpoint directory, run, leave. Rank 0
    writes the losses of both runs to ``losses_json`` if given."""
    torch.set_num_threads(1)             # two ranks on a laptop: one thread each
    dist.init_process_group("gloo", rank=rank, world_size=world)
    created = checkpoint_dir is None
    shared = [tempfile.mkdtemp(prefix="fsdp2-ckpt-") if created and rank == 0 else checkpoint_dir]
    try:
        dist.broadcast_object_list(shared, src=0)
        original, resumed = run(rank, world, steps, optimizer, shared[0])
        if rank == 0 and losses_json:
            with open(losses_json, "w") as f:
                json.dump({"original": original, "resumed": resumed, "checkpoint_after": steps // 2}, f)
        dist.barrier()                   # nobody still reads the checkpoint
    finally:
        if created and rank == 0:
            shutil.rmtree(shared[0], ignore_errors=True)
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv, world=2):
    """Run this script in ``world`` processes, one per rank, as ``torchrun`` would (the
    environment variables, a free port), and print rank 0's output. Separate processes rather
    than ``torch.multiprocessing.spawn``: the ranks need not unpickle anything from this
    script's ``__main__``, which is not importable when the script runs inside another program
    (as sphinx-gallery runs it)."""
    import fastopt
    script = pathlib.Path(globals().get("__file__") or sys.argv[0]).resolve()
    root = str(pathlib.Path(fastopt.__file__).resolve().parents[1])   # the same fastopt in the ranks
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="fsdp2-ranks-") as logs:
        ranks = []
        for rank in range(world):
            out = open(os.path.join(logs, f"rank{rank}.out"), "w+")
            err = open(os.path.join(logs, f"rank{rank}.err"), "w+")
            proc = subprocess.Popen([sys.executable, str(script), *argv], stdout=out, stderr=err,
                                    env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)))
            ranks.append((proc, out, err))
        failed = []
        for rank, (proc, out, err) in enumerate(ranks):
            proc.wait()
            out.seek(0)
            err.seek(0)
            if rank == 0:
                print(out.read(), end="")
            if proc.returncode != 0:
                failed.append(f"rank {rank} exited with {proc.returncode}:\n{err.read()[-3000:]}")
            out.close()
            err.close()
    if failed:
        raise RuntimeError("\n".join(failed))


def main(argv=None):
    """Parse the options; in a rank (RANK set), train; else launch two ranks and return rank 0's
    losses: ``{"original", "resumed", "checkpoint_after"}``."""
    parser = argparse.ArgumentParser(
        description="FSDP2 on a laptop CPU: fastopt.torch.AdamW with a DCP checkpoint.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", choices=["fastopt", "torch"], default="fastopt")
    parser.add_argument("--checkpoint-dir", help="where to save (default: a temporary directory)")
    parser.add_argument("--losses-json", help="rank 0 writes the losses of both runs to this file")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:             # a rank: started by torchrun or by launch()
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args.steps, args.optimizer,
               args.checkpoint_dir, args.losses_json)
        return None
    with tempfile.TemporaryDirectory(prefix="fsdp2-losses-") as folder:
        losses_json = args.losses_json or os.path.join(folder, "losses.json")
        rank_argv = ["--steps", str(args.steps), "--optimizer", args.optimizer,
                     "--losses-json", losses_json]
        if args.checkpoint_dir:
            rank_argv += ["--checkpoint-dir", args.checkpoint_dir]
        launch(rank_argv)
        with open(losses_json) as f:
            return json.load(f)


# %%
# Run
# ---

if __name__ == "__main__":
    losses = main()

# %%
# The loss of both runs
# ---------------------
# The resumed run starts from the checkpoint and retraces the original run's second half.

if __name__ == "__main__" and losses is not None:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    steps = range(1, len(losses["original"]) + 1)
    half = losses["checkpoint_after"]
    ax.plot(steps, losses["original"], label="original run")
    ax.plot(steps[half:], losses["resumed"][half:], "o", fillstyle="none",
            label="resumed from the DCP checkpoint")
    ax.axvline(half + 0.5, color="gray", linestyle=":")
    ax.set(xlabel="step", ylabel="mean squared error", yscale="log",
           title="fastopt.torch.AdamW under FSDP2, 2 ranks")
    ax.legend()
    plt.show()
