"""fastopt.torch's flat mode under DistributedDataParallel and ZeroRedundancyOptimizer (2 gloo ranks).

One two-rank gloo launch of tests/_support/flat_ddp_worker.py trains every config (the optimizer
built before or after the DDP wrap, ``gradient_as_bucket_view`` off and on,
``fastopt.torch.flatten_`` before DDP, gradient accumulation under ``no_sync()``, two param
groups, ZeroRedundancyOptimizer with ``parameters_as_bucket_view`` off and on) with
``fastopt.torch.Adam(flat=True)``, with ``fastopt.torch.Adam`` without the flat mode and with
``torch.optim.Adam(foreach=False)``, saves checkpoints mid-run and resumes from them; the tests
compare the records:

* the flat mode gives the params, losses, optimizer state and checkpoint of the run without it,
  bit for bit, and follows torch.optim;
* the flat optimizer stepped its flat buffers at every step where the config allows it (and
  raised no "steps per tensor" warning), and says why where it does not;
* resuming from the flat optimizer's checkpoint repeats the uninterrupted run bit for bit, and
  checkpoints move between the flat mode and torch.optim both ways.

``FASTOPT_FLAT_CANDIDATE=plain`` runs fastopt.torch without the flat mode on the flat side, and
``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim on both fastopt sides: the harness against
itself (the tests about the flat mode's own behaviour then skip).
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")

import flat_ddp_worker  # noqa: E402  (tests/_support: pytest's pythonpath)
import two_ranks  # noqa: E402
from engine_candidate import CANDIDATE  # noqa: E402

pytestmark = pytest.mark.torch

CONFIGS = list(flat_ddp_worker.CONFIGS)
#: fastopt's fused kernel against torch's single-tensor loop, float32, 8 steps.
TOL = dict(rtol=1e-5, atol=1e-6)

#: Whether the flat optimizer steps its flat buffers at every step of the config (True), or
#: falls back to stepping per tensor, with the reason its warning gives.
STEPS_FLAT = {config: True for config in CONFIGS}
# ZeRO moves the local optimizer's params into its own buckets after building it
# (``param.data = bucket[...]``): they are no longer views of the flat buffer.
STEPS_FLAT["zero-params-as-bucket-view"] = "is no longer a view of its flat buffer"

#: (build order, own version counters?): the optimizer built before the DDP wrap can move the
#: params with torch.utils.swap_tensors (they share the buffer's version counter); after it,
#: DDP's reducer holds them, and the flat mode places them with ``param.data = view``.
#: How each way of building places the params: swap_tensors (True) or param.data = view. With
#: flatten_ before DDP, the optimizer takes flatten_'s buffers as they are (swapped before DDP).
PLACED_WITH_SWAP = {"before": True, "after": False, "flatten_": True}

FLAT_SIDE_IS_FLAT = CANDIDATE == "fastopt" and flat_ddp_worker.FLAT_CANDIDATE == "flat"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("flat_engines")


@pytest.fixture(scope="module")
def ranks(out_dir, under_ci):
    """Each rank's ``{run name: record}`` (see flat_ddp_worker.py), from one two-rank launch."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        message = "torch.distributed with the gloo backend is not available in this torch build"
        if under_ci:     # a CI run cannot go green without its distributed comparisons
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    return two_ranks.results(pathlib.Path(flat_ddp_worker.__file__), out_dir)


def flat_side_only():
    if not FLAT_SIDE_IS_FLAT:
        pytest.skip("the harness checked against itself: the flat side does not run the flat mode")


def assert_same_state(ours, reference, exact, what):
    assert ours.keys() == reference.keys(), f"{what}: state kept for other params"
    for name, entry in ours.items():
        assert entry.keys() == reference[name].keys(), f"{what}: {name} keeps other state"
        for key, value in entry.items():
            if exact:
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(reference[name][key])), \
                    f"{what}: state {key!r} of {name} differs"
            else:
                torch.testing.assert_close(torch.as_tensor(value), torch.as_tensor(reference[name][key]),
                                           **TOL, msg=lambda m, name=name, key=key:
                                           f"{what}: state {key!r} of {name} differs\n{m}")


