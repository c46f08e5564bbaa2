"""The three optimizers the flat-mode trainer tests (tests/torch/test_flat_trainers.py,
tests/torch/test_flat_lightning.py) train with, and what their workers record of a run.

The sides of every comparison:

* ``flat``: ``fastopt.torch.AdamW(..., flat=True)``;
* ``plain``: ``fastopt.torch.AdamW`` without the flat mode, the flat side's exact reference;
* ``torch``: ``torch.optim.AdamW(foreach=False)``.

``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim in fastopt's place on both fastopt sides, and
``FASTOPT_FLAT_CANDIDATE=plain`` runs fastopt.torch without the flat mode on the flat side: the
harness checked against itself (every exact comparison must then hold; the tests about the flat
mode's own behaviour skip).
"""
import contextlib
import os
import tempfile
import traceback
import warnings

from engine_candidate import CANDIDATE, optimizer_class
from flat_ddp_worker import FLAT_CANDIDATE, PER_TENSOR_WARNING

SIDES = ("flat", "plain", "torch")
#: Whether the flat side runs fastopt.torch's flat mode (not the harness against itself).
FLAT_SIDE_IS_FLAT = CANDIDATE == "fastopt" and FLAT_CANDIDATE == "flat"

__all__ = ["FLAT_SIDE_IS_FLAT", "PER_TENSOR_WARNING", "SIDES", "optimizer_of", "per_tensor_warnings",
           "recording_warnings", "require_gloo", "run_each_and_save", "runner_name", "state_by_name"]


def optimizer_of(side, hyperparameters):
    """``(class, arguments)`` of the AdamW of ``side`` with ``hyperparameters``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    cls, extra = optimizer_class("torch" if side == "torch" else "fastopt")
    if side == "flat" and FLAT_CANDIDATE == "flat" and cls.__module__.startswith("fastopt"):
        extra = dict(extra, flat=True)
    return cls, dict(hyperparameters, **extra)


def unwrapped(optimizer):
    """The optimizer itself, out of accelerate's AcceleratedOptimizer or Lightning's wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def runner_name(optimizer):
    """The type name of the fastopt.torch runner that did the last step: ``FlatRunner`` when it
    updated the flat buffers, ``Runner`` when it stepped per tensor; None for torch.optim."""
    runner = getattr(unwrapped(optimizer), "_runner", None)
    return None if runner is None else type(runner).__name__


def state_by_name(optimizer, module):
    """The optimizer's state by param name (``module``'s names), cloned, as ``state_dict()``
    gives it (torch's per-param layout, also for the flat mode)."""
    import torch
    optimizer = unwrapped(optimizer)
    names = {id(p): name for name, p in module.named_parameters()}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    return {names[id(order[index])]: {key: value.clone() if isinstance(value, torch.Tensor) else value
                                      for key, value in entry.items()}
            for index, entry in optimizer.state_dict()["state"].items()}


@contextlib.contextmanager
def recording_warnings():
    """``warnings.catch_warnings(record=True)`` that records every warning, also one given before
    in the process (``"always"``): the list of those given inside."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def per_tensor_warnings(caught):
    """The messages of the flat mode's "steps per tensor" warnings among ``caught``."""
    return [str(w.message) for w in caught
            if issubclass(w.category, RuntimeWarning) and str(w.message).startswith(PER_TENSOR_WARNING)]


def require_gloo(under_ci):
    """Skip when torch.distributed lacks the gloo backend; under CI fail instead: a CI run cannot
    go green without its two-rank comparisons."""
    import pytest
    import torch
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        message = "torch.distributed with the gloo backend is not available in this torch build"
        if under_ci:
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)


def run_each_and_save(rank, out_dir, runs):
    """One rank's part of a two-rank launch: ``runs`` maps a run's name to ``run(scratch_folder)``;
    each record (a run that raises is recorded as ``{"error": traceback}``; the others go on) is
    saved with the world size to ``OUT_DIR/rank<RANK>.pt``; then both ranks meet at a barrier
    before the process group is torn down (see ddp_worker.py)."""
    import torch
    import torch.distributed as dist
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, run in runs.items():
            try:
                results[name] = dict(run(os.path.join(scratch, name.replace("/", "-"))), error=None)
            except Exception:
                results[name] = dict(error=traceback.format_exc())
                traceback.print_exc()
    results["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def flat_side_only():
    """Skip a test about the flat mode's own behaviour when the harness runs against itself."""
    import pytest
    if not FLAT_SIDE_IS_FLAT:
        pytest.skip("the harness checked against itself: the flat side does not run the flat mode")


def assert_same_state(ours, reference, what):
    """Two ``{param name: state}`` records hold the same states, bit for bit."""
    import torch
    assert ours.keys() == reference.keys(), f"{what}: state kept for other params"
    for name, entry in ours.items():
        assert entry.keys() == reference[name].keys(), f"{what}: {name} keeps other state"
        for key, value in entry.items():
            assert torch.equal(value, reference[name][key]), f"{what}: state {key!r} of {name} differs"


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread inside: a tiny model's ops are too small to share, and on a busy machine
    two threads take several times as long (every side runs alike, so the comparisons hold)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
