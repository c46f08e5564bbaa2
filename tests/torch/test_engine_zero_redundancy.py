"""fastopt.torch under DistributedDataParallel and ZeroRedundancyOptimizer, with checkpoint resume.

One two-rank gloo launch of tests/_support/zero_worker.py trains every config with
``torch.optim.<Name>(foreach=False)`` and ``fastopt.torch.<Name>`` (plain under DDP, or as
``ZeroRedundancyOptimizer(optimizer_class=...)``), saves state dicts after a few steps and resumes
from them in fresh models and optimizers, and writes each rank's results; the tests compare them:

* fastopt follows torch's losses step by step and ends at the same params;
* resuming from fastopt's own checkpoint repeats the uninterrupted run bit for bit (ZeRO loads the
  state by assigning ``local_optimizer.state[p] = {...}``, which must take effect);
* checkpoints move between torch.optim and fastopt in both directions.

``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim in fastopt's place: the harness against itself.
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")

import two_ranks  # noqa: E402  (tests/_support: pytest's pythonpath)
import zero_worker  # noqa: E402

pytestmark = pytest.mark.torch

CONFIGS = list(zero_worker.CONFIGS)
#: fastopt's fused kernels against torch's single-tensor loops, float64, 10 steps.
TOL = dict(rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's ``{run name: record}`` (see zero_worker.py), from one two-rank launch."""
    return two_ranks.results(pathlib.Path(zero_worker.__file__), tmp_path_factory.mktemp("zero"))



def assert_same_run(ours, reference, exact, what):
    two_ranks.assert_same_run(ours, reference, exact, what, TOL)


def assert_ranks_agree(records, what):
    """DDP and ZeRO keep every rank's params identical."""
    for rank, record in enumerate(records[1:], start=1):
        assert record["losses"] == records[0]["losses"], what
        for name, param in record["params"].items():
            assert torch.equal(param, records[0]["params"][name]), f"{what}: {name} on rank {rank}"


# The harness itself: torch.optim under DDP/ZeRO trains, and resumes exactly.

@pytest.mark.parametrize("config", CONFIGS)
def test_reference_runs_are_sound(ranks, config):
    full, resumed = two_ranks.completed(ranks, f"{config}/torch"), two_ranks.completed(ranks, f"{config}/torch/resumed")
    assert len(full[0]["losses"]) == zero_worker.STEPS
    assert len(resumed[0]["losses"]) == zero_worker.STEPS - zero_worker.SAVE_AT
    assert_ranks_agree(full, f"{config}/torch")
    untrained = dict(zero_worker.make_module().named_parameters())
    for name, param in full[0]["params"].items():
        assert not torch.equal(param, untrained[name].detach()), f"{name} did not train"
    for rank in range(len(ranks)):
        assert_same_run(resumed[rank], full[rank], exact=True, what=f"torch.optim resumed, rank {rank}")


@pytest.mark.parametrize("config", CONFIGS)
def test_fastopt_matches_torch(ranks, config):
    reference = two_ranks.completed(ranks, f"{config}/torch")[0]
    ours = two_ranks.completed(ranks, f"{config}/fastopt")
    assert len(ours[0]["losses"]) == zero_worker.STEPS
    assert_ranks_agree(ours, f"{config}/fastopt")
    assert_same_run(ours[0], reference, exact=False, what=f"{config}: fastopt vs torch.optim")


@pytest.mark.parametrize("config", CONFIGS)
def test_resume_is_bit_identical(ranks, config):
    two_ranks.assert_resumed(ranks, f"{config}/fastopt", f"{config}/fastopt/resumed",
                             zero_worker.STEPS - zero_worker.SAVE_AT, f"{config}: fastopt resumed",
                             assert_same_run)


@pytest.mark.parametrize("direction", ["torch->fastopt", "fastopt->torch"])
@pytest.mark.parametrize("config", CONFIGS)
def test_checkpoint_interchange(ranks, config, direction):
    """A checkpoint saved with one implementation continues in the other like the original run."""
    source = direction.split("->")[0]
    uninterrupted = two_ranks.completed(ranks, f"{config}/{source}")[0]
    continued = two_ranks.completed(ranks, f"{config}/{direction}")[0]
    assert len(continued["losses"]) == zero_worker.STEPS - zero_worker.SAVE_AT
    assert_same_run(continued, uninterrupted, exact=False, what=f"{config}: {direction}")
