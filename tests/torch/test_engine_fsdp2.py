"""fastopt.torch under FSDP2 (``fully_shard``: DTensor params) and torch.distributed.checkpoint (DCP).

One two-rank gloo launch of tests/_support/fsdp_worker.py trains every config with
``torch.optim.<Name>(foreach=False)`` and ``fastopt.torch.<Name>``, saves and resumes DCP
checkpoints, and writes each rank's results; the tests compare them:

* fastopt follows torch's losses step by step and ends at the same full params;
* fastopt keeps each state the way torch.optim does for a DTensor param: a DTensor with the
  param's placements and local shape (``"step"``: a plain scalar tensor);
* a DCP checkpoint (``get_state_dict`` + ``dcp.save``, then ``dcp.load`` + ``set_state_dict`` into
  a fresh model and optimizer) resumes fastopt's run bit for bit, and checkpoints move between
  torch.optim and fastopt in both directions;
* examples/fsdp2.py trains and resumes exactly.

``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim in fastopt's place: the harness against itself.
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")

import fsdp_worker  # noqa: E402  (tests/_support: pytest's pythonpath)
import two_ranks  # noqa: E402

pytestmark = pytest.mark.torch

CONFIGS = list(fsdp_worker.CONFIGS)
#: fastopt's fused kernels against torch's single-tensor loops, float64, 10 steps.
TOL = dict(rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's ``{run name: record}`` (see fsdp_worker.py), from one two-rank launch."""
    pytest.importorskip("torch.distributed.fsdp")
    return two_ranks.results(pathlib.Path(fsdp_worker.__file__), tmp_path_factory.mktemp("fsdp2"))



def assert_same_run(ours, reference, exact, what):
    two_ranks.assert_same_run(ours, reference, exact, what, TOL)


# The harness itself: torch.optim under FSDP2 trains, keeps DTensor states and resumes exactly.

@pytest.mark.parametrize("config", CONFIGS)
def test_reference_runs_are_sound(ranks, config):
    full, resumed = two_ranks.completed(ranks, f"{config}/torch"), two_ranks.completed(ranks, f"{config}/torch/resumed")
    assert len(full[0]["losses"]) == fsdp_worker.STEPS
    assert len(resumed[0]["losses"]) == fsdp_worker.STEPS - fsdp_worker.SAVE_AT
    for rank in range(1, len(ranks)):       # full_tensor() gathers the same params on every rank
        assert full[rank]["losses"] == full[0]["losses"]
        for name, param in full[0]["params"].items():
            assert torch.equal(full[rank]["params"][name], param)
    torch.manual_seed(0)                    # fsdp_worker.make_model's initial params
    untrained = dict(fsdp_worker.Net().double().named_parameters())
    for name, param in full[0]["params"].items():
        assert not torch.equal(param, untrained[name].detach()), f"{name} did not train"
    assert any(kind == "DTensor" for layout in full[0]["layout"].values()
               for kind, *_ in layout.values())
    assert any(shape[0] == 0 for layout in full[1]["layout"].values()
               for kind, _, shape, _ in layout.values() if kind == "DTensor"), "no empty shard on rank 1"
    for rank in range(len(ranks)):
        assert_same_run(resumed[rank], full[rank], exact=True, what=f"torch.optim resumed, rank {rank}")


@pytest.mark.parametrize("config", CONFIGS)
def test_fastopt_matches_torch_under_fsdp2(ranks, config):
    reference = two_ranks.completed(ranks, f"{config}/torch")[0]
    ours = two_ranks.completed(ranks, f"{config}/fastopt")[0]
    assert len(ours["losses"]) == fsdp_worker.STEPS
    assert_same_run(ours, reference, exact=False, what=f"{config}: fastopt vs torch.optim")


@pytest.mark.parametrize("config", CONFIGS)
def test_state_layout_matches_torch(ranks, config):
    """opt.state[p][name]: a DTensor with torch's placements and local shape, on every rank."""
    references = two_ranks.completed(ranks, f"{config}/torch")
    ours = two_ranks.completed(ranks, f"{config}/fastopt")
    for rank, (mine, reference) in enumerate(zip(ours, references)):
        assert mine["layout"] == reference["layout"], f"rank {rank}"


@pytest.mark.parametrize("config", CONFIGS)
def test_dcp_resume_is_bit_identical(ranks, config):
    two_ranks.assert_resumed(ranks, f"{config}/fastopt", f"{config}/fastopt/resumed",
                             fsdp_worker.STEPS - fsdp_worker.SAVE_AT, f"{config}: fastopt resumed",
                             assert_same_run)


@pytest.mark.parametrize("direction", ["torch->fastopt", "fastopt->torch"])
@pytest.mark.parametrize("config", CONFIGS)
def test_dcp_checkpoint_interchange(ranks, config, direction):
    """A checkpoint saved with one implementation continues in the other like the original run."""
    source = direction.split("->")[0]
    uninterrupted = two_ranks.completed(ranks, f"{config}/{source}")[0]
    continued = two_ranks.completed(ranks, f"{config}/{direction}")[0]
    assert len(continued["losses"]) == fsdp_worker.STEPS - fsdp_worker.SAVE_AT
    assert_same_run(continued, uninterrupted, exact=False, what=f"{config}: {direction}")


def test_example_trains_and_resumes_exactly(ranks):
    """examples/fsdp2.py (its run(), in the worker's ranks): the loss goes down and the run resumed
    from its DCP checkpoint repeats the original one."""
    example = ranks[0]["example"]
    if example["error"] is not None and "not found" in example["error"]:
        pytest.skip(example["error"])
    assert example["error"] is None, f"examples/fsdp2.py failed: {example['error']}"
    assert len(example["original"]) == 6
    assert example["resumed"] == example["original"]
    assert example["original"][-1] < example["original"][0]
