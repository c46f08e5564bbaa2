"""fastopt.torch.AdamW under Hugging Face's Trainer (CPU): the same run as with torch.optim.AdamW.

A tiny Llama built from a config (tests/_support/hf_trainer_run.py) is trained for 20 steps, the
loss logged at every step. fastopt's optimizer is handed over both ways the Trainer takes one
(``optimizers=`` and ``optimizer_cls_and_kwargs=``); a run resumed from the step-10 checkpoint
must end where the uninterrupted run ends, also when the checkpoint's optimizer.pt was written by
the other optimizer; and a two-rank DDP run (gloo) gives the same losses with either optimizer.
Every comparison also runs with torch.optim.AdamW on both sides, which shows the harness itself
is exact.
``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim.AdamW in fastopt's place throughout (see
tests/_support/two_ranks.py): every test must then pass, as it does.
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")                    # the Trainer needs it

import hf_trainer_run  # noqa: E402  (tests/_support: pytest's pythonpath)
from engine_candidate import KINDS  # noqa: E402
import two_ranks  # noqa: E402

SUPPORT = pathlib.Path(two_ranks.__file__).parent

pytestmark = pytest.mark.torch

#: fastopt against torch.optim in float32 (as the parity tests of tests/torch/).
CLOSE = dict(rtol=1e-5, atol=1e-6)
LOSS_RTOL = 1e-5


class Runs:
    """Trainer runs done once per module and shared by the tests that compare them."""

    def __init__(self, root):
        self.root = root
        self.done = {}

    def get(self, kind, via="optimizers", resume_from=None):
        """The run of ``kind``; ``resume_from`` is the kind whose step-10 checkpoint it resumes."""
        key = (kind, via, resume_from)
        if key not in self.done:
            folder = self.root / "-".join(str(part) for part in key)
            checkpoint = None
            if resume_from is not None:
                checkpoint = self.checkpoint(resume_from, via)
            self.done[key] = hf_trainer_run.run(kind, folder, via=via, resume_from=checkpoint)
            assert self.done[key]["global_step"] == hf_trainer_run.STEPS
        return self.done[key]

    def checkpoint(self, kind, via="optimizers"):
        self.get(kind, via)
        folder = self.root / "-".join((kind, via, "None")) / f"checkpoint-{hf_trainer_run.CHECKPOINT_STEP}"
        assert (folder / "optimizer.pt").is_file(), f"the Trainer wrote no optimizer.pt in {folder}"
        return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("hf_trainer"))


def assert_same_run(actual, expected, exact=False):
    assert len(actual["losses"]) == len(expected["losses"]) == hf_trainer_run.STEPS
    assert actual["params"].keys() == expected["params"].keys()
    if exact:
        assert actual["losses"] == expected["losses"]
        for name, value in expected["params"].items():
            assert torch.equal(actual["params"][name], value), name
    else:
        torch.testing.assert_close(torch.tensor(actual["losses"]), torch.tensor(expected["losses"]),
                                   rtol=LOSS_RTOL, atol=0)
        for name, value in expected["params"].items():
            torch.testing.assert_close(actual["params"][name], value, **CLOSE, msg=lambda m, n=name: f"{n}: {m}")


def assert_trained(run):
    """The run moved the model and lowered the loss: the comparisons are about something."""
    initial = dict(hf_trainer_run.make_model().named_parameters())
    unmoved = [name for name, value in run["params"].items() if torch.equal(value, initial[name])]
    assert not unmoved, f"params still at their initial values after training: {unmoved}"
    assert sum(run["losses"][-4:]) < sum(run["losses"][:4]), run["losses"]


@pytest.mark.parametrize("via", ["optimizers", "cls_and_kwargs"])
def test_fastopt_matches_torch_optim(runs, via):
    reference = runs.get("torch", via)
    assert_trained(reference)
    assert_same_run(runs.get("fastopt", via), reference)


def test_the_two_ways_differ(runs):
    """optimizer_cls_and_kwargs gives the Trainer's own two param groups (no weight decay on the
    RMSNorm weights): a different run from ``optimizers=`` over model.parameters(), all decayed
    (so the test above checks two things)."""
    a, b = runs.get("torch", "optimizers"), runs.get("torch", "cls_and_kwargs")
    differ = [name for name in a["params"] if not torch.equal(a["params"][name], b["params"][name])]
    assert "model.norm.weight" in differ


@pytest.mark.parametrize("kind", KINDS)
def test_resume_from_checkpoint_is_exact(runs, kind):
    assert_same_run(runs.get(kind, resume_from=kind), runs.get(kind), exact=True)


@pytest.mark.parametrize("kind,written_by", [("fastopt", "torch"), ("torch", "fastopt")],
                         ids=["torch-checkpoint-resumed-by-fastopt", "fastopt-checkpoint-resumed-by-torch"])
def test_resume_from_the_other_optimizers_checkpoint(runs, kind, written_by):
    resumed = runs.get(kind, resume_from=written_by)
    # the first half is the writer's own run (the Trainer keeps its log history)
    assert resumed["losses"][:hf_trainer_run.CHECKPOINT_STEP] == \
        runs.get(written_by)["losses"][:hf_trainer_run.CHECKPOINT_STEP]
    assert_same_run(resumed, runs.get(written_by))
    assert_same_run(resumed, runs.get(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_params_given_new_memory_then_state_reloaded(kind):
    """What the Trainer's accelerate does to the optimizer under DDP on CPU, in one process.

    accelerate's prepare() moves the model to its device, ``cpu:0`` under DDP on CPU, which
    ``Module.to`` does by copying every param and assigning ``param.data`` (same Parameter
    objects, new memory); then AcceleratedOptimizer reloads the optimizer's own state_dict. The
    steps after it must update the params' new memory, as torch.optim's do.
    """
    model = hf_trainer_run.make_model()
    cls, kwargs = hf_trainer_run.optimizer_of(kind)
    optimizer = cls(model.parameters(), **kwargs)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    model.to(torch.device("cpu", 0))
    assert all(p.data_ptr() != before[name] for name, p in model.named_parameters())   # new memory
    optimizer.load_state_dict(optimizer.state_dict())
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = hf_trainer_run.RandomTokens()[0]["input_ids"][None]
    model(input_ids=tokens, labels=tokens).loss.backward()
    optimizer.step()
    unmoved = [name for name, p in model.named_parameters() if torch.equal(p, initial[name])]
    assert not unmoved, f"{type(optimizer).__module__}.{type(optimizer).__name__} did not update: {unmoved}"


# ------------------------------------------------------------------------------------------------
# two ranks under torch.distributed (gloo): the Trainer wraps the model in DDP
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    """Both ranks' results of one two-process launch (each trains with both optimizers)."""
    return two_ranks.results(SUPPORT / "hf_trainer_run.py", tmp_path_factory.mktemp("hf_trainer_ddp"), timeout=180)


@pytest.mark.parametrize("kind", KINDS)
def test_ddp_ranks_hold_the_same_model(ddp_ranks, kind):
    assert [rank["world_size"] for rank in ddp_ranks] == [2, 2]
    first, second = two_ranks.completed(ddp_ranks, kind)
    assert first["losses"] == second["losses"]           # the logged loss is the mean over ranks
    for name, value in first["params"].items():
        assert torch.equal(second["params"][name], value), name
    assert_trained(first)


def test_ddp_fastopt_matches_torch_optim(ddp_ranks):
    assert_same_run(two_ranks.completed(ddp_ranks, "fastopt")[0], two_ranks.completed(ddp_ranks, "torch")[0])


def test_ddp_averages_gradients_over_ranks(ddp_ranks, runs):
    """Two ranks with half batches train the same model as one process with whole batches (same
    sampler order, gradients averaged), up to reduction order: DDP is really in the loop."""
    single = runs.get("torch")
    two = two_ranks.completed(ddp_ranks, "torch")[0]
    assert len(two["losses"]) == len(single["losses"])
    for name, value in single["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-4, atol=1e-5)
