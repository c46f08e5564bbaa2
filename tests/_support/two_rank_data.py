"""The data and the training step of the FSDP2 and ZeroRedundancyOptimizer workers: the same
seeded regression batches on every rank (each takes its slice), float64; and the checkpoints of
the DDP workers (a DDP-wrapped model and its optimizer, ZeroRedundancyOptimizer's consolidated)."""
import torch

STEPS = 10
WORLD = 2
PER_RANK = 8           # samples per rank per step


def batch(step, rank):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(WORLD * PER_RANK, 6, generator=g, dtype=torch.float64)
    y = torch.randn(WORLD * PER_RANK, 1, generator=g, dtype=torch.float64)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return x[mine], y[mine]


def train_step(model, opt, step, rank):
    """One step on this rank's slice (the engine averages the gradients over ranks: FSDP2
    reduce-scatters, DDP all-reduces); returns the global mean loss."""
    import torch.distributed as dist
    x, y = batch(step, rank)
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    total = loss.detach().clone()
    dist.all_reduce(total)                # gloo has no AVG: sum, then divide
    return total.item() / WORLD


def save_checkpoint(model, opt, path, rank):
    """Rank 0 saves the DDP-wrapped ``model``'s module and ``opt`` to ``path`` (a
    ZeroRedundancyOptimizer consolidates its state first: a collective); every rank returns once
    the file exists."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    if isinstance(opt, ZeroRedundancyOptimizer):
        opt.consolidate_state_dict(to=0)  # collective: every rank sends its partition's state
    try:
        if rank == 0:
            torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, path)
    finally:
        dist.barrier()                    # the file exists before any rank may load it


def load_checkpoint(model, opt, path):
    """Load what :func:`save_checkpoint` saved into the DDP-wrapped ``model`` and ``opt``."""
    checkpoint = torch.load(path, weights_only=True)
    model.module.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optim"])
