"""fastopt.torch checkpoints and hyperparameters the way torch.optim takes (or refuses) them.

* Older checkpoints keep scalar states (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) and the
  step count as Python numbers; torch makes them tensors on load, and fastopt.torch takes them too.
* A checkpoint of another optimizer (a ``torch.optim.SGD`` one into Adam, ...) is refused with a
  ValueError naming what it lacks, and the optimizer is left as it was.
* A step count that is not a whole number (1.5, NaN, two elements) is refused naming the entry.
* A multi-element tensor hyperparameter is refused naming it, wherever it comes from.
* ``stochastic_rounding=True`` is refused where it would be ignored: float16 params, or no bfloat16
  param at all.
"""
import copy
import math

import pytest

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402
from fastopt.algorithms import ALGORITHMS, BY_NAME  # noqa: E402
from reference import REQUIRED_ARGUMENTS  # noqa: E402  (tests/_support: pytest's pythonpath)

pytestmark = pytest.mark.torch

STEPS = 3


def _grads(shape, dtype, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=dtype) for _ in range(n)]


def _step(opt, param, grads):
    for grad in grads:
        param.grad = grad.clone()
        opt.step()


def _model_param(name, dtype=torch.float32, seed=0):
    """A param the algorithm takes (Muon: a matrix)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=dtype))


def _snapshot(opt):
    """The optimizer's groups (without params) and state, as copies to compare with later."""
    groups = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    state = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for i, s in enumerate(opt.state.values())}
    return copy.deepcopy(groups), state


def _assert_unchanged(opt, snapshot):
    groups, state = _snapshot(opt)
    assert groups == snapshot[0]
    assert state.keys() == snapshot[1].keys()
    for i, entry in state.items():
        assert entry.keys() == snapshot[1][i].keys()
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(snapshot[1][i][key])), key


# ------------------------------------------------------------------------------------------------
# (1) Scalar states saved as Python numbers
# ------------------------------------------------------------------------------------------------

# (algorithm, the states given as Python numbers, whether the step count is one too)
OLD_SCALARS = [("NAdam", ("mu_product",), False), ("NAdam", ("mu_product",), True),
               ("ASGD", ("eta",), False), ("ASGD", ("mu",), False), ("ASGD", ("eta", "mu"), False),
               ("ASGD", ("eta", "mu"), True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,numbers,step_number", OLD_SCALARS,
                         ids=[f"{n}-{'+'.join(s)}{'-step' if t else ''}" for n, s, t in OLD_SCALARS])
def test_scalar_states_saved_as_python_numbers_load_as_torch_loads_them(name, numbers, step_number,
                                                                       dtype):
    # t0=1 (ASGD): eta and mu change from the second step on, so the loaded values matter
    kwargs = {"t0": 1.0, "lambd": 1e-2} if name == "ASGD" else {}
    grads = _grads((4, 3), dtype, 2 * STEPS, seed=1)
    source = _model_param(name, dtype)
    saver = getattr(torch.optim, name)([source], foreach=False, **kwargs)
    _step(saver, source, grads[:STEPS])
    sd = saver.state_dict()
    for entry in sd["state"].values():
        for key in numbers:
            entry[key] = entry[key].item()          # as an older torch saved it
        if step_number:
            entry["step"] = int(entry["step"].item())
        assert all(not isinstance(entry[key], torch.Tensor) for key in numbers)

    ours_p = torch.nn.Parameter(source.detach().clone())
    theirs_p = torch.nn.Parameter(source.detach().clone())
    ours = getattr(ft, name)([ours_p], **kwargs)
    theirs = getattr(torch.optim, name)([theirs_p], foreach=False, **kwargs)
    ours.load_state_dict(copy.deepcopy(sd))
    theirs.load_state_dict(copy.deepcopy(sd))
    for key in numbers:
        assert torch.equal(ours.state[ours_p][key], theirs.state[theirs_p][key].float()), key
    assert float(ours.state[ours_p]["step"]) == float(theirs.state[theirs_p]["step"]) == STEPS
    _step(ours, ours_p, grads[STEPS:])
    _step(theirs, theirs_p, grads[STEPS:])
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours_p, theirs_p, **tol)


# ------------------------------------------------------------------------------------------------
# (2) A checkpoint of another optimizer
# ------------------------------------------------------------------------------------------------

def _sgd_checkpoint(momentum):
    p = _model_param("SGD", seed=5)
    sgd = torch.optim.SGD([p], lr=0.5, momentum=momentum)
    _step(sgd, p, _grads((4, 3), torch.float32, 2, seed=6))
    return sgd.state_dict()