def assert_same_run(ours, reference, exact, what):
    """Same losses (over the steps ``ours`` trained), final params and final optimizer state."""
    two_ranks.assert_same_run(ours, reference, exact, what, TOL)
    assert_same_state(ours["state"], reference["state"], exact, what)


def assert_ranks_agree(records, what):
    """DDP and ZeRO keep every rank's params identical."""
    for rank, record in enumerate(records[1:], start=1):
        assert record["losses"] == records[0]["losses"], what
        for name, param in record["params"].items():
            assert torch.equal(param, records[0]["params"][name]), f"{what}: {name} on rank {rank}"


# The harness itself: torch.optim trains under each config, on every rank alike.

@pytest.mark.parametrize("config", CONFIGS)
def test_reference_runs_are_sound(ranks, config):
    runs = two_ranks.completed(ranks, f"{config}/torch")
    assert len(runs[0]["losses"]) == flat_ddp_worker.STEPS
    assert_ranks_agree(runs, f"{config}/torch")
    untrained = dict(flat_ddp_worker.make_module().named_parameters())
    for name, param in runs[0]["params"].items():
        assert not torch.equal(param, untrained[name].detach()), f"{config}: {name} did not train"
    assert runs[0]["losses"][-1] < runs[0]["losses"][0], f"{config}: the loss did not fall"
    for rank, record in enumerate(runs):
        assert record["state"], f"{config}: rank {rank} keeps no optimizer state"


# The flat mode's results

@pytest.mark.parametrize("config", CONFIGS)
def test_flat_equals_plain_bit_for_bit(ranks, config):
    """Params, losses and optimizer state after every step as without the flat mode, on each rank."""
    flat = two_ranks.completed(ranks, f"{config}/flat")
    plain = two_ranks.completed(ranks, f"{config}/plain")
    assert len(flat[0]["losses"]) == flat_ddp_worker.STEPS
    assert_ranks_agree(flat, f"{config}/flat")
    for rank in range(len(ranks)):
        assert_same_run(flat[rank], plain[rank], exact=True, what=f"{config}: flat vs plain, rank {rank}")


@pytest.mark.parametrize("config", CONFIGS)
def test_flat_matches_torch_optim(ranks, config):
    torch_runs = two_ranks.completed(ranks, f"{config}/torch")
    flat = two_ranks.completed(ranks, f"{config}/flat")
    for rank in range(len(ranks)):
        assert_same_run(flat[rank], torch_runs[rank], exact=False,
                        what=f"{config}: flat vs torch.optim, rank {rank}")


@pytest.mark.parametrize("config", CONFIGS)
def test_flat_checkpoint_equals_plain_checkpoint(ranks, out_dir, config):
    """The flat optimizer's state_dict() keeps torch's per-param layout: the checkpoint rank 0
    saved mid-run (ZeRO: consolidated) is the one the run without the flat mode saved."""
    two_ranks.completed(ranks, f"{config}/flat")
    two_ranks.completed(ranks, f"{config}/plain")
    flat = torch.load(out_dir / f"{config}-flat.pt", weights_only=True)
    plain = torch.load(out_dir / f"{config}-plain.pt", weights_only=True)
    flat_groups = flat["optim"]["param_groups"]
    if flat_ddp_worker.CONFIGS[config].get("zero") is not None and FLAT_SIDE_IS_FLAT:
        # ZeroRedundancyOptimizer keeps every optimizer argument as a default of its own groups,
        # ``flat`` too (torch.optim.Adam loads such a checkpoint: test_checkpoint_interchange)
        assert all(group.get("flat") is True for group in flat_groups)
        flat_groups = [{k: v for k, v in group.items() if k != "flat"} for group in flat_groups]
    assert flat_groups == plain["optim"]["param_groups"]
    assert flat["optim"]["state"].keys() == plain["optim"]["state"].keys()
    assert len(flat["optim"]["state"]) == sum(1 for _ in flat_ddp_worker.make_module().parameters())
    for index, entry in flat["optim"]["state"].items():
        assert entry.keys() == plain["optim"]["state"][index].keys()
        for key, value in entry.items():
            assert torch.equal(value, plain["optim"]["state"][index][key]), f"state {key!r} of param {index}"
    for name, value in flat["model"].items():
        assert torch.equal(value, plain["model"][name]), name


