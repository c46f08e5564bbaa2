"""fastopt.torch's flat mode under Hugging Face's Trainer (CPU): the run without the flat mode, bit
for bit.

A tiny Llama (tests/_support/hf_trainer_run.py) is trained for 20 steps by the Trainer with
``fastopt.torch.AdamW(flat=True)``, handed over both ways the Trainer takes an optimizer
(``optimizers=(optimizer, scheduler)``: one param group; ``optimizer_cls_and_kwargs``: the
Trainer's two groups), against the same runs with ``fastopt.torch.AdamW`` without the flat mode
and with ``torch.optim.AdamW(foreach=False)`` (tests/_support/flat_trainer_run.py):

* the flat run's losses, final params and optimizer state are those of the run without the flat
  mode, bit for bit, and follow torch.optim's;
* the Trainer's ``model.zero_grad()`` (every ``.grad`` set to None before each backward) still
  lets every step update the flat buffers, with no "steps per tensor" warning, also with tied
  embeddings (which stay tied); a param the forward does not use keeps a ``.grad`` of None, and
  the flat mode then steps per tensor (skipping it, as torch.optim does), saying so once;
* a flat run resumed from its step-10 checkpoint ends where the uninterrupted run ends, and its
  checkpoint is the run's without the flat mode, which torch.optim.AdamW resumes from;
* two ranks (accelerate's DDP over gloo, one launch): the flat mode gives the run without it, bit
  for bit, and each rank the same model. There accelerate moves the model to ``cpu:<rank>`` after
  the Trainer built the optimizer, which gives every param new memory: the flat mode then steps per
  tensor, saying so once (the test pins that, with its reason).

``FASTOPT_ENGINE_CANDIDATE=torch`` (torch.optim on every side) and ``FASTOPT_FLAT_CANDIDATE=plain``
(no flat mode on the flat side) check the harness against itself: every test then passes but those
about the flat mode's own behaviour, which skip.
"""
import pathlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")                    # the Trainer needs it

import flat_sides  # noqa: E402  (tests/_support: pytest's pythonpath)
from flat_sides import assert_same_state, flat_side_only  # noqa: E402
import flat_trainer_run  # noqa: E402
import hf_trainer_run  # noqa: E402
import two_ranks  # noqa: E402

pytestmark = pytest.mark.torch

STEPS = flat_trainer_run.STEPS
VIAS = flat_trainer_run.VIAS
#: name -> how the single-process run hands the optimizer over (``via``) and which model it trains
#: (see flat_trainer_run.make_model).
CONFIGS = {
    "optimizers": dict(via="optimizers"),
    "cls_and_kwargs": dict(via="cls_and_kwargs"),
    "tied-embeddings": dict(via="optimizers", model="tied"),
    "unused-param": dict(via="optimizers", model="unused-param"),
}
#: The config whose runs save checkpoints and are resumed (the Trainer's two param groups).
RESUME_CONFIG = "cls_and_kwargs"
#: Whether the flat side steps its flat buffers at every step of the config (True), or steps per
#: tensor from the first step, with (a part of) the reason its one warning gives.
STEPS_FLAT = {config: True for config in CONFIGS}
# The Trainer's model.zero_grad() sets every .grad to None, and backward gives the unused param
# none: a step with a param whose .grad is None skips it (as torch.optim does), per tensor.
STEPS_FLAT["unused-param"] = "has no gradient (.grad is None)"
#: fastopt against torch.optim in float32 (as tests/torch/test_engine_hf_trainer.py).
CLOSE = dict(rtol=1e-5, atol=1e-6)


class Runs:
    """Trainer runs done once per module and shared by the tests that compare them."""

    def __init__(self, root):
        self.root = root
        self.done = {}

    def get(self, side, config="optimizers", resume_from=None):
        """The run of ``side`` and ``config``; ``resume_from``: the side whose step-10 checkpoint it
        resumes."""
        key = (side, config, resume_from)
        if key not in self.done:
            checkpoint = None if resume_from is None else self.checkpoint(resume_from, config)
            self.done[key] = flat_trainer_run.run(side, self.folder(*key), resume_from=checkpoint,
                                                  save=resume_from is None and config == RESUME_CONFIG,
                                                  **CONFIGS[config])
            assert self.done[key]["global_step"] == STEPS
        return self.done[key]

    def folder(self, *key):
        return self.root / "-".join(map(str, key))

    def checkpoint(self, side, config=RESUME_CONFIG):
        self.get(side, config)
        folder = self.folder(side, config, None) / f"checkpoint-{flat_trainer_run.CHECKPOINT_STEP}"
        assert (folder / "optimizer.pt").is_file(), f"the Trainer wrote no optimizer.pt in {folder}"
        return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with flat_sides.one_torch_thread():
        yield Runs(tmp_path_factory.mktemp("flat_trainer"))