#: (bitsandbytes' SGD8bit and LARS8bit keep SGD's group keys: a torch SGD checkpoint's groups fit them)
OTHERS = [a.name for a in ALGORITHMS if a.name not in ("SGD", "SGD8bit", "LARS8bit")]
_ADAM_LIKE = ("lr", "betas", "eps", "weight_decay")
# The group keys every checkpoint of each algorithm holds: all but those torch added later and fills
# on load (its optimizers' __setstate__: foreach, maximize, amsgrad, ...).
REQUIRED = {"Adadelta": ("lr", "rho", "eps", "weight_decay"),
            "Adafactor": ("lr", "beta2_decay", "eps", "d", "weight_decay"),
            "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
            "Adam": _ADAM_LIKE, "AdamW": _ADAM_LIKE, "Adamax": _ADAM_LIKE, "RAdam": _ADAM_LIKE,
            "NAdam": _ADAM_LIKE + ("momentum_decay",),
            "ASGD": ("lr", "lambd", "alpha", "t0", "weight_decay"),
            "Muon": ("lr", "weight_decay", "momentum", "ns_coefficients", "eps", "ns_steps",
                     "adjust_lr_fn"),
            "RMSprop": ("lr", "alpha", "eps", "weight_decay"),
            "Rprop": ("lr", "etas", "step_sizes"),
            "SGD": ("lr", "dampening", "weight_decay")}


def _required(name):
    """The keys every checkpoint of ``name`` holds: torch's rule for torch's algorithms (above);
    for one torch lacks, nothing was added later, so every hyperparameter but the flags."""
    if name in REQUIRED:
        return REQUIRED[name]
    algorithm = BY_NAME[name]
    assert algorithm.torch_name is None, f"REQUIRED lacks torch.optim.{algorithm.torch_name}'s keys"
    # a bitsandbytes class fills the keys bitsandbytes' checkpoints lack (Adagrad's lr_decay), and,
    # as torch for its namesake, a switch that turns a state on (RMSprop's and SGD's momentum)
    implied = set(algorithm.bitsandbytes_groups) & set(algorithm.hyper_by_name)
    if algorithm.bitsandbytes_states:
        implied |= {h.name for h in algorithm.hyperparameters for s in algorithm.state
                    if s.when and h.name in s.when}
    return tuple(h.name for h in algorithm.hyperparameters
                 if h.constraint.kind != "flag" and h.name not in implied)


@pytest.mark.parametrize("name", OTHERS)
def test_a_torch_sgd_checkpoint_is_refused_by_every_other_algorithm(name):
    """An SGD checkpoint has no betas, rho, eps... (and its state no exp_avg): torch would load it
    and fail later, or run with defaults nobody chose; fastopt.torch refuses it up front."""
    p = _model_param(name)
    opt = getattr(ft, name)([p], **dict(REQUIRED_ARGUMENTS.get(name, {}), lr=1e-3))
    _step(opt, p, _grads((4, 3), torch.float32, 2, seed=2))
    before = _snapshot(opt)
    lacking = [key for key in _required(name) if key not in _sgd_checkpoint(0.0)["param_groups"][0]]
    assert lacking, f"an SGD checkpoint holds every key {name} needs"
    for momentum in (0.0, 0.9):
        with pytest.raises(ValueError, match=r"state_dict\['param_groups'\]\[0\] has no ") as info:
            opt.load_state_dict(_sgd_checkpoint(momentum))
        assert all(f"'{key}'" in str(info.value) for key in lacking), (lacking, str(info.value))
        _assert_unchanged(opt, before)
    assert opt.param_groups[0]["lr"] == 1e-3                # not SGD's 0.5
    # given this optimizer's hyperparameters, the state of SGD with momentum is still not its own
    sd = _sgd_checkpoint(0.9)
    sd["param_groups"][0] = {**before[0][0], **sd["param_groups"][0]}
    algorithm = getattr(ft, name)._fastopt_cls.algorithm
    if name != "Muon":            # (Muon keeps a momentum buffer and no step count, as SGD)
        keeps_one = "momentum_buffer" in {state.name for state in algorithm.state}   # RMSprop
        with pytest.raises(ValueError, match=r"state_dict\['state'\]\[0\] has " + (
                "no 'step'" if keeps_one else r"unknown entries \['momentum_buffer'\]")):
            opt.load_state_dict(sd)
        _assert_unchanged(opt, before)
    _step(opt, p, _grads((4, 3), torch.float32, 1, seed=3))   # still steps


