"""Hugging Face's Trainer with fastopt.torch's flat mode, for tests/torch/test_flat_trainers.py.

The tiny Llama, its data and its TrainingArguments are tests/_support/hf_trainer_run.py's (CPU,
20 steps crossing an epoch boundary, a checkpoint every 10 steps, linear schedule with warmup,
the Trainer's default gradient clipping at 1.0). :func:`run` trains it with one side of
flat_sides.py (``flat``: ``fastopt.torch.AdamW(flat=True)``, ``plain``: without it, ``torch``:
``torch.optim.AdamW(foreach=False)``), handed over as ``optimizers=(optimizer, scheduler)`` or
``optimizer_cls_and_kwargs``, and records what the tests compare.

The Trainer calls ``model.zero_grad()`` after every step, which sets every ``.grad`` to None: each
backward then makes new gradient tensors, which the flat mode copies into its gradient buffer
before it updates each buffer with one call; a step where a ``.grad`` is still None (a param the
forward does not use) goes per tensor instead.

The test imports :func:`run` for the single-process runs; the same file is also one rank of the
two-process DDP run (``python flat_trainer_run.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and
WORLD_SIZE set: tests/_support/two_ranks.py launches it; accelerate wraps the model in DDP over
gloo), which does the runs of :data:`DDP_RUNS`, each rank on half of every batch, and writes them
to ``OUT_DIR/rank<RANK>.pt``.
"""
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")           # nothing here may reach the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_trainer_run  # noqa: E402
from flat_sides import (optimizer_of, per_tensor_warnings, recording_warnings,  # noqa: E402
                        run_each_and_save, runner_name, state_by_name)

STEPS = hf_trainer_run.STEPS
CHECKPOINT_STEP = hf_trainer_run.CHECKPOINT_STEP
VIAS = ("optimizers", "cls_and_kwargs")
#: The param the "unused-param" model has and its forward never uses.
UNUSED = "unused"
#: The runs of each rank of the DDP launch: name -> (side, via).
DDP_RUNS = {f"{side}/{via}": (side, via) for via in VIAS for side in ("flat", "plain")}
DDP_RUNS["torch/optimizers"] = ("torch", "optimizers")


def make_model(model="untied"):
    """hf_trainer_run's tiny Llama (``"untied"``: its own, the embeddings and the LM head apart),
    or with ``"tied"`` embeddings (the LM head's weight is the embedding's Parameter), or
    ``"unused-param"``: with one more param, :data:`UNUSED`, that takes no part in the forward
    (so backward leaves its ``.grad`` as it is: None after the Trainer's ``model.zero_grad()``)."""
    built = hf_trainer_run.make_model()
    if model == "untied":
        return built
    if model == "tied":
        config = built.config
        config.tie_word_embeddings = True
        torch.manual_seed(0)
        built = transformers.LlamaForCausalLM(config)
        assert built.lm_head.weight is built.model.embed_tokens.weight
        return built
    if model == "unused-param":
        built.register_parameter(UNUSED, torch.nn.Parameter(torch.ones(8)))
        return built
    raise ValueError(f"model must be 'untied', 'tied' or 'unused-param', got {model!r}")


class StepRecorder(transformers.TrainerCallback):
    """Records, after each optimizer step, which runner of the optimizer did it."""

    def __init__(self):
        self.runners = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.runners.append(runner_name(optimizer))


def run(side, output_dir, *, via="optimizers", model="untied", resume_from=None, save=False,
        batch=hf_trainer_run.BATCH, **arguments):
    """Train with the Trainer and the AdamW of ``side``; return a record of the run.

    via="optimizers" hands the Trainer ``optimizers=(optimizer, scheduler)`` built here over all of
    the model's parameters (one param group, so one flat buffer); via="cls_and_kwargs" hands it
    ``optimizer_cls_and_kwargs`` and lets it build the optimizer (two param groups, with and
    without weight decay: two flat buffers) and its linear schedule. ``model``: see
    :func:`make_model`. ``resume_from`` is a checkpoint folder to resume from; ``save`` writes a
    checkpoint every 10 steps. ``arguments`` go to TrainingArguments.

    The record: ``losses`` (the logged loss of every step, those of a resumed run's first half
    from its checkpoint), ``params`` and ``state`` (final params and optimizer state by param
    name), ``runners`` (the runner of each step this run did: see flat_sides.runner_name),
    ``warnings`` (the flat mode's "steps per tensor" warnings), ``global_step``, ``tied``
    (whether the LM head's weight is still the embedding's Parameter), ``seconds`` (the wall time
    of ``trainer.train()``).
    """
    model = make_model(model)
    cls, kwargs = optimizer_of(side, hf_trainer_run.OPTIMIZER_KWARGS)
    extra = {}
    if via == "optimizers":
        optimizer = cls(model.parameters(), **kwargs)
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, hf_trainer_run.WARMUP_STEPS, STEPS)
        extra["optimizers"] = (optimizer, scheduler)
    elif via == "cls_and_kwargs":
        extra["optimizer_cls_and_kwargs"] = (cls, kwargs)
    else:
        raise ValueError(f"via must be one of {VIAS}, got {via!r}")
    recorder = StepRecorder()
    trainer = transformers.Trainer(
        model=model, args=hf_trainer_run.training_arguments(output_dir, save, batch, **arguments),
        train_dataset=hf_trainer_run.RandomTokens(), callbacks=[recorder], **extra)
    started = time.perf_counter()
    with recording_warnings() as caught:
        trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    seconds = time.perf_counter() - started
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)   # out of accelerate's wrapper
    assert type(optimizer) is cls
    return {"losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
            "params": {name: p.detach().clone() for name, p in model.named_parameters()},
            "state": state_by_name(optimizer, model),
            "runners": recorder.runners,
            "warnings": per_tensor_warnings(caught),
            "global_step": trainer.state.global_step,
            "tied": model.lm_head.weight is model.model.embed_tokens.weight,
            "seconds": seconds}


def main(rank, out_dir):
    """One rank of the DDP run: the runs of :data:`DDP_RUNS`, each over its half of every global
    batch (see flat_sides.run_each_and_save for what it writes)."""
    os.environ["LOCAL_RANK"] = str(rank)        # accelerate reads the rank from here
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    runs = {name: (lambda folder, side=side, via=via: run(side, folder, via=via, batch=hf_trainer_run.BATCH // 2,
                                                           ddp_backend="gloo"))
            for name, (side, via) in DDP_RUNS.items()}
    run_each_and_save(rank, out_dir, runs)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
