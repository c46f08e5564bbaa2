"""torch.optim's Optimizer contract, fastopt.torch.<Name> against torch.optim.<Name>, side by side.

Training engines (DeepSpeed, FSDP, Lightning, HF Trainer, ...) and users edit an optimizer between
steps: a group's params list is replaced or edited in place, ``param_groups`` is reassigned (and
restored), ``opt.state`` is written, ``p.data`` is swapped, groups are added, checkpoints move
between libraries, ``step()`` runs inside ``torch.compile``. Each scenario below does one of those
on both libraries alike, with hand-made gradients, and compares every param and state after every
step (tests/_support/contract.py). Each scenario also asserts that torch itself did what it says
(the new params moved, the removed ones stayed), so that none passes by doing nothing.
"""
import functools
import math
import re
from collections import defaultdict

import pytest

torch = pytest.importorskip("torch")

import contract  # noqa: E402
from contract import NAMES, STATE_KEYS, Twin, buffer_key, seeded  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool hands-offs cost more than the work (on a busy machine a
    Muon step of a 3x4 matrix took 50 ms on two threads, 60 us on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: {scenario name: function(twin)}, in the order below.
SCENARIOS = {}
#: {scenario name: the state key an algorithm must keep for it to apply}.
NEEDS = {}


def scenario(needs=None):
    def register(function):
        SCENARIOS[function.__name__.replace("_", "-")] = function
        NEEDS[function.__name__.replace("_", "-")] = needs
        return function
    return register


# ----------------------------------------------------------------------------------------------
# 1. A group's params list replaced by new tensors
# ----------------------------------------------------------------------------------------------

@scenario()
def list_replaced_by_more_tensors(t):
    t.step(2)

    @t.both
    def replace(s):
        s.group(0)["params"] = [s.new("q1", (3, 4)), s.new("q2", (2, 2)), s.new("q3", (5, 1))]
    t.mark("a0", "a1")
    t.step(3)
    t.reference_moved("q1", "q2", "q3")
    t.reference_still("a0", "a1")


@scenario()
def list_replaced_same_count_same_shapes(t):
    t.step(2)

    @t.both
    def replace(s):
        s.group(0)["params"] = [s.new("q1", (3, 4)), s.new("q2", (4, 2))]
    t.mark("a0", "a1")
    t.step(3)
    t.reference_moved("q1", "q2")
    t.reference_still("a0", "a1")


@scenario()
def list_replaced_same_count_other_shapes(t):
    t.step(2)

    @t.both
    def replace(s):
        s.group(0)["params"] = [s.new("q1", (2, 2)), s.new("q2", (3, 3))]
    t.mark("a0", "a1")
    t.step(3)
    t.reference_moved("q1", "q2")
    t.reference_still("a0", "a1")


@scenario()
def one_tensor_group_replaced_by_another(t):
    t.step(2)

    @t.both
    def replace(s):
        s.group(1)["params"] = [s.new("q1", (2, 3))]
    t.mark("b0")
    t.step(3)
    t.reference_moved("q1")
    t.reference_still("b0")


@scenario()
def list_replaced_keeping_one_param(t):
    t.step(2)

    @t.both
    def replace(s):
        s.group(0)["params"] = [s["a1"], s.new("q1", (3, 4))]   # a1 keeps its state, moves first
    t.mark("a0", "a1")
    t.step(3)
    t.reference_moved("a1", "q1")
    t.reference_still("a0")


# ----------------------------------------------------------------------------------------------
# 2. A group's list edited in place; a param moved to another group
# ----------------------------------------------------------------------------------------------

@scenario()
def param_appended(t):
    t.step(2)

    @t.both
    def append(s):
        s.group(0)["params"].append(s.new("q1", (2, 5)))
    t.step(3)
    t.reference_moved("q1")


@scenario()
def param_deleted_then_appended_back(t):
    t.step(2)

    @t.both
    def delete(s):
        del s.group(0)["params"][0]
    t.mark("a0")
    t.step(2)
    t.reference_still("a0")

    @t.both
    def append_back(s):        # torch kept a0's state all along: it resumes from it
        s.group(0)["params"].append(s["a0"])
    t.step(2)
    t.reference_moved("a0")


@scenario()
def list_reversed(t):
    t.step(2)

    @t.both
    def reverse(s):
        s.group(0)["params"].append(s.new("q1", (1, 3)))
        s.group(0)["params"].reverse()
    t.step(3)
    t.reference_moved("q1", "a0", "a1")


@scenario()
def param_moved_to_another_group(t):
    t.step(2)

    @t.both
    def move(s):               # a1 now steps at group 1's learning rate, with its state
        s.group(1)["params"].append(s.group(0)["params"].pop(1))
    t.mark("a1")
    t.step(3)
    t.reference_moved("a1")


# ----------------------------------------------------------------------------------------------
# 3. param_groups reassigned to a subset and restored (DeepSpeed, before every step)
# ----------------------------------------------------------------------------------------------

@scenario()
def param_groups_subset_then_restored(t):
    t.step(1)
    for _ in range(3):
        full = {}

        @t.both
        def subset(s):
            full[s.label] = s.opt.param_groups
            s.opt.param_groups = [s.opt.param_groups[1]]
        t.mark("a0", "a1", "b0")
        t.step()
        t.reference_still("a0", "a1")
        t.reference_moved("b0")

        @t.both
        def restore(s):
            s.opt.param_groups = full[s.label]
        t.mark("a0", "a1")
        t.step()
        t.reference_moved("a0", "a1")


# ----------------------------------------------------------------------------------------------
# 4. opt.state written: entries assigned, edited in place, deleted, reset
# ----------------------------------------------------------------------------------------------

@scenario()
def state_assigned_from_another_optimizer(t):
    t.step(2)

    @t.both
    def assign(s):
        s.opt.state[s["a0"]] = s.donor_state((3, 4))
    donor = t.theirs.donor_state((3, 4))
    assert all(torch.equal(value, donor[key]) for key, value in t.theirs.state_of("a0").items())
    t.step(2)


@scenario()
def state_buffer_assigned(t):
    key = buffer_key(t.name)
    t.step(2)
    before = t.theirs.state_of("a0")[key].clone()

    @t.both
    def assign(s):
        buffer = s.opt.state[s["a0"]][key]
        s.opt.state[s["a0"]][key] = seeded("new buffer", buffer.shape).abs() + 0.01
    assert not torch.equal(t.theirs.state_of("a0")[key], before)
    t.step(2)


@scenario()
def state_buffer_scaled_in_place(t):
    key = buffer_key(t.name)
    t.step(2)
    before = t.theirs.state_of("a0")[key].clone()

    @t.both
    def scale(s):
        s.opt.state[s["a0"]][key].mul_(0.5)
    assert torch.equal(t.theirs.state_of("a0")[key], before * 0.5)
    t.step(2)


@scenario(needs="step")
def state_step_set_in_place(t):
    t.step(2)

    @t.both
    def set_step(s):
        s.opt.state[s["a0"]]["step"].fill_(7)
    t.step(1)
    assert float(t.theirs.state_of("a0")["step"]) == 8
    t.step(1)


@scenario()
def state_deleted(t):
    t.step(2)

    @t.both
    def delete(s):
        del s.opt.state[s["a0"]]
    assert not t.theirs.state_of("a0")
    t.step(2)
    if "step" in STATE_KEYS[t.name]:
        assert float(t.theirs.state_of("a0")["step"]) == 2    # started over


@scenario()
def state_reset(t):
    t.step(2)

    @t.both
    def reset(s):
        s.opt.state = defaultdict(dict)
    assert not any(t.theirs.state_of(name) for name in t.theirs.params)
    t.step(2)


# ----------------------------------------------------------------------------------------------
# 5. p.data replaced by new memory of the same shape; 6. a group added after some steps
# ----------------------------------------------------------------------------------------------

@scenario()
def param_data_replaced(t):
    t.step(2)

    @t.both
    def replace_data(s):      # torch keeps the state and steps the new memory
        s["a1"].data = seeded("a1 new data", (4, 2))
        s["b0"].data = seeded("b0 new data", (2, 3))
    t.mark("a1", "b0")
    t.step(3)
    t.reference_moved("a1", "b0")


@scenario()
def group_added_after_steps(t):
    t.step(2)

    @t.both
    def add_group(s):
        s.opt.add_param_group({"params": [s.new("c0", (3, 3)), s.new("c1", (2, 5))], "lr": s.lr * 2})
    t.step(3)
    t.reference_moved("c0", "c1")


# ----------------------------------------------------------------------------------------------
# The tests: every scenario on every algorithm both libraries have
# ----------------------------------------------------------------------------------------------

CASES = [pytest.param(scenario_name, name, id=f"{scenario_name}-{name}")
         for scenario_name in SCENARIOS for name in NAMES
         if NEEDS[scenario_name] is None or NEEDS[scenario_name] in STATE_KEYS[name]]


@pytest.mark.parametrize("scenario_name,name", CASES)
def test_scenario_matches_torch(scenario_name, name):
    """Params and state as torch.optim's after the scenario's every step, and two steps more."""
    twin = Twin(name)
    SCENARIOS[scenario_name](twin)
    twin.step(2)


@pytest.mark.parametrize("scenario_name,name", CASES)
def test_other_librarys_checkpoint_after_scenario(scenario_name, name):
    """7. After the scenario each side loads the other library's state_dict, and goes on."""
    twin = Twin(name)
    SCENARIOS[scenario_name](twin)
    twin.cross_load()
    twin.step(2)


@pytest.mark.parametrize("scenario_name,name", CASES)
def test_steps_after_scenario_stay_on_the_fast_path(scenario_name, name):
    """9. Once the optimizer has seen the change, steps with nothing changed do the same Python
    work as the steps of an optimizer built over those groups from the start (a slow path, such
    as a per-param check or a rebuild at every step, makes more calls)."""
    twin = Twin(name)
    SCENARIOS[scenario_name](twin)
    twin.step(2)
    calls, fresh_calls = contract.steady_step_calls(twin.ours)
    assert calls <= fresh_calls, (
        f"a step after the scenario makes {calls} Python calls, a step of a new optimizer over the "
        f"same groups {fresh_calls}")


# ----------------------------------------------------------------------------------------------
# 5. p.data replaced by a tensor of another shape while p has state
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 4), (5, 3)], ids=["same-size", "other-size"])
@pytest.mark.parametrize("name", NAMES)
def test_param_data_of_another_shape_is_refused(name, shape):
    """torch keeps a1's state and fails inside its update (a shape mismatch, after stepping the
    params before it) or misbehaves; fastopt must refuse the step before writing anything, with an
    error that names the param and says its state would be lost. (Here fastopt is held to more
    than torch: this test is about fastopt alone.)"""
    twin = Twin(name)
    twin.step(2)
    ours = twin.ours
    assert ours.state_of("a1")
    ours["a1"].data = seeded("a1 other shape", shape)
    ours.set_grads(2)
    params = {n: p.detach().clone() for n, p in ours.params.items()}
    with pytest.raises((RuntimeError, ValueError)) as error:
        ours.opt.step()
    message = str(error.value)
    assert re.search(r"\bstate\b", message, re.IGNORECASE), message
    assert re.search(r"\bparam 1\b|\[['\"]params['\"]\]\[1\]", message), f"the param is not named: {message}"
    for n, p in ours.params.items():
        assert torch.equal(p.detach(), params[n]), f"param {n!r} was written by the refused step"


