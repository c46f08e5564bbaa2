"""fastopt.torch's flat mode under Lightning's Trainer (CPU): the run without the flat mode, bit for
bit.

The LightningModule of tests/_support/lightning_run.py, whose ``configure_optimizers`` returns
``fastopt.torch.AdamW(..., flat=True)`` and a per-step LR schedule, trains for 20 steps with
gradient clipping, in 32-bit and in bf16-mixed precision, against the same runs with
``fastopt.torch.AdamW`` without the flat mode and with ``torch.optim.AdamW(foreach=False)``
(tests/_support/flat_lightning_run.py):

* the flat run's losses, final params and optimizer state are those of the run without the flat
  mode, bit for bit, and follow torch.optim's; every step updated the flat buffers;
* a flat run resumed from its end-of-epoch-0 checkpoint (``ckpt_path``) ends where the
  uninterrupted run ends, its checkpoint is the run's without the flat mode, and torch.optim.AdamW
  resumes from it;
* two ranks (strategy="ddp" over gloo, one launch; the optimizer is built over the DDP-wrapped
  module's params): the same, bit for bit, with every step flat on each rank.

``FASTOPT_ENGINE_CANDIDATE=torch`` (torch.optim on every side) and ``FASTOPT_FLAT_CANDIDATE=plain``
(no flat mode on the flat side) check the harness against itself: every test then passes but those
about the flat mode's own behaviour, which skip.
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import flat_lightning_run  # noqa: E402  (tests/_support: pytest's pythonpath)
import flat_sides  # noqa: E402
from flat_sides import assert_same_state, flat_side_only  # noqa: E402
import lightning_run  # noqa: E402
import two_ranks  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_flags_settable")]

STEPS = flat_lightning_run.STEPS
HALF = lightning_run.BATCHES_PER_EPOCH
PRECISIONS = flat_lightning_run.PRECISIONS
CLOSE = lightning_run.CLOSE      # fastopt against torch.optim, per precision


class Runs:
    """Trainer runs done once per module and shared by the tests that compare them."""

    def __init__(self, root):
        self.root = root
        self.done = {}

    def get(self, side, precision="32-true", resume_from=None):
        """The run of ``side``; ``resume_from``: the side whose end-of-epoch-0 checkpoint it resumes."""
        key = (side, precision, resume_from)
        if key not in self.done:
            checkpoint = None if resume_from is None else self.checkpoint(resume_from, precision)
            self.done[key] = flat_lightning_run.run(side, self.root / "-".join(map(str, key)), precision=precision,
                                                    resume_from=checkpoint)
        return self.done[key]

    def checkpoint(self, side, precision="32-true"):
        checkpoint = self.get(side, precision)["checkpoint"]
        assert checkpoint is not None, "Lightning wrote no checkpoint at the end of epoch 0"
        return checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with flat_sides.one_torch_thread():
        yield Runs(tmp_path_factory.mktemp("flat_lightning"))


def assert_identical(ours, reference, what):
    """Same losses (of the steps ``ours`` did: the last ones), params and state, bit for bit."""
    assert ours["losses"] and ours["losses"] == reference["losses"][-len(ours["losses"]):], f"{what}: losses differ"
    assert ours["params"].keys() == reference["params"].keys()
    for name, value in reference["params"].items():
        assert torch.equal(ours["params"][name], value), f"{what}: param {name} differs"
    assert_same_state(ours["state"], reference["state"], what)


def assert_close(ours, reference, what, precision="32-true"):
    tolerance = CLOSE[precision]
    trained = len(ours["losses"])
    torch.testing.assert_close(torch.tensor(ours["losses"]), torch.tensor(reference["losses"][-trained:]),
                               rtol=tolerance["rtol"], atol=0, msg=lambda m: f"{what}: losses differ\n{m}")
    for name, value in reference["params"].items():
        torch.testing.assert_close(ours["params"][name], value, **tolerance,
                                   msg=lambda m, name=name: f"{what}: param {name} differs\n{m}")


def assert_trained(run):
    """The run moved every param and lowered the loss: the comparisons are about something."""
    lightning_run.lightning.seed_everything(0, verbose=False)
    initial = dict(lightning_run.Regression("torch").named_parameters())
    unmoved = [name for name, value in run["params"].items() if torch.equal(value, initial[name])]
    assert not unmoved, f"params still at their initial values after training: {unmoved}"
    assert sum(run["losses"][-5:]) < sum(run["losses"][:5]), run["losses"]


def assert_flat_at_every_step(run, steps, what):
    assert run["warnings"] == [], f"{what}: the flat mode stepped per tensor"
    assert run["runners"] == ["FlatRunner"] * steps, f"{what}: steps not run on the flat buffers"


# ------------------------------------------------------------------------------------------------
# one process
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", PRECISIONS)
def test_flat_is_the_run_without_it(runs, precision):
    flat = runs.get("flat", precision)
    assert len(flat["losses"]) == STEPS
    assert_identical(flat, runs.get("plain", precision), f"flat against plain, {precision}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_flat_follows_torch_optim(runs, precision):
    reference = runs.get("torch", precision)
    assert_trained(reference)
    assert_close(runs.get("flat", precision), reference, f"flat against torch.optim, {precision}", precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_flat_steps_flat_at_every_step(runs, precision):
    flat_side_only()
    assert_flat_at_every_step(runs.get("flat", precision), STEPS, precision)
    assert runs.get("plain", precision)["runners"] == ["Runner"] * STEPS    # what the recorder tells apart


def test_bf16_mixed_is_another_run(runs):
    """bf16-mixed really ran in bfloat16 (the tests above check two things)."""
    assert runs.get("flat", "bf16-mixed")["losses"] != runs.get("flat", "32-true")["losses"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_resume_from_a_flat_checkpoint_is_exact(runs, precision):
    resumed = runs.get("flat", precision, resume_from="flat")
    assert len(resumed["losses"]) == STEPS - HALF
    assert_identical(resumed, runs.get("flat", precision), f"flat resumed at step {HALF} against uninterrupted")
    if flat_sides.FLAT_SIDE_IS_FLAT:
        assert_flat_at_every_step(resumed, STEPS - HALF, "resumed")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_flat_checkpoint_is_the_checkpoint_without_flat(runs, precision):
    """The flat run's end-of-epoch-0 checkpoint holds the plain run's model and optimizer state,
    bit for bit: the flat mode's state_dict keeps torch's per-param layout."""
    flat = torch.load(runs.checkpoint("flat", precision), weights_only=False)
    plain = torch.load(runs.checkpoint("plain", precision), weights_only=False)
    assert flat["state_dict"].keys() == plain["state_dict"].keys()
    for name, value in plain["state_dict"].items():
        assert torch.equal(flat["state_dict"][name], value), name
    [flat_optimizer], [plain_optimizer] = flat["optimizer_states"], plain["optimizer_states"]
    assert flat_optimizer["param_groups"] == plain_optimizer["param_groups"]
    assert len(plain_optimizer["state"]) == len(plain["state_dict"])
    assert flat_optimizer["state"].keys() == plain_optimizer["state"].keys()
    assert_same_state(flat_optimizer["state"], plain_optimizer["state"], "checkpoint")


def test_torch_optim_resumes_from_a_flat_checkpoint(runs):
    resumed = runs.get("torch", resume_from="flat")
    # torch.optim took the flat run's optimizer state: its step counts went on from it
    assert {entry["step"].item() for entry in resumed["state"].values()} == {float(STEPS)}
    assert_close(resumed, runs.get("torch"), "torch.optim resumed from the flat checkpoint")
    assert_close(resumed, runs.get("flat"), "torch.optim resumed from the flat checkpoint, against the flat run")


# ------------------------------------------------------------------------------------------------
# two ranks under torch.distributed (gloo): strategy="ddp"
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory, under_ci):
    """Both ranks' records of one two-process launch (each trains every side)."""
    flat_sides.require_gloo(under_ci)
    return two_ranks.results(pathlib.Path(flat_lightning_run.__file__), tmp_path_factory.mktemp("flat_lightning_ddp"),
                             timeout=240)


def test_ddp_ranks_hold_the_same_model(ddp_ranks):
    assert [rank["world_size"] for rank in ddp_ranks] == [2, 2]
    first, second = two_ranks.completed(ddp_ranks, "flat")
    assert first["losses"] != second["losses"]           # each rank trained on its own batches
    for name, value in first["params"].items():
        assert torch.equal(second["params"][name], value), name
    assert_trained(first)


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_flat_is_the_run_without_it(ddp_ranks, rank):
    flat = two_ranks.completed(ddp_ranks, "flat")[rank]
    assert len(flat["losses"]) == STEPS
    assert_identical(flat, two_ranks.completed(ddp_ranks, "plain")[rank], f"rank {rank}: flat against plain")


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_flat_follows_torch_optim(ddp_ranks, rank):
    assert_close(two_ranks.completed(ddp_ranks, "flat")[rank], two_ranks.completed(ddp_ranks, "torch")[rank],
                 f"rank {rank}: flat against torch.optim")


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_flat_steps_flat_at_every_step(ddp_ranks, rank):
    flat_side_only()
    assert_flat_at_every_step(two_ranks.completed(ddp_ranks, "flat")[rank], STEPS, f"rank {rank}")
