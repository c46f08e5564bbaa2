"""Which optimizer the engine tests' workers run as "fastopt".

``FASTOPT_ENGINE_CANDIDATE=torch`` makes the workers run ``torch.optim``'s class where they would
run fastopt's, which proves a harness with the reference on both sides (every comparison must then
hold exactly); the default, ``fastopt``, is what the tests are for.
"""
import contextlib
import os

#: "fastopt" (the tests' point) or "torch" (the harness checked against itself).
CANDIDATE = os.environ.get("FASTOPT_ENGINE_CANDIDATE", "fastopt")
#: The two sides a worker trains: the candidate, and torch.optim's reference.
KINDS = ("fastopt", "torch")


def optimizer_class(kind, algorithm="AdamW"):
    """``(class, extra arguments)`` of ``algorithm`` for side ``kind``: fastopt.torch's, or its
    reference, torch.optim's per-parameter loop (``foreach=False``, as fastopt's parity tests)."""
    import torch
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "fastopt" and CANDIDATE == "fastopt":
        import fastopt.torch
        return getattr(fastopt.torch, algorithm), {}
    return getattr(torch.optim, algorithm), dict(foreach=False)


def run_each_kind_and_save(rank, out_dir, run_kind):
    """One rank's part of a two-rank comparison: ``run_kind(kind, scratch_folder)`` for each of
    :data:`KINDS` (a run that raises is recorded as ``{"error": traceback}``; the other goes on),
    saved with the world size to ``OUT_DIR/rank<RANK>.pt``; then both ranks meet at a barrier
    before the process group is torn down (see ddp_worker.py)."""
    import tempfile
    import traceback

    import torch
    import torch.distributed as dist
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in KINDS:
            try:
                results[kind] = dict(run_kind(kind, os.path.join(scratch, kind)), error=None)
            except Exception:
                results[kind] = dict(error=traceback.format_exc())
    results["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_results(rank, world, out_dir):
    """One rank of a two-rank launch (gloo, torch on one thread): yields the dict of the rank's
    results, saved to ``OUT_DIR/rank<RANK>.pt`` when the block ends; then both ranks meet at a
    barrier before the process group is torn down (see ddp_worker.py)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        results = {}
        yield results
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