# ----------------------------------------------------------------------------------------------
# 8. torch.compile around a whole training step
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _inductor_works():
    """Whether the default backend (inductor) compiles here (it needs a C compiler on CPU)."""
    try:
        torch._dynamo.reset()
        torch.compile(lambda x: x * 2)(torch.ones(2))
        return True
    except Exception:    # noqa: BLE001 -- any failure to compile means: not here
        return False
    finally:
        torch._dynamo.reset()


#: Every algorithm compiled with the "eager" backend (dynamo alone), and a few with the default
#: one, inductor, which compiles the same forward and backward for all of them (about 0.5 s each).
COMPILED = [pytest.param(name, "eager", id=f"{name}-eager") for name in NAMES] + \
    [pytest.param(name, "inductor", id=f"{name}-inductor") for name in ("Adam", "SGD", "Muon")]


#: Compiled, torch.optim itself steps otherwise than eagerly (its step sizes from its float32
#: "step" tensors, eps folded into the denominator: 1.5e-6 apart in four Adam steps of this
#: float64 model, torch on both sides), so this test, about a compiled step running and stepping
#: each param once, allows 1e-5: not stepping a param, or stepping it twice, is off by ~1e-3 here.
COMPILED_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,backend", COMPILED)
def test_compiled_train_step_matches_eager_torch(name, backend):
    """forward, backward, step() and zero_grad() under torch.compile (fastopt may graph-break at
    step()) give the params of the same steps with torch.optim in eager mode."""
    if backend == "inductor" and not _inductor_works():
        pytest.skip("inductor cannot compile on this machine (no C compiler?)")
    torch._dynamo.reset()
    config = contract.CONFIG.get(name, {})
    tolerance = dict(COMPILED_TOLERANCE)
    models, optimizers = {}, {}
    for label, make in (("ours", contract.ours_class(name)), ("theirs", contract.reference_class(name))):
        model = torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.Tanh(),
                                    torch.nn.Linear(5, 2, bias=False)).double()
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(seeded(f"compiled model {i}", p.shape))
        models[label], optimizers[label] = model, make(model.parameters(), **config)

    def train_step(x):
        loss = models["ours"](x).square().mean()
        loss.backward()
        optimizers["ours"].step()
        optimizers["ours"].zero_grad()
        return loss

    compiled = torch.compile(train_step, backend=backend)
    start = [p.detach().clone() for p in models["theirs"].parameters()]
    for k in range(4):
        x = seeded(f"compiled input {k}", (8, 4)).double()
        compiled(x)
        loss = models["theirs"](x).square().mean()
        loss.backward()
        optimizers["theirs"].step()
        optimizers["theirs"].zero_grad()
        if name == "Muon":   # bfloat16 Newton-Schulz: see Twin.tolerance, here over 3 layers' gradients
            tolerance["atol"] = (k + 1) * contract.LR[name] * math.sqrt(2.0) * 2.0 ** -3
        for ours, theirs in zip(models["ours"].parameters(), models["theirs"].parameters()):
            torch.testing.assert_close(ours.detach(), theirs.detach(), **tolerance,
                                       msg=lambda m: f"{name}, {backend}, step {k + 1}: {m}")
    assert all(not torch.equal(p.detach(), s) for p, s in zip(models["theirs"].parameters(), start))