def assert_identical(ours, reference, what):
    """Same losses, params and optimizer state, bit for bit."""
    assert len(ours["losses"]) == len(reference["losses"]) == STEPS
    assert ours["losses"] == reference["losses"], f"{what}: losses differ"
    assert ours["params"].keys() == reference["params"].keys()
    for name, value in reference["params"].items():
        assert torch.equal(ours["params"][name], value), f"{what}: param {name} differs"
    assert_same_state(ours["state"], reference["state"], what)


def assert_close(ours, reference, what):
    torch.testing.assert_close(torch.tensor(ours["losses"]), torch.tensor(reference["losses"]), rtol=1e-5, atol=0,
                               msg=lambda m: f"{what}: losses differ\n{m}")
    for name, value in reference["params"].items():
        torch.testing.assert_close(ours["params"][name], value, **CLOSE,
                                   msg=lambda m, name=name: f"{what}: param {name} differs\n{m}")


def assert_trained(run):
    """The run moved every param and lowered the loss: the comparisons are about something."""
    initial = dict(hf_trainer_run.make_model().named_parameters())
    unmoved = [name for name, value in run["params"].items() if torch.equal(value, initial[name])]
    assert not unmoved, f"params still at their initial values after training: {unmoved}"
    assert sum(run["losses"][-4:]) < sum(run["losses"][:4]), run["losses"]


def assert_flat_at_every_step(run, steps, what):
    assert run["warnings"] == [], f"{what}: the flat mode stepped per tensor"
    assert run["runners"] == ["FlatRunner"] * steps, f"{what}: steps not run on the flat buffers"


# ------------------------------------------------------------------------------------------------
# one process
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_flat_is_the_run_without_it(runs, config):
    assert_identical(runs.get("flat", config), runs.get("plain", config), f"flat against plain, {config}")


@pytest.mark.parametrize("config", ["optimizers", "cls_and_kwargs"])
def test_flat_follows_torch_optim(runs, config):
    reference = runs.get("torch", config)
    assert_trained(reference)
    assert_close(runs.get("flat", config), reference, f"flat against torch.optim, {config}")


@pytest.mark.parametrize("config", CONFIGS)
def test_how_flat_steps(runs, config):
    """After ``model.zero_grad()`` every ``.grad`` is None and backward makes new ones: the step
    copies them into the gradient buffer and still updates the flat buffers -- unless a param gets
    no gradient (STEPS_FLAT)."""
    flat_side_only()
    flat = runs.get("flat", config)
    assert runs.get("plain", config)["runners"] == ["Runner"] * STEPS    # what the recorder tells apart
    if STEPS_FLAT[config] is True:
        assert_flat_at_every_step(flat, STEPS, config)
        return
    assert flat["runners"] == ["Runner"] * STEPS
    [warning] = flat["warnings"]
    unused = list(flat["params"]).index(flat_trainer_run.UNUSED)    # (the optimizer's order)
    assert f"param_groups[0]['params'][{unused}] {STEPS_FLAT[config]}" in warning


def test_tied_embeddings_stay_tied(runs):
    """The flat mode moves the tied Parameter into its buffer once, as the same object: the LM
    head and the embedding still share it after training (and it is trained as one param)."""
    flat = runs.get("flat", "tied-embeddings")
    assert flat["tied"] and "lm_head.weight" not in flat["params"]
    assert not runs.get("flat", "optimizers")["tied"]


def test_the_unused_param_is_left_alone(runs):
    """Skipped at every step, as torch.optim skips a param whose ``.grad`` is None."""
    for side in flat_sides.SIDES:
        assert torch.equal(runs.get(side, "unused-param")["params"][flat_trainer_run.UNUSED], torch.ones(8)), side


def test_the_two_ways_differ(runs):
    """optimizer_cls_and_kwargs gives the Trainer's own two param groups (no weight decay on the
    RMSNorm weights): another run than ``optimizers=`` (the tests above check two things)."""
    a, b = runs.get("flat", "optimizers"), runs.get("flat", "cls_and_kwargs")
    assert not torch.equal(a["params"]["model.norm.weight"], b["params"]["model.norm.weight"])


def test_resume_from_a_flat_checkpoint_is_exact(runs):
    resumed = runs.get("flat", RESUME_CONFIG, resume_from="flat")
    assert_identical(resumed, runs.get("flat", RESUME_CONFIG), "flat resumed at step 10 against uninterrupted")
    if flat_sides.FLAT_SIDE_IS_FLAT:
        assert_flat_at_every_step(resumed, STEPS - flat_trainer_run.CHECKPOINT_STEP, "resumed")


