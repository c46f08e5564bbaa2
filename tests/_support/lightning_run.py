"""A small model trained by Lightning's Trainer on CPU, for tests/torch/test_engine_lightning.py.

The test imports :func:`run` and trains in its own process; the same file is also one rank of the
two-process DDP run (``python lightning_run.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and
WORLD_SIZE set: tests/_support/two_ranks.py launches it), which trains once with
fastopt.torch.AdamW and once with torch.optim.AdamW and writes both results to
``OUT_DIR/rank<RANK>.pt``. The rank sets LOCAL_RANK and NODE_RANK, from which Lightning takes the
processes as launched and starts none (strategy="ddp" would otherwise launch its ranks by running
this process's command line again: under pytest, pytest itself). ``FASTOPT_ENGINE_CANDIDATE=torch``
runs torch.optim.AdamW in fastopt's place (the harness against itself).
"""
import os
import sys

import lightning
import torch

from engine_candidate import optimizer_class, run_each_kind_and_save

STEPS = 20
BATCHES_PER_EPOCH = 10        # the checkpoint at the end of epoch 0 is step 10
#: fastopt against torch.optim in float32 (as the parity tests of tests/torch/), per precision:
#: bf16-mixed still updates float32 params, but its forward rounds them to bfloat16, where the two
#: optimizers' last-bit differences sometimes round apart and give a gradient a bfloat16-sized
#: (0.4 %) difference; seen: 3e-5 on a param after 20 steps.
CLOSE = {"32-true": dict(rtol=1e-5, atol=1e-6), "bf16-mixed": dict(rtol=1e-4, atol=1e-4)}
BATCH = 8
WARMUP_STEPS = 3
OPTIMIZER_KWARGS = dict(lr=3e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)



def warmup_then_linear_decay(step):
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return max(0.0, (STEPS - step) / (STEPS - WARMUP_STEPS))


def step_batches(world_size):
    """``(x, y)``, indexed ``[step, rank]``: the batch of every step and rank.

    A step takes its batch by its global step, not from the data loader: resumed from its end-of-
    epoch checkpoint, Lightning (2.6) restarts epoch 0 at batch 10 with a fresh loader iterator,
    so the resumed run would see a batch the uninterrupted one did not. The loader only paces the
    epochs (and DDP still gives each rank its share of it).
    """
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, world_size, BATCH, 8, generator=generator)
    y = torch.sin(x[..., :4] * 2) + 0.1 * torch.randn(STEPS, world_size, BATCH, 4, generator=generator)
    return x, y


def pacing_loader(world_size):
    """BATCHES_PER_EPOCH batches per rank and epoch (see :func:`step_batches`)."""
    return torch.utils.data.DataLoader(torch.arange(BATCHES_PER_EPOCH * world_size), batch_size=1, shuffle=False)


class Regression(lightning.LightningModule):
    """An MLP with a LayerNorm; records its training loss at every step."""

    def __init__(self, kind, world_size=1):
        super().__init__()
        self.kind = kind
        self.x, self.y = step_batches(world_size)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 4))
        self.losses = []

    def training_step(self, batch, batch_index):
        x, y = self.x[self.global_step, self.global_rank], self.y[self.global_step, self.global_rank]
        loss = torch.nn.functional.mse_loss(self.net(x).float(), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        cls, extra = optimizer_class(self.kind)
        optimizer = cls(self.parameters(), **OPTIMIZER_KWARGS, **extra)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def run(kind, root_dir, *, precision="32-true", resume_from=None, **trainer_arguments):
    """Train; return ``{"losses": [this run's per-step losses], "params": {name: tensor}, "checkpoint": path}``.

    The checkpoint is the one written at the end of epoch 0 (step 10). ``resume_from`` is a
    checkpoint to resume from (``ckpt_path``): the run then does steps 11 to 20 only.
    """
    lightning.seed_everything(0, verbose=False)
    world_size = int(trainer_arguments.get("devices", 1))
    module = Regression(kind, world_size)
    trainer = make_trainer(root_dir, precision, **trainer_arguments)
    trainer.fit(module, pacing_loader(world_size), ckpt_path=None if resume_from is None else str(resume_from))
    assert type(trainer.optimizers[0]) is optimizer_class(kind)[0]
    assert trainer.global_step == STEPS
    return {"losses": module.losses, "global_step": trainer.global_step,
            "params": {name: p.detach().clone() for name, p in module.named_parameters()},
            "checkpoint": first_checkpoint(root_dir)}


def make_trainer(root_dir, precision, **trainer_arguments):
    """The Trainer of these runs: CPU, STEPS steps, clipping, deterministic, a checkpoint at the
    end of each epoch under ``root_dir/checkpoints``."""
    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=os.path.join(root_dir, "checkpoints"),
                                                              save_top_k=-1, every_n_epochs=1)
    return lightning.Trainer(
        accelerator="cpu", max_steps=STEPS, precision=precision, default_root_dir=str(root_dir),
        logger=False, callbacks=[checkpoints], enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=1.0, deterministic=True, num_sanity_val_steps=0, **trainer_arguments)


def first_checkpoint(root_dir):
    """The checkpoint :func:`make_trainer`'s Trainer wrote at the end of epoch 0 (step 10), or None."""
    first = os.path.join(root_dir, "checkpoints", f"epoch=0-step={BATCHES_PER_EPOCH}.ckpt")
    return first if os.path.exists(first) else None


def main(rank, out_dir):
    """One rank of the DDP run: both optimizers, each rank on its half of every epoch.

    Writes ``OUT_DIR/rank<RANK>.pt``: ``{kind: record}`` with :func:`run`'s record, or with
    ``error`` (the traceback) for a run that raised; a failing run does not stop the other.
    """
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")   # Lightning: processes launched outside
    torch.set_num_threads(1)
    run_each_kind_and_save(rank, out_dir, lambda kind, folder: run(kind, folder, strategy="ddp", devices=2))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
