"""DeepSpeed ZeRO-2 with the optimizer offloaded to the CPU: DeepSpeedCPUAdam, then fastopt.

ZeRO-Offload keeps the fp32 master weights and Adam's state on the CPU and runs the optimizer step
there, on the flat fp32 partition of each param group. DeepSpeed builds DeepSpeedCPUAdam for it
from the config's "optimizer" section. To run fastopt's AdamW there instead:

1. remove the "optimizer" section from the config;
2. add ``"zero_allow_untested_optimizer": true`` and ``"zero_force_ds_cpu_optimizer": false``
   (without the second, DeepSpeed refuses any client optimizer under offload);
3. pass ``optimizer=fastopt.torch.AdamW(model.parameters(), ...)`` to ``deepspeed.initialize``.

The script trains the same model (same initial weights, same batches) once each way and prints the
losses and the median time of the optimizer step alone (DeepSpeed's call of the CPU optimizer's
``step()``, after a few warm-up steps). It runs on a laptop's CPU as a single rank (gloo, world size
1; DeepSpeed on the CPU accelerator), with no launcher::

    python examples/deepspeed_zero2_offload.py
    python examples/deepspeed_zero2_offload.py --width 2048 --steps 30   # a bigger model
"""
import argparse
import os
import socket
import statistics
import time

# one rank, launched by hand: DeepSpeed reads these (set before it is imported)
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")   # DeepSpeedCPUAdam's OpenMP threads: one, as fastopt's
for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
    os.environ.setdefault(name, value)
if "MASTER_PORT" not in os.environ:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])

import deepspeed  # noqa: E402
import torch  # noqa: E402

import fastopt.torch  # noqa: E402

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


def main(width=1024, steps=20, warmup=5):
    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)     # one thread for both optimizers' steps
    fastopt.set_num_threads(1)
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="hidden width of the MLP")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    main(args.width, args.steps)
