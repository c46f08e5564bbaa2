"""Lightning's Trainer with fastopt.torch's flat mode, for tests/torch/test_flat_lightning.py.

The model, data, schedule and Trainer settings are tests/_support/lightning_run.py's (an MLP with
a LayerNorm, 20 steps, a per-step LR schedule, gradient clipping at 1.0, a checkpoint at the end
of epoch 0, step 10). :func:`run` trains it with one side of flat_sides.py (``flat``:
``fastopt.torch.AdamW(flat=True)`` returned by ``configure_optimizers``, ``plain``: without it,
``torch``: ``torch.optim.AdamW(foreach=False)``) and records what the tests compare. Lightning
calls the optimizer's own ``zero_grad()`` before each step: with the flat mode it zeroes the
gradient buffer and keeps every ``.grad`` its view.

The test imports :func:`run` for the single-process runs; the same file is also one rank of the
two-process DDP run (``python flat_lightning_run.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and
WORLD_SIZE set: tests/_support/two_ranks.py launches it; Lightning's strategy="ddp" takes the
processes as launched, see lightning_run.py), which trains every side in 32-true precision and
writes the records to ``OUT_DIR/rank<RANK>.pt``.
"""
import os
import sys
import time

import lightning
import torch

import lightning_run
from flat_sides import (SIDES, optimizer_of, per_tensor_warnings, recording_warnings, run_each_and_save,
                        runner_name, state_by_name)

STEPS = lightning_run.STEPS
PRECISIONS = ("32-true", "bf16-mixed")


class Regression(lightning_run.Regression):
    """lightning_run's module, whose ``configure_optimizers`` returns the AdamW of ``side``; it
    records which runner of the optimizer did each step."""

    def __init__(self, side, world_size=1):
        super().__init__(side, world_size)
        self.side = side
        self.runners = []

    def configure_optimizers(self):
        cls, kwargs = optimizer_of(self.side, lightning_run.OPTIMIZER_KWARGS)
        optimizer = cls(self.parameters(), **kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lightning_run.warmup_then_linear_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_end(self, outputs, batch, batch_index):
        self.runners.append(runner_name(self.trainer.optimizers[0]))     # (after the step)


def run(side, root_dir, *, precision="32-true", resume_from=None, **trainer_arguments):
    """Train with the AdamW of ``side``; return a record of the run.

    ``resume_from``: a checkpoint to resume from (``ckpt_path``); the run then does steps 11 to 20
    only. The record: ``losses``, ``runners`` (see flat_sides.runner_name): of each step this run
    did; ``params`` and ``state`` (final params and optimizer state by param name);
    ``warnings`` (the flat mode's "steps per tensor" warnings); ``checkpoint``: the one written at
    the end of epoch 0 (step 10), or None; ``seconds``: the wall time of ``trainer.fit()``.
    """
    lightning.seed_everything(0, verbose=False)
    world_size = int(trainer_arguments.get("devices", 1))
    module = Regression(side, world_size)
    trainer = lightning_run.make_trainer(root_dir, precision, **trainer_arguments)
    started = time.perf_counter()
    with recording_warnings() as caught:
        trainer.fit(module, lightning_run.pacing_loader(world_size),
                    ckpt_path=None if resume_from is None else str(resume_from))
    seconds = time.perf_counter() - started
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is optimizer_of(side, {})[0]
    assert trainer.global_step == STEPS
    return {"losses": module.losses, "runners": module.runners,
            "params": {name: p.detach().clone() for name, p in module.named_parameters()},
            "state": state_by_name(optimizer, module),
            "warnings": per_tensor_warnings(caught),
            "checkpoint": lightning_run.first_checkpoint(root_dir), "seconds": seconds}


def main(rank, out_dir):
    """One rank of the DDP run: every side, each rank on its half of every epoch (see
    flat_sides.run_each_and_save for what it writes)."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")   # Lightning: processes launched outside
    torch.set_num_threads(1)
    run_each_and_save(rank, out_dir, {side: (lambda folder, side=side: run(side, folder, strategy="ddp", devices=2))
                                      for side in SIDES})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