@pytest.mark.parametrize("name", [a.name for a in ALGORITHMS])
def test_a_group_without_one_of_the_algorithms_hyperparameters_is_refused(name):
    """torch fills only the keys it added over the years (foreach, maximize, ...); a checkpoint
    without, say, its eps was not made by this algorithm (or was edited), and is refused naming
    the key instead of running with the default."""
    assert set(REQUIRED) == {a.name for a in ALGORITHMS if a.torch_name}
    p = _model_param(name)
    opt = getattr(ft, name)([p], **REQUIRED_ARGUMENTS.get(name, {}))
    _step(opt, p, _grads((4, 3), torch.float32, 2, seed=2))
    before = _snapshot(opt)
    packs = BY_NAME[name].bitsandbytes_groups   # (bitsandbytes' keys that pack ours: SGD's betas)
    for key in _required(name):
        sd = opt.state_dict()
        del sd["param_groups"][0][key]
        for packed, spec in packs.items():
            if isinstance(spec, tuple) and key in spec:
                del sd["param_groups"][0][packed]
        with pytest.raises(ValueError, match=rf"\['param_groups'\]\[0\] has no '{key}'"):
            opt.load_state_dict(sd)
        _assert_unchanged(opt, before)


# ------------------------------------------------------------------------------------------------
# (3) Step counts that are not whole numbers
# ------------------------------------------------------------------------------------------------

BAD_STEPS = {"fraction": torch.tensor(1.5), "two elements": torch.tensor([1.0, 2.0]),
             "NaN": torch.tensor(math.nan)}


@pytest.mark.parametrize("bad", sorted(BAD_STEPS))
@pytest.mark.parametrize("name", ["Adam", "NAdam", "ASGD", "Rprop"])
def test_a_step_count_that_is_not_a_whole_number_is_refused_naming_it(name, bad):
    p = _model_param(name)
    opt = getattr(ft, name)([p])
    _step(opt, p, _grads((4, 3), torch.float32, 2, seed=2))
    before = _snapshot(opt)
    sd = opt.state_dict()
    sd["state"][0]["step"] = BAD_STEPS[bad]
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\[0\]\['step'\] must be a whole number"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)


# ------------------------------------------------------------------------------------------------
# (4) A tensor hyperparameter of more than one element
# ------------------------------------------------------------------------------------------------

def _two(value):
    return torch.tensor([value, value])


def test_a_multi_element_tensor_lr_is_refused_naming_lr_wherever_it_comes_from():
    p = torch.nn.Parameter(torch.randn(3))
    q = torch.nn.Parameter(torch.randn(2))
    named = r"Tensor lr must be 1-element"
    with pytest.raises(ValueError, match=named + r".*param group 0"):
        ft.Adam([{"params": [p], "lr": _two(1e-3)}])
    with pytest.raises(ValueError, match=named + r".*param group 1"):
        ft.SGD([{"params": [p]}, {"params": [q], "lr": _two(1e-3)}])
    opt = ft.Adam([p])
    with pytest.raises(ValueError, match=named):
        opt.add_param_group({"params": [q], "lr": _two(1e-3)})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["lr"] = _two(1e-3)                    # by hand, then a step
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=named + r".*param_groups\[0\]"):
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = _two(1e-3)
    with pytest.raises(ValueError, match=named + r".*state_dict\['param_groups'\]\[0\]"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_a_multi_element_tensor_item_of_a_pair_is_refused_naming_it():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"Tensor betas\[1\] must be 1-element"):
        ft.Adam([{"params": [p], "betas": (torch.tensor(0.9), _two(0.999))}])


# ------------------------------------------------------------------------------------------------
# (5) stochastic_rounding for params it would not act on
# ------------------------------------------------------------------------------------------------

def test_stochastic_rounding_is_refused_for_float16_params():
    """float16 stores round to nearest: the option would be silently ignored for them."""
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"stochastic_rounding.*param 0 .*float16"):
        ft.Adam([p], stochastic_rounding=True)
    half = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"stochastic_rounding.*param 1 "):
        ft.SGD([half, p], lr=0.1, stochastic_rounding=True, seed=0)
    opt = ft.SGD([half], lr=0.1, stochastic_rounding=True, seed=0)     # bfloat16: what it is for
    with pytest.raises(ValueError, match=r"stochastic_rounding.*param 1 "):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1
    half.grad = torch.ones_like(half)
    opt.step()                                        # the refused group left no trace
    half.grad = torch.ones_like(half)
    opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_stochastic_rounding_needs_a_bfloat16_param_and_leaves_wider_ones_exact(dtype):
    p = torch.nn.Parameter(torch.randn(3, dtype=dtype))
    with pytest.raises(ValueError, match=r"stochastic_rounding.*params has none"):
        ft.Adam([p], stochastic_rounding=True)
    # beside bfloat16 params (a model's float32 norms, say), a wider param steps as without it
    half = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    twin = torch.nn.Parameter(p.detach().clone())
    opt = ft.SGD([half, p], lr=0.1, momentum=0.9, stochastic_rounding=True, seed=0)
    plain = ft.SGD([twin], lr=0.1, momentum=0.9)
    for _ in range(3):
        half.grad = torch.ones_like(half)
        p.grad = torch.full_like(p, 0.3)
        twin.grad = torch.full_like(twin, 0.3)
        opt.step()
        plain.step()
    assert torch.equal(p, twin)
