"""
DeepSpeed ZeRO-2 with the optimizer offloaded to the CPU: DeepSpeedCPUAdam, then fastopt
=========================================================================================

ZeRO-Offload keeps the fp32 master weights and Adam's state on the CPU and runs the optimizer step
there, on the flat fp32 partition of each param group. DeepSpeed builds DeepSpeedCPUAdam for it
from the config's "optimizer" section. To run fastopt's AdamW there instead:

1. remove the "optimizer" section from the config;
2. add ``"zero_allow_untested_optimizer": true`` and ``"zero_force_ds_cpu_optimizer": false``
   (without the second, DeepSpeed refuses any client optimizer under offload);
3. pass ``optimizer=fastopt.torch.AdamW(model.parameters(), ...)`` to ``deepspeed.initialize``.

The script trains the same model (same initial weights, same batches) once each way, in lockstep,
and prints the losses and the median time of the optimizer step alone (DeepSpeed's call of the CPU
optimizer's ``step()``, after 5 warm-up steps). In our runs the losses agreed to the printed 4
decimals (DeepSpeedCPUAdam's fused multiply-adds keep it a few ulps away per step); the times are
the machine's of the run, printed, not promised. It runs on a laptop's CPU as a single rank (gloo, world size 1;
DeepSpeed on the CPU accelerator), with no launcher::

    python examples/deepspeed_zero2_offload.py
    python examples/deepspeed_zero2_offload.py --width 2048 --steps 30   # a bigger model
"""
import argparse
import os
import socket
import statistics
import time

# %%
# One rank, without a launcher
# ----------------------------
# DeepSpeed reads these variables (set before it is imported). ``main`` removes the ones set here
# when it is done, so that a program running this script in its own process (as sphinx-gallery
# does) is left as it was.

_SET_HERE = []
for name, value in (("DS_ACCELERATOR", "cpu"),
                    ("OMP_NUM_THREADS", "1"),    # DeepSpeedCPUAdam's OpenMP threads: one, as fastopt's
                    ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                    ("MASTER_ADDR", "127.0.0.1")):
    if name not in os.environ:
        os.environ[name] = value
        _SET_HERE.append(name)
if "MASTER_PORT" not in os.environ:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    _SET_HERE.append("MASTER_PORT")

import deepspeed  # noqa: E402
import torch  # noqa: E402

import fastopt.torch  # noqa: E402

# %%
# The two configs
# ---------------

LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.01

ZERO2_OFFLOAD = {
    "train_micro_batch_size_per_gpu": 32,
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    "steps_per_print": 10**9,
}

# Before: DeepSpeed builds DeepSpeedCPUAdam from the "optimizer" section.
CPU_ADAM_CONFIG = {
    **ZERO2_OFFLOAD,
    "optimizer": {"type": "AdamW",
                  "params": {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY}},
}

# After: no "optimizer" section; the client optimizer is allowed under ZeRO-Offload.
FASTOPT_CONFIG = {
    **ZERO2_OFFLOAD,
    "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
}


# %%
# The model, the timing and the data
# ----------------------------------


def make_model(width, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.GELU(),
        torch.nn.Linear(width, width), torch.nn.GELU(),
        torch.nn.Linear(width, 10))


def timed_step(optimizer, times):
    """Wrap ``optimizer.step`` to append each call's seconds to ``times``."""
    step = optimizer.step

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = step(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out
    optimizer.step = wrapper


def batches(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(64, 10, generator=g)
    for _ in range(steps):
        x = torch.randn(32, 64, generator=g)
        yield x, (x @ teacher).argmax(1)


# %%
# Train both ways, in lockstep
# ----------------------------


def main(width=1024, steps=20, warmup=5):
    """Train both ways; returns ``{name: {"losses", "step_ms"}}`` (``step_ms``: every optimizer
    step's time, warm-up steps included). Leaves the process as it found it: the process group
    destroyed, the thread counts and the environment restored."""
    threads = torch.get_num_threads(), fastopt.get_num_threads()
    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)     # one thread for both optimizers' steps
    fastopt.set_num_threads(1)
    try:
        return _train_both(width, steps, warmup)
    finally:
        torch.distributed.destroy_process_group()
        torch.set_num_threads(threads[0])
        fastopt.set_num_threads(threads[1])
        for name in _SET_HERE:
            os.environ.pop(name, None)


def _train_both(width, steps, warmup):
    runs = {}

    # Before: DeepSpeedCPUAdam, built by DeepSpeed from the config's "optimizer" section.
    model = make_model(width)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=CPU_ADAM_CONFIG)
    runs[type(engine.basic_optimizer).__name__] = engine, engine.basic_optimizer

    # After: fastopt.torch.AdamW as the client optimizer.
    model = make_model(width)
    opt = fastopt.torch.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=FASTOPT_CONFIG)
    runs["fastopt.torch.AdamW"] = engine, opt

    losses, times = {name: [] for name in runs}, {name: [] for name in runs}
    for name, (_, opt) in runs.items():
        timed_step(opt, times[name])
    for x, y in batches(steps):      # in lockstep: both see the same batch and machine load
        for name, (engine, _) in runs.items():
            loss = torch.nn.functional.cross_entropy(engine(x), y)
            engine.backward(loss)
            engine.step()
            losses[name].append(loss.item())

    n = sum(p.numel() for p in model.parameters())
    print(f"ZeRO-2, optimizer offloaded to the CPU, 1 rank: {n:,} parameters, {steps} steps")
    for name in runs:
        shown = " ".join(f"{v:.4f}" for v in losses[name][::5])
        step = statistics.median(times[name][warmup:]) * 1e3
        print(f"{name:>20}: optimizer step {step:7.2f} ms (median); losses every 5 steps {shown}")
    print(f"(optimizer step: the median of steps {warmup + 1} to {steps}, after {warmup} warm-up steps)")
    return {name: {"losses": losses[name], "step_ms": [t * 1e3 for t in times[name]]} for name in runs}


# %%
# Run
# ---

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="DeepSpeed ZeRO-2 with the optimizer offloaded to the CPU: DeepSpeedCPUAdam, then fastopt.")
    parser.add_argument("--width", type=int, default=1024, help="hidden width of the MLP")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-plot", action="store_true", help="do not draw the losses and step times")
    args = parser.parse_args()
    results = main(args.width, args.steps)

# %%
# Losses and step times
# ---------------------
# Left: both runs' losses, step by step. Right: each optimizer step's time (the first 5 are the
# warm-up, left out of the printed median).

if __name__ == "__main__" and not args.no_plot:
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, (ax_loss, ax_time) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    for (name, r), style in zip(results.items(), ["-", "o"]):
        steps = range(1, len(r["losses"]) + 1)
        ax_loss.plot(steps, r["losses"], style, fillstyle="none", label=name)
        ax_time.plot(steps, r["step_ms"], style, fillstyle="none", label=name)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="ZeRO-2 with CPU offload, 1 rank")
    ax_time.axvspan(0.5, 5.5, color="0.9", label="warm-up")
    ax_time.set(xlabel="step", ylabel="optimizer step (ms)", yscale="log")
    ax_time.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_time.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_loss.legend()
    ax_time.legend()
    plt.show()
