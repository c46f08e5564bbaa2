"""
A tiny GPT-2 trained by Hugging Face's Trainer with fastopt.torch.AdamW
=======================================================================

The model is built from a config (nothing is downloaded, no tokenizer: the "text" is made-up
token sequences that count up by a step of their own, so the next token is predictable after two
of them). The Trainer builds the optimizer itself from ``optimizer_cls_and_kwargs`` (its usual two
param groups: weight decay off for biases and LayerNorm weights) with its own warmup-and-decay
schedule; the script prints the loss as it goes and, at the end, the optimizer the Trainer used::

    python examples/hf_trainer.py                  # 300 steps
    python examples/hf_trainer.py --steps 60

On a laptop's CPU the 300 steps take about a minute.
"""
import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # the model comes from a config, not the Hub

import torch  # noqa: E402
import transformers  # noqa: E402

import fastopt.torch  # noqa: E402

VOCAB = 32
SEQUENCE = 24

# %%
# The data
# --------


class CountingSequences(torch.utils.data.Dataset):
    """Token sequences ``start, start + step, start + 2 step, ...`` (mod VOCAB), ``step`` in 1..3."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        self.tokens = (start + step * torch.arange(SEQUENCE)) % VOCAB

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}   # the model shifts the labels


# %%
# The training
# ------------
# ``optimizer_cls_and_kwargs`` hands the Trainer fastopt's class; the Trainer makes its param
# groups and its schedule around it as it would for ``torch.optim.AdamW``.


class PrintLoss(transformers.TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            print(f"step {state.global_step:4d}   loss {logs['loss']:.4f}   lr {logs['learning_rate']:.2e}")


def main(steps=300, output_dir=None, log_every=20, seed=0):
    """Train and return the Trainer's log history (a list of dicts, as the Trainer keeps it).

    ``output_dir``: the Trainer's output directory (nothing is saved in it); by default a
    temporary one, removed at the end, so that a run leaves no folder behind.
    """
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="hf_trainer_output-") as output_dir:
            return main(steps, output_dir, log_every, seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQUENCE, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=output_dir, use_cpu=True, report_to=[], seed=seed, max_steps=steps,
        per_device_train_batch_size=32, learning_rate=3e-3, weight_decay=0.01, warmup_steps=steps // 10,
        lr_scheduler_type="cosine", logging_steps=log_every, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=CountingSequences(4096, seed),
        # the Trainer passes these kwargs as they are (the lr too) and each group's weight decay
        optimizer_cls_and_kwargs=(fastopt.torch.AdamW, {"lr": args.learning_rate, "betas": (0.9, 0.98)}),
        callbacks=[PrintLoss()])
    trainer.remove_callback(transformers.PrinterCallback)     # PrintLoss prints instead
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)   # inside accelerate's wrapper
    print(f"optimizer: {type(optimizer).__module__}.{type(optimizer).__name__}")
    return trainer.state.log_history


# %%
# Train
# -----

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="A tiny GPT-2 trained by Hugging Face's Trainer with fastopt.torch.AdamW.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output-dir", help="the Trainer's output directory (nothing is saved in it; "
                        "default: a temporary directory)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the loss curve")
    args = parser.parse_args()
    history = main(steps=args.steps, output_dir=args.output_dir)

# %%
# The loss and the learning rate
# ------------------------------
# The loss as the Trainer logged it, and the learning rate of its warmup-and-cosine schedule.

if __name__ == "__main__" and not args.no_plot:
    import matplotlib.pyplot as plt
    logged = [entry for entry in history if "loss" in entry]
    fig, ax_loss = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax_loss.plot([e["step"] for e in logged], [e["loss"] for e in logged], marker=".")
    ax_loss.set(xlabel="step", ylabel="training loss", title="GPT-2 (2 layers) with fastopt.torch.AdamW")
    ax_lr = ax_loss.twinx()
    ax_lr.plot([e["step"] for e in logged], [e["learning_rate"] for e in logged], color="gray",
               linestyle=":")
    ax_lr.set_ylabel("learning rate", color="gray")
    plt.show()