# Checkpoints: resume, and interchange with torch.optim

@pytest.mark.parametrize("config", CONFIGS)
def test_flat_resume_is_bit_identical(ranks, config):
    two_ranks.assert_resumed(ranks, f"{config}/flat", f"{config}/flat/resumed",
                             flat_ddp_worker.STEPS - flat_ddp_worker.SAVE_AT, f"{config}: flat resumed",
                             assert_same_run)


@pytest.mark.parametrize("direction", ["flat->torch", "torch->flat"])
@pytest.mark.parametrize("config", CONFIGS)
def test_checkpoint_interchange_with_torch_optim(ranks, config, direction):
    """A checkpoint saved by one side continues in the other like the original run."""
    source = direction.split("->")[0]
    for rank in range(len(ranks)):
        uninterrupted = two_ranks.completed(ranks, f"{config}/{source}")[rank]
        continued = two_ranks.completed(ranks, f"{config}/{direction}")[rank]
        assert len(continued["losses"]) == flat_ddp_worker.STEPS - flat_ddp_worker.SAVE_AT
        assert_same_run(continued, uninterrupted, exact=False, what=f"{config}: {direction}, rank {rank}")


# How the flat mode stepped

def per_tensor_warnings(record):
    return [message for category, message in record["warnings"]
            if category == "RuntimeWarning" and message.startswith(flat_ddp_worker.PER_TENSOR_WARNING)]


@pytest.mark.parametrize("run", ["flat", "flat/resumed", "torch->flat"])
@pytest.mark.parametrize("config", CONFIGS)
def test_flat_mode_steps_flat(ranks, config, run):
    """Where the config allows it, every step updated the flat buffers (the FlatRunner), and no
    warning said the optimizer steps per tensor; elsewhere the warning says why it does not."""
    flat_side_only()
    expected = STEPS_FLAT[config]
    for rank, record in enumerate(two_ranks.completed(ranks, f"{config}/{run}")):
        warned = per_tensor_warnings(record)
        if expected is True:
            assert record["runners"] == ["FlatRunner"] * len(record["runners"]), \
                f"{config}/{run}, rank {rank}: stepped per tensor: {warned}"
            assert warned == [], f"{config}/{run}, rank {rank}"
        else:
            assert record["runners"][-1] == "Runner", f"{config}/{run}, rank {rank}"
            assert len(warned) == 1 and expected in warned[0], f"{config}/{run}, rank {rank}: {warned}"


@pytest.mark.parametrize("config", [c for c in CONFIGS if flat_ddp_worker.CONFIGS[c]["build"] in PLACED_WITH_SWAP])
def test_flat_mode_placement(ranks, config):
    """Built before DDP, the params move into the flat buffer with swap_tensors (they share its
    autograd version counter: a step bumps one counter a buffer); after DDP, with
    ``param.data = view`` (their own counters)."""
    flat_side_only()
    swapped = PLACED_WITH_SWAP[flat_ddp_worker.CONFIGS[config]["build"]]
    for rank, record in enumerate(two_ranks.completed(ranks, f"{config}/flat")):
        assert record["placement"], f"{config}, rank {rank}: no flat buffer"
        for own, total in record["placement"]:
            assert own == (0 if swapped else total), f"{config}, rank {rank}: {record['placement']}"
