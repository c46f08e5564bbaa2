"""A tiny Llama trained by Hugging Face's Trainer on CPU, for tests/torch/test_engine_hf_trainer.py.

The test imports :func:`run` and trains in its own process; the same file is also one rank of the
two-process DDP run (``python hf_trainer_run.py RANK OUT_DIR`` with MASTER_ADDR, MASTER_PORT and
WORLD_SIZE set: tests/_support/two_ranks.py launches it), which trains once with
fastopt.torch.AdamW and once with torch.optim.AdamW and writes both results to
``OUT_DIR/rank<RANK>.pt``. ``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim.AdamW in fastopt's
place (the harness against itself), in the test's process and in the ranks.

The model is built from a config (no download, no tokenizer: the data are random token ids) and
has no dropout (Llama's default), so two runs differ only by their optimizer.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")           # nothing here may reach the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from engine_candidate import optimizer_class, run_each_kind_and_save  # noqa: E402

STEPS = 20
CHECKPOINT_STEP = 10
WARMUP_STEPS = 3
VOCAB = 64
SEQUENCE = 16
SAMPLES = 64             # 16 batches of 4: the 20 steps cross an epoch boundary, the checkpoint is mid-epoch
BATCH = 4
#: The optimizer's hyperparameters (the Trainer's weight decay when it builds the optimizer).
OPTIMIZER_KWARGS = dict(lr=3e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)



def optimizer_of(kind):
    """The class of side ``kind`` and its arguments (see engine_candidate.py)."""
    cls, extra = optimizer_class(kind)
    return cls, dict(OPTIMIZER_KWARGS, **extra)


def make_model(seed=0):
    # Llama rather than GPT-2: GPT-2's attention key bias gets only rounding noise for a gradient
    # (softmax ignores a shift shared by all keys), which Adam scales up to lr-sized steps that
    # follow the noise, not the optimizer.
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQUENCE,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=None)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


class RandomTokens(torch.utils.data.Dataset):
    """Fixed random token sequences; each is its own language-modelling label."""

    def __init__(self, seed=1):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (SAMPLES, SEQUENCE), generator=generator)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def training_arguments(output_dir, save, batch=BATCH, **overrides):
    return transformers.TrainingArguments(
        output_dir=str(output_dir), use_cpu=True, report_to=[], seed=0, max_steps=STEPS,
        per_device_train_batch_size=batch, dataloader_num_workers=0, logging_steps=1,
        learning_rate=OPTIMIZER_KWARGS["lr"], weight_decay=OPTIMIZER_KWARGS["weight_decay"],
        lr_scheduler_type="linear", warmup_steps=WARMUP_STEPS, disable_tqdm=True,
        save_strategy="steps" if save else "no", save_steps=CHECKPOINT_STEP, **overrides)


def run(kind, output_dir, *, via="optimizers", resume_from=None, save=True, batch=BATCH, **arguments):
    """Train with the Trainer; return ``{"losses": [per-step logged loss], "params": {name: tensor}}``.

    via="optimizers" hands the Trainer ``optimizers=(optimizer, scheduler)`` built here over all of
    the model's parameters; via="cls_and_kwargs" hands it ``optimizer_cls_and_kwargs`` and lets it
    build the optimizer (two param groups: with and without weight decay) and its linear schedule.
    ``resume_from`` is a checkpoint folder to resume from. ``arguments`` go to TrainingArguments.
    """
    model = make_model()
    cls, kwargs = optimizer_of(kind)
    extra = {}
    if via == "optimizers":
        optimizer = cls(model.parameters(), **kwargs)
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, WARMUP_STEPS, STEPS)
        extra["optimizers"] = (optimizer, scheduler)
    elif via == "cls_and_kwargs":
        extra["optimizer_cls_and_kwargs"] = (cls, kwargs)
    else:
        raise ValueError(f"via must be 'optimizers' or 'cls_and_kwargs', got {via!r}")
    trainer = transformers.Trainer(model=model, args=training_arguments(output_dir, save, batch, **arguments),
                                   train_dataset=RandomTokens(), **extra)
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    assert type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer) is cls
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"losses": losses, "params": params, "global_step": trainer.state.global_step}


def main(rank, out_dir):
    """One rank of the DDP run: both optimizers, each over its half of every global batch.

    Writes ``OUT_DIR/rank<RANK>.pt``: ``{kind: record}`` with :func:`run`'s record, or with
    ``error`` (the traceback) for a run that raised; a failing run does not stop the other.
    """
    os.environ["LOCAL_RANK"] = str(rank)        # accelerate reads the rank from here
    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    run_each_kind_and_save(rank, out_dir, lambda kind, folder: run(kind, folder, save=False, batch=BATCH // 2,
                                                                    ddp_backend="gloo"))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
