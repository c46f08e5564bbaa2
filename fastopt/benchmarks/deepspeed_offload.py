"""DeepSpeed ZeRO-2 with the optimizer offloaded to the CPU: the optimizer step of
fastopt.torch.AdamW against DeepSpeedCPUAdam, on the same number of threads (one by default;
the bench's thread counts under ``fastopt bench --deepspeed``).

Both run as the client optimizer of a real DeepSpeed engine (ZeRO stage 2, ``offload_optimizer``
on the CPU, fp32, one rank: gloo with world size 1, DeepSpeed's CPU accelerator), so each is handed
what ZeRO hands it: one flat fp32 partition per param group, its gradient in ``.grad``. Only that
``optimizer.step()`` call is timed (the engine's forward, backward, gradient copies and the copy of
the updated partition back to the model are not), the two engines taking turns round-robin
(:func:`fastopt.benchmarks.timing.measure`), so a machine that gets busier slows both alike. Cases:
one tensor of 1e6 and of 1e7 elements, and 200 small tensors (the partition is still one flat
tensor: what changes is what the engine and the adapter see around it).

    fastopt bench --deepspeed ...                          # the "deepspeed" table of the bench
    python -m fastopt.benchmarks.deepspeed_offload         # this table alone
    python -m fastopt.benchmarks.deepspeed_offload --quick # the 1e6 and 200-tensor cases only

DeepSpeed is optional: :func:`available` says whether it is installed without importing it (its
import takes seconds, and its CPUAdam op is compiled on first use, a minute or two on a cold
machine). :func:`measure_offload_step` returns the results as a dict.
"""
import contextlib
import gc
import importlib.util
import logging
import os
import socket
import sys
import time

from .timing import Contender, measure, noise
from .training import ADAPTER_CASES

#: (label, shapes of the model's params): the flat partition DeepSpeed hands the optimizer holds
#: their elements.
CASES = (
    ("1 x 1e6", ((1_000_000,),)),
    ("1 x 1e7", ((10_000_000,),)),
    ("200 tensors", dict(ADAPTER_CASES)["200 tensors"]),
)
#: Short names of the cases on the command line (``--deepspeed-cases 1e6,200``).
SHORT_NAMES = {"1e6": "1 x 1e6", "1e7": "1 x 1e7", "200": "200 tensors"}
QUICK = ("1 x 1e6", "200 tensors")
#: The table's columns: the optimizers' names in the rows (and in targets), and what each is.
COLUMNS = {"DeepSpeedCPUAdam": "deepspeed.ops.adam.DeepSpeedCPUAdam(adamw_mode=True)",
           "fastopt": "fastopt.torch.AdamW"}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
CONFIG = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,     # fastopt in DeepSpeedCPUAdam's place
    "steps_per_print": 10**9,
}
#: The timing of one case: seconds of round-robin budget, rounds at least / at most.
TIMING = dict(budget=1.5, min_reps=5, max_reps=50)


def _init_single_rank():
    """DeepSpeed on the CPU, one gloo rank (the environment a launcher would set, unless set)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    import deepspeed
    import torch.distributed as dist
    if not dist.is_initialized():
        # DeepSpeed's shared-memory all-reduce serves inference only; not loading it spares its JIT build
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")
    return deepspeed


def _model(torch, shapes, seed=0):
    """A module holding params of ``shapes``; its loss 0.5 * sum(p**2) is a cheap backward."""
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterList(torch.nn.Parameter(0.1 * torch.randn(s, generator=g)) for s in shapes)

    class Params(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = params

        def forward(self):
            return 0.5 * sum(p.square().sum() for p in self.params)
    return Params()


def _partitions(engine):
    """The flat fp32 partitions ZeRO hands its client optimizer (one per param group)."""
    return [p.detach().clone() for p in engine.optimizer.single_partition_of_fp32_groups]


def _check_first_steps(torch, built):
    """One step of each engine from the same weights and gradients must move the partitions, the
    same way for every contender: a step that does nothing is not timed (it would look fast)."""
    before = [_partitions(engine) for _, engine in built]
    for contender, _ in built:
        contender.run(1)
    after = [_partitions(engine) for _, engine in built]
    for (contender, _), old, new in zip(built, before, after):
        if any(torch.equal(a, b) for a, b in zip(old, new)):
            raise RuntimeError(f"{COLUMNS[contender.name]}: an optimizer step left a partition unchanged")
        for a, b in zip(new, after[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: (
                f"{COLUMNS[contender.name]} and {COLUMNS[built[0][0].name]} disagree after one "
                f"step:\n{m}"))


def _contender(deepspeed, torch, name, make_optimizer, shapes):
    """A Contender whose ``run(k)`` does k engine steps and returns the seconds spent in the
    client optimizer's ``step()`` alone."""
    model = _model(torch, shapes)
    optimizer = make_optimizer(model.parameters())
    from deepspeed.utils import logger
    level = logger.level
    # its "untested optimizer" warning is what "zero_allow_untested_optimizer" asks for: not news
    logger.setLevel(max(level, logging.ERROR))
    try:
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=CONFIG)
    finally:
        logger.setLevel(level)
    spent = []
    step = optimizer.step

    def timed_step(*args, **kwargs):
        t0 = time.perf_counter()
        out = step(*args, **kwargs)
        spent.append(time.perf_counter() - t0)
        return out
    optimizer.step = timed_step      # what ZeRO calls: self.optimizer.step()

    def run(k):
        spent.clear()
        for _ in range(k):
            engine.backward(engine())
            engine.step()
        if len(spent) != k:
            raise RuntimeError(f"{name}: the engine called optimizer.step() {len(spent)} times in {k} steps")
        return sum(spent)
    return Contender(name, timed=run), engine


