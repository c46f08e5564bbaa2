"""One rank of the two-process DDP test in test_torch_adapter.py (also its single-process reference).

Run as ``python ddp_worker.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and WORLD_SIZE set (as
tests/_support/two_ranks.py launches it); it trains with fastopt.torch.Adam under
DistributedDataParallel (gloo) on its half of the data and saves the final params to
``OUT_DIR/rank<RANK>.pt``.
"""
import sys

import torch

STEPS = 8
WORLD = 2
PER_RANK = 16          # samples per rank per step; the single process uses WORLD * PER_RANK


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(STEPS, WORLD * PER_RANK, 4, generator=g, dtype=torch.float64)
    y = torch.randn(STEPS, WORLD * PER_RANK, 1, generator=g, dtype=torch.float64)
    return x, y


def initial_params():
    return [p.detach().clone() for p in make_model().parameters()]


def train(model, params, rank=None):
    import fastopt.torch
    opt = fastopt.torch.Adam(params, lr=0.05)
    x, y = data()
    for t in range(STEPS):
        xb, yb = x[t], y[t]
        if rank is not None:                        # this rank's slice of the batch
            xb, yb = xb[rank * PER_RANK:(rank + 1) * PER_RANK], yb[rank * PER_RANK:(rank + 1) * PER_RANK]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()   # DDP averages grads over ranks
        opt.step()


def single_process():
    model = make_model()
    train(model, model.parameters())
    return [p.detach().clone() for p in model.parameters()]


def main(rank, out_dir):
    import os
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = DDP(make_model())
        train(model, model.parameters(), rank)
        torch.save([p.detach().clone() for p in model.module.parameters()],
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks reach here before either tears its group down: a rank that destroys its gloo
        # group while the other still talks to it can abort the other ("terminate called without
        # an active exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
