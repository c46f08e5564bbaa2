"""FSDP2 on a laptop CPU: fastopt.torch.AdamW over a model sharded with ``fully_shard``, and a
torch.distributed.checkpoint (DCP) checkpoint saved and loaded mid-training.

Two ranks (gloo backend) each hold half of every parameter (a DTensor sharded on dim 0) and train
on half of each batch. The script starts them itself with ``torch.multiprocessing.spawn``::

    python examples/fsdp2.py
    python examples/fsdp2.py --steps 20 --optimizer torch   # torch.optim.AdamW, for comparison

or lets ``torchrun`` start them (it sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)::

    torchrun --nproc-per-node 2 examples/fsdp2.py

It trains for ``--steps`` steps, saving model and optimizer with DCP halfway; then a fresh model
and optimizer load the checkpoint and train the second half again. Rank 0 prints the loss of every
step of both runs: the resumed run repeats the original one exactly.
"""
import argparse
import os
import shutil
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import fastopt.torch

BATCH = 32          # samples per step, split over the ranks


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


def worker(rank, world, steps, optimizer, checkpoint_dir=None):
    """One rank: join the group, agree on rank 0's checkpoint directory, run, leave."""
    dist.init_process_group("gloo", rank=rank, world_size=world)
    created = checkpoint_dir is None
    shared = [tempfile.mkdtemp(prefix="fsdp2-ckpt-") if created and rank == 0 else checkpoint_dir]
    try:
        dist.broadcast_object_list(shared, src=0)
        run(rank, world, steps, optimizer, shared[0])
        dist.barrier()                   # nobody still reads the checkpoint
    finally:
        if created and rank == 0:
            shutil.rmtree(shared[0], ignore_errors=True)
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", choices=["fastopt", "torch"], default="fastopt")
    parser.add_argument("--checkpoint-dir", help="where to save (default: a temporary directory)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)             # two ranks on a laptop: one thread each
    if "RANK" in os.environ:             # started by torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args.steps, args.optimizer,
               args.checkpoint_dir)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    torch.multiprocessing.spawn(worker, args=(2, args.steps, args.optimizer, args.checkpoint_dir), nprocs=2)


if __name__ == "__main__":
    main()