@contextlib.contextmanager
def _threads(torch, count):
    """``count`` threads for both: fastopt's pool, and torch's and DeepSpeedCPUAdam's OpenMP loop
    (DeepSpeed's offload runs it on every core by default)."""
    import fastopt
    before = (torch.get_num_threads(), fastopt.get_num_threads())
    torch.set_num_threads(count)
    fastopt.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=count, user_api="openmp")   # DeepSpeedCPUAdam's loop
    except ImportError:
        limits = contextlib.nullcontext()
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(before[0])
        fastopt.set_num_threads(before[1])


def available():
    """Whether DeepSpeed is installed (found without importing it: its import takes seconds)."""
    try:
        return importlib.util.find_spec("deepspeed") is not None
    except (ImportError, ValueError):      # a broken or half-removed install
        return False


def select_cases(text, option="--deepspeed-cases"):
    """The case labels named in ``text``, comma-separated short names (``1e6``, ``1e7``, ``200``)
    or labels; ValueError naming ``option`` and the unknown ones."""
    labels = dict(SHORT_NAMES, **{label: label for label, _ in CASES})
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in labels]
    if unknown or not names:
        raise ValueError(f"{option}: unknown case(s) {unknown}; choose from "
                         f"{', '.join(SHORT_NAMES)} (or {', '.join(repr(c) for c, _ in CASES)})")
    return tuple(dict.fromkeys(labels[name] for name in names))


def measure_offload_step(cases=None, timing=None, log=print, threads=(1,)):
    """Time the optimizer step of fastopt.torch.AdamW and DeepSpeedCPUAdam under ZeRO-2 offload.

    Parameters
    ----------
    cases : sequence of str, optional
        Labels of :data:`CASES` to run (all by default).
    timing : dict, optional
        :func:`fastopt.benchmarks.timing.measure`'s budget, min_reps, max_reps and repeats
        (:data:`TIMING` by default).
    log : callable or None
        Called with one line per case.
    threads : sequence of int
        The thread counts to measure each case at (the same for both contenders).

    Returns
    -------
    dict
        ``{"threads": threads, "deepspeed": version, "rows": [row, ...]}``, a row being ``{"size":
        case label, "n", "tensors", "threads", "rounds", "ms_per_step": {column: median ms},
        "ratio": DeepSpeedCPUAdam ms / fastopt ms, "noise"}``, the columns those of
        :data:`COLUMNS`.
    """
    import torch

    import fastopt.torch
    deepspeed = _init_single_rank()
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    contenders = {
        "fastopt": lambda params: fastopt.torch.AdamW(params, **ADAMW),
        "DeepSpeedCPUAdam": lambda params: DeepSpeedCPUAdam(params, adamw_mode=True, **ADAMW),
    }
    selected = [c for c in CASES if cases is None or c[0] in cases]
    rows = []
    for count in threads:
        with _threads(torch, count):
            for label, shapes in selected:
                built = [_contender(deepspeed, torch, name, make, shapes) for name, make in contenders.items()]
                _check_first_steps(torch, built)
                stats, rounds = measure([c for c, _ in built], **dict(TIMING, **(timing or {})))
                for _, engine in built:
                    engine.destroy()
                del built
                gc.collect()
                ms = {name: s["median"] * 1e3 for name, s in stats.items()}
                n = sum(torch.Size(s).numel() for s in shapes)
                row = dict(size=label, n=n, tensors=len(shapes), threads=count, rounds=rounds, ms_per_step=ms,
                           ratio=ms["DeepSpeedCPUAdam"] / ms["fastopt"], noise=noise(stats))
                rows.append(row)
                if log is not None:
                    log(f"deepspeed {label:>12} ({n:,} elements), {count} thr: fastopt {ms['fastopt']:.3f} ms, "
                        f"DeepSpeedCPUAdam {ms['DeepSpeedCPUAdam']:.3f} ms, ratio {row['ratio']:.2f} "
                        f"({rounds} rounds, noise {row['noise']:.0%})")
    return {"threads": list(threads), "deepspeed": deepspeed.__version__, "rows": rows}


#: What the table's numbers are, printed above it.
EXPLANATION = ("DeepSpeed ZeRO-2, optimizer offloaded to the CPU (1 rank, fp32): ms per "
               "optimizer.step() of the engine's client optimizer (median of round-robin rounds);\n"
               "ratio = DeepSpeedCPUAdam / fastopt.torch.AdamW, > 1: fastopt is faster")


def main(argv=None):
    """``python -m fastopt.benchmarks.deepspeed_offload [--quick] [--cases 1e6,200]``."""
    import argparse

    from .report import format_deepspeed
    parser = argparse.ArgumentParser(prog="python -m fastopt.benchmarks.deepspeed_offload",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    parser.add_argument("--cases", default=None, help=f"comma-separated, from {', '.join(SHORT_NAMES)}")
    args = parser.parse_args(argv)
    try:
        cases = select_cases(args.cases, "--cases") if args.cases else (QUICK if args.quick else None)
    except ValueError as exc:
        parser.error(str(exc))
    if not available():
        print("deepspeed: not installed (`python -m pip install deepspeed` adds it)")
        return 1
    result = measure_offload_step(cases, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(EXPLANATION)
    print(format_deepspeed(result["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
