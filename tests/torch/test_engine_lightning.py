"""fastopt.torch.AdamW under Lightning's Trainer (CPU): the same run as with torch.optim.AdamW.

A small LightningModule (tests/_support/lightning_run.py) whose configure_optimizers returns the
optimizer and a per-step LR schedule trains for 20 steps with gradient clipping, in 32-bit and in
bf16-mixed precision; a run resumed from the end-of-epoch-0 checkpoint (``ckpt_path``) must end
where the uninterrupted run ends; and a two-rank DDP run (gloo, ranks launched here, Lightning
taking them as launched) gives the same losses with either optimizer. Every comparison also runs
with torch.optim.AdamW on both sides, which shows the harness itself is exact.
``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim.AdamW in fastopt's place throughout (see
tests/_support/two_ranks.py): every test must then pass, as it does.
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import lightning_run  # noqa: E402  (tests/_support: pytest's pythonpath)
from engine_candidate import KINDS  # noqa: E402
import two_ranks  # noqa: E402

SUPPORT = pathlib.Path(two_ranks.__file__).parent

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_flags_settable")]


PRECISIONS = ["32-true", "bf16-mixed"]
CLOSE = lightning_run.CLOSE
LOSS_RTOL = {"32-true": 1e-5, "bf16-mixed": 1e-4}


class Runs:
    """Trainer runs done once per module and shared by the tests that compare them."""

    def __init__(self, root):
        self.root = root
        self.done = {}

    def get(self, kind, precision="32-true", resumed=False):
        """The run of ``kind``; ``resumed``: resumed from the uninterrupted run's step-10 checkpoint."""
        key = (kind, precision, resumed)
        if key not in self.done:
            checkpoint = None
            if resumed:
                checkpoint = self.get(kind, precision)["checkpoint"]
                assert checkpoint is not None, "Lightning wrote no checkpoint at the end of epoch 0"
            folder = self.root / "-".join(str(part) for part in key)
            self.done[key] = lightning_run.run(kind, folder, precision=precision, resume_from=checkpoint)
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("lightning"))


def assert_close_runs(actual, expected, precision="32-true"):
    assert len(actual["losses"]) == len(expected["losses"]) == lightning_run.STEPS
    torch.testing.assert_close(torch.tensor(actual["losses"]), torch.tensor(expected["losses"]),
                               rtol=LOSS_RTOL[precision], atol=0)
    assert actual["params"].keys() == expected["params"].keys()
    for name, value in expected["params"].items():
        torch.testing.assert_close(actual["params"][name], value, **CLOSE[precision],
                                   msg=lambda m, n=name: f"{n}: {m}")


def assert_trained(run):
    """The run moved every param and lowered the loss: the comparisons are about something."""
    lightning_run.lightning.seed_everything(0, verbose=False)
    initial = dict(lightning_run.Regression("torch").named_parameters())
    unmoved = [name for name, value in run["params"].items() if torch.equal(value, initial[name])]
    assert not unmoved, f"params still at their initial values after training: {unmoved}"
    assert sum(run["losses"][-5:]) < sum(run["losses"][:5]), run["losses"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fastopt_matches_torch_optim(runs, precision):
    reference = runs.get("torch", precision)
    assert_trained(reference)
    assert_close_runs(runs.get("fastopt", precision), reference, precision)


def test_bf16_mixed_is_another_run(runs):
    """bf16-mixed really ran in bfloat16 (so the test above checks two things)."""
    assert runs.get("torch", "bf16-mixed")["losses"] != runs.get("torch", "32-true")["losses"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_checkpoint_is_exact(runs, kind, precision):
    uninterrupted = runs.get(kind, precision)
    resumed = runs.get(kind, precision, resumed=True)
    half = lightning_run.BATCHES_PER_EPOCH
    assert resumed["losses"] == uninterrupted["losses"][half:]
    for name, value in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][name], value), name


# ------------------------------------------------------------------------------------------------
# two ranks under torch.distributed (gloo): strategy="ddp"
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    """Both ranks' results of one two-process launch (each trains with both optimizers)."""
    return two_ranks.results(SUPPORT / "lightning_run.py", tmp_path_factory.mktemp("lightning_ddp"), timeout=180)


@pytest.mark.parametrize("kind", KINDS)
def test_ddp_ranks_hold_the_same_model(ddp_ranks, kind):
    assert [rank["world_size"] for rank in ddp_ranks] == [2, 2]
    first, second = two_ranks.completed(ddp_ranks, kind)
    assert first["losses"] != second["losses"]           # each rank trained on its own batches
    for name, value in first["params"].items():
        assert torch.equal(second["params"][name], value), name
    assert_trained(first)


@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_fastopt_matches_torch_optim(ddp_ranks, rank):
    assert_close_runs(two_ranks.completed(ddp_ranks, "fastopt")[rank], two_ranks.completed(ddp_ranks, "torch")[rank])