def test_a_flat_checkpoint_is_the_checkpoint_without_flat(runs):
    """The flat run's step-10 checkpoint (model and optimizer.pt) is the plain run's, bit for bit:
    the flat mode's state_dict keeps torch's per-param layout."""
    from safetensors.torch import load_file
    flat, plain = runs.checkpoint("flat"), runs.checkpoint("plain")
    flat_model, plain_model = load_file(flat / "model.safetensors"), load_file(plain / "model.safetensors")
    assert flat_model.keys() == plain_model.keys()
    for name, value in plain_model.items():
        assert torch.equal(flat_model[name], value), name
    flat_state = torch.load(flat / "optimizer.pt", weights_only=True)
    plain_state = torch.load(plain / "optimizer.pt", weights_only=True)
    assert flat_state["param_groups"] == plain_state["param_groups"]
    assert flat_state["state"].keys() == plain_state["state"].keys()
    assert len(plain_state["state"]) == len(flat_model)
    assert_same_state(flat_state["state"], plain_state["state"], "optimizer.pt")


def test_torch_optim_resumes_from_a_flat_checkpoint(runs):
    resumed = runs.get("torch", RESUME_CONFIG, resume_from="flat")
    flat = runs.get("flat", RESUME_CONFIG)
    # the first half is the flat run's own (the Trainer keeps its log history)
    assert resumed["losses"][:flat_trainer_run.CHECKPOINT_STEP] == flat["losses"][:flat_trainer_run.CHECKPOINT_STEP]
    # torch.optim took the flat run's optimizer state: its moments and step counts went on from it
    assert {entry["step"].item() for entry in resumed["state"].values()} == {float(STEPS)}
    assert_close(resumed, runs.get("torch", RESUME_CONFIG), "torch.optim resumed from the flat checkpoint")
    assert_close(resumed, flat, "torch.optim resumed from the flat checkpoint, against the flat run")


# ------------------------------------------------------------------------------------------------
# two ranks under torch.distributed (gloo): accelerate wraps the model in DDP
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory, under_ci):
    """Both ranks' records of one two-process launch (each does every run of DDP_RUNS)."""
    flat_sides.require_gloo(under_ci)
    return two_ranks.results(pathlib.Path(flat_trainer_run.__file__), tmp_path_factory.mktemp("flat_trainer_ddp"),
                             timeout=240)


@pytest.mark.parametrize("via", VIAS)
def test_ddp_ranks_hold_the_same_model(ddp_ranks, via):
    assert [rank["world_size"] for rank in ddp_ranks] == [2, 2]
    first, second = two_ranks.completed(ddp_ranks, f"flat/{via}")
    assert first["losses"] == second["losses"]           # the logged loss is the mean over ranks
    for key, value in first["params"].items():
        assert torch.equal(second["params"][key], value), key
    assert_trained(first)


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("rank", [0, 1])
def test_ddp_flat_is_the_run_without_it(ddp_ranks, via, rank):
    assert_identical(two_ranks.completed(ddp_ranks, f"flat/{via}")[rank],
                     two_ranks.completed(ddp_ranks, f"plain/{via}")[rank], f"rank {rank}: flat against plain, {via}")


def test_ddp_flat_follows_torch_optim(ddp_ranks):
    assert_close(two_ranks.completed(ddp_ranks, "flat/optimizers")[0],
                 two_ranks.completed(ddp_ranks, "torch/optimizers")[0], "flat against torch.optim")


@pytest.mark.parametrize("via", VIAS)
def test_ddp_flat_steps_per_tensor_after_accelerate_moves_the_model(ddp_ranks, via):
    """Both ways, the Trainer builds (or is given) the optimizer before accelerate's ``prepare``
    moves the model to its device, ``cpu:<rank>`` under DDP on CPU; ``Module.to`` then copies
    every param (a CPU device with an index is another device to it) and assigns ``param.data``:
    no param is in the flat buffer any more. The flat mode sees it at the first step and steps per
    tensor from then on, with one warning naming the first param moved."""
    flat_side_only()
    for rank, record in enumerate(two_ranks.completed(ddp_ranks, f"flat/{via}")):
        assert record["runners"] == ["Runner"] * STEPS, f"rank {rank}"
        assert len(record["warnings"]) == 1, f"rank {rank}: {record['warnings']}"
        assert "param_groups[0]['params'][0] is no longer a view of its flat buffer" in record["warnings"][0]
