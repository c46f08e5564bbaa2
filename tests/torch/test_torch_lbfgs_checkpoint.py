"""Checkpoints of fastopt.torch.LBFGS and torch.optim.LBFGS move both ways.

Both keep torch's state layout in ``state[params[0]]`` (``d``, ``t``, ``old_dirs``, ``old_stps``,
``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``n_iter``, ``func_evals``), so a state_dict
saved by either (through ``torch.save`` / ``torch.load``) loads into the other and the run goes on
along the trajectory it was on. A bad checkpoint is refused, naming the entry, before the optimizer
changes.

The problem is a 30-dimensional separable quartic with curvatures from 1 to 100, started far enough
from its minimum that six steps of four iterations are still moving (the last three steps move the
parameters by ~0.5 relative): the history matters, and with ``history_size=3`` it has wrapped
several times before the checkpoint. Measured on this problem (2026-12, torch 2.13): the resumed run
differs from either uninterrupted run by <= 6e-15 (float64) and <= 3.3e-6 (float32, torch sums in
float32, fastopt in double) of max |x|; the same hand-off with the history dropped lands 3.6e-3 to
1.6e-2 away, far outside the tolerances below.
"""
import io

import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.torch

CLASSES = {"fastopt": ft.LBFGS, "torch": torch.optim.LBFGS}
HISTORY = 3
OPTIONS = dict(history_size=HISTORY, max_iter=4)
BEFORE, AFTER = 3, 3   # steps before and after the checkpoint
TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-13),
             torch.float32: dict(rtol=1e-5, atol=5e-5)}
TORCH_KEYS = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
              "prev_flat_grad", "prev_loss"}


def quartic(dtype):
    """(start, loss) of 0.5 sum lam_i (x_i - c_i)^2 + 0.25 sum (x_i - c_i)^4, lam in [1, 100]."""
    generator = torch.Generator().manual_seed(0)
    curvature = torch.logspace(0, 2, 30, dtype=dtype)
    center = torch.randn(30, generator=generator, dtype=dtype)

    def loss(params):
        x = params[0] - center
        return 0.5 * (curvature * x * x).sum() + 0.25 * (x ** 4).sum()
    return [torch.zeros(30, dtype=dtype)], loss


def build(cls, start, loss_fn, **options):
    """Fresh parameters (copies of ``start``), an optimizer of ``cls`` on them and its closure."""
    params = [torch.nn.Parameter(t.detach().clone()) for t in start]
    opt = cls(params, **options)

    def closure():
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss
    return params, opt, closure


def run(opt, closure, steps):
    for _ in range(steps):
        opt.step(closure)


def through_file(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)   # weights_only: tensors, numbers, lists and strings only


def uninterrupted(name, dtype, line_search_fn):
    start, loss_fn = quartic(dtype)
    params, opt, closure = build(CLASSES[name], start, loss_fn, line_search_fn=line_search_fn,
                                 **OPTIONS)
    run(opt, closure, BEFORE + AFTER)
    return params, opt


def assert_same_params(actual, expected, **tolerance):
    for p, q in zip(actual, expected):
        torch.testing.assert_close(p.detach(), q.detach(), **tolerance)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"], ids=["fixed_step", "wolfe"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("first, second", [("fastopt", "torch"), ("torch", "fastopt")],
                         ids=["fastopt_to_torch", "torch_to_fastopt"])
def test_checkpoint_moves_between_fastopt_and_torch(first, second, dtype, line_search_fn):
    start, loss_fn = quartic(dtype)
    params, opt, closure = build(CLASSES[first], start, loss_fn, line_search_fn=line_search_fn,
                                 **OPTIONS)
    run(opt, closure, BEFORE)
    state = opt.state[params[0]]
    # the ring has wrapped: many more iterations (each storing a pair here) than history_size
    assert state["n_iter"] >= 3 * HISTORY and len(state["old_dirs"]) == HISTORY
    checkpoint = through_file(opt.state_dict())

    # the second optimizer is built with other options: the checkpoint's must win, as in torch
    resumed, second_opt, second_closure = build(CLASSES[second], params, loss_fn)
    second_opt.load_state_dict(checkpoint)
    assert second_opt.param_groups[0]["history_size"] == HISTORY
    run(second_opt, second_closure, AFTER)

    tolerance = TOLERANCE[dtype]
    for name in CLASSES:   # the first's own continuation and the second's whole run
        reference, reference_opt = uninterrupted(name, dtype, line_search_fn)
        assert_same_params(resumed, reference, **tolerance)
        if dtype == torch.float64:
            theirs = reference_opt.state[reference[0]]
            ours = second_opt.state[resumed[0]]
            assert (ours["n_iter"], ours["func_evals"]) == (theirs["n_iter"], theirs["func_evals"])
    # control: the same hand-off without the history lands outside the tolerance
    dropped = through_file(opt.state_dict())
    dropped["state"][0].update(old_dirs=[], old_stps=[], ro=[])
    control, control_opt, control_closure = build(CLASSES[second], params, loss_fn)
    control_opt.load_state_dict(dropped)
    run(control_opt, control_closure, AFTER)
    with pytest.raises(AssertionError):
        assert_same_params(control, resumed, **tolerance)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"], ids=["fixed_step", "wolfe"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("via_file", [True, False], ids=["torch_save", "in_memory"])
def test_fastopt_round_trip_resumes_bit_identically(dtype, line_search_fn, via_file):
    """The state holds exactly what the engine keeps (vectors and ro in the params' dtype, t,
    H_diag and prev_loss as Python floats, which load_state_dict does not cast), and loading
    copies it bit for bit, so the resumed run is the uninterrupted one, to the last bit."""
    start, loss_fn = quartic(dtype)
    params, opt, closure = build(ft.LBFGS, start, loss_fn, line_search_fn=line_search_fn,
                                 **OPTIONS)
    run(opt, closure, BEFORE)
    checkpoint = opt.state_dict()
    if via_file:
        checkpoint = through_file(checkpoint)
    resumed, second_opt, second_closure = build(ft.LBFGS, params, loss_fn)
    second_opt.load_state_dict(checkpoint)
    run(second_opt, second_closure, AFTER)
    run(opt, closure, AFTER)   # the first optimizer goes on: the uninterrupted run
    assert torch.equal(resumed[0], params[0])
    ours, straight = second_opt.state[resumed[0]], opt.state[params[0]]
    assert set(ours) == set(straight) == TORCH_KEYS
    for key in TORCH_KEYS:
        if isinstance(straight[key], torch.Tensor):
            assert torch.equal(ours[key], straight[key]), key
        elif isinstance(straight[key], list):
            assert all(torch.equal(a, b) for a, b in zip(ours[key], straight[key], strict=True))
        else:
            assert ours[key] == straight[key], key


def test_state_has_torchs_layout():
    """Key for key and type for type the state torch.optim.LBFGS keeps (less its scratch list
    ``al``), in state[params[0]]; H_diag is a number as in torch's own state after its first
    iteration, so torch's load_state_dict does not round it to float32."""
    start, loss_fn = quartic(torch.float32)
    ours, our_opt, our_closure = build(ft.LBFGS, start, loss_fn, **OPTIONS)
    theirs, torch_opt, torch_closure = build(torch.optim.LBFGS, start, loss_fn, **OPTIONS)
    run(our_opt, our_closure, 2)
    run(torch_opt, torch_closure, 2)
    our_state, torch_state = our_opt.state[ours[0]], torch_opt.state[theirs[0]]
    assert set(our_opt.state) == {ours[0]}
    assert set(our_state) == set(torch_state) - {"al"} == TORCH_KEYS
    for key in ("d", "prev_flat_grad"):
        assert our_state[key].shape == torch_state[key].shape == (30,)
        assert our_state[key].dtype == torch.float32
    for key in ("old_dirs", "old_stps", "ro"):
        assert isinstance(our_state[key], list) and len(our_state[key]) == HISTORY
    assert all(r.shape == () and r.dtype == torch.float32 for r in our_state["ro"])
    for key in ("func_evals", "n_iter"):
        assert type(our_state[key]) is int
    for key in ("t", "H_diag", "prev_loss"):
        assert type(our_state[key]) is float
    groups = our_opt.state_dict()["param_groups"]
    assert groups[0].keys() == torch_opt.state_dict()["param_groups"][0].keys()


def test_state_dict_is_a_snapshot():
    """Steps after state_dict() do not change it (the history lives in a ring buffer that later
    pairs overwrite)."""
    start, loss_fn = quartic(torch.float64)
    params, opt, closure = build(ft.LBFGS, start, loss_fn, **OPTIONS)
    run(opt, closure, 2)
    taken = opt.state_dict()
    kept = through_file(taken)
    run(opt, closure, 2)
    for key in ("d", "prev_flat_grad"):
        assert torch.equal(taken["state"][0][key], kept["state"][0][key])
    for key in ("old_dirs", "old_stps", "ro"):
        assert all(torch.equal(a, b) for a, b in zip(taken["state"][0][key],
                                                     kept["state"][0][key], strict=True))


def test_clearing_the_state_starts_afresh_as_in_torch():
    start, loss_fn = quartic(torch.float64)
    ours, our_opt, our_closure = build(ft.LBFGS, start, loss_fn, **OPTIONS)
    theirs, torch_opt, torch_closure = build(torch.optim.LBFGS, start, loss_fn, **OPTIONS)
    for opt, closure in ((our_opt, our_closure), (torch_opt, torch_closure)):
        run(opt, closure, 2)
        opt.state.clear()
        run(opt, closure, 2)
    assert_same_params(ours, theirs, **TOLERANCE[torch.float64])
    assert our_opt.state[ours[0]]["n_iter"] == torch_opt.state[theirs[0]]["n_iter"]


def test_history_size_changed_between_steps_takes_effect():
    """A larger history_size set in param_groups between steps keeps the pairs and then holds
    more, exactly as loading the same state with that history_size does (torch.optim.LBFGS
    raises IndexError here: its scratch list keeps the old length); a smaller one than the
    pairs held is refused, naming history_size, before anything changes."""
    start, loss_fn = quartic(torch.float64)
    changed, opt, closure = build(ft.LBFGS, start, loss_fn, **OPTIONS)
    run(opt, closure, BEFORE)
    checkpoint = opt.state_dict()
    checkpoint["param_groups"][0]["history_size"] = 2 * HISTORY
    loaded, loaded_opt, loaded_closure = build(ft.LBFGS, changed, loss_fn)
    loaded_opt.load_state_dict(checkpoint)
    opt.param_groups[0]["history_size"] = 2 * HISTORY
    run(opt, closure, AFTER)
    run(loaded_opt, loaded_closure, AFTER)
    assert len(opt.state[changed[0]]["old_dirs"]) == 2 * HISTORY
    assert torch.equal(changed[0], loaded[0])

    before = _state_of(opt)
    opt.param_groups[0]["history_size"] = 2
    with pytest.raises(ValueError, match=r"holds 6 pairs, more than history_size=2"):
        opt.step(closure)
    opt.param_groups[0]["history_size"] = 2 * HISTORY
    assert _state_of(opt) == before


# -- bad checkpoints -------------------------------------------------------------------------------
def _entry(sd):
    return sd["state"][0]


def _ring_layout(sd):
    """What development versions of fastopt.torch.LBFGS saved: torch's counters, d, t, H_diag,
    prev_flat_grad and prev_loss, and the pairs as one (2 m, n) ring with rho, newest and count."""
    entry = _entry(sd)
    n = entry["d"].numel()
    ring = torch.zeros(2 * HISTORY, n, dtype=entry["d"].dtype)
    for k, (s, y) in enumerate(zip(entry.pop("old_stps"), entry.pop("old_dirs"))):
        ring[2 * k], ring[2 * k + 1] = s, y
    entry.update(history=ring, rho=torch.stack(entry.pop("ro")), newest=HISTORY - 1,
                 count=HISTORY)


def _set(key, value):
    return lambda sd: _entry(sd).__setitem__(key, value(_entry(sd)))


BAD = {
    "ring_layout": (_ring_layout, ValueError, r"\['state'\]\[0\] holds 'history'.*ring-buffer"),
    "missing_d": (lambda sd: _entry(sd).pop("d"), ValueError, r"\['state'\]\[0\].*lacks 'd'"),
    "missing_n_iter": (lambda sd: _entry(sd).pop("n_iter"), ValueError, r"lacks 'n_iter'"),
    "negative_n_iter": (_set("n_iter", lambda e: -1), ValueError, r"\['n_iter'\] must be >= 0"),
    "short_d": (_set("d", lambda e: e["d"][:-1]), ValueError,
                r"\['d'\] has shape \(29,\), expected \(30,\)"),
    "wide_prev_flat_grad": (_set("prev_flat_grad", lambda e: e["prev_flat_grad"][None]),
                            ValueError, r"\['prev_flat_grad'\] has shape \(1, 30\)"),
    "short_pair": (lambda sd: _entry(sd)["old_dirs"].__setitem__(1, _entry(sd)["old_dirs"][1][:5]),
                   ValueError, r"\['old_dirs'\]\[1\] has shape \(5,\)"),
    "pair_not_a_tensor": (lambda sd: _entry(sd)["old_stps"].__setitem__(0, [0.0] * 30),
                          TypeError, r"\['old_stps'\]\[0\] must be a tensor"),
    "history_lengths_differ": (_set("ro", lambda e: e["ro"][:-1]), ValueError,
                               r"'old_stps', 'old_dirs' and 'ro' must have one length"),
    "history_longer_than_history_size": (
        lambda sd: sd["param_groups"][0].__setitem__("history_size", 2), ValueError,
        r"holds 3 pairs, more than history_size=2"),
    "history_not_a_list": (_set("old_dirs", lambda e: None), TypeError,
                           r"\['old_dirs'\] must be a list"),
    "ro_not_a_number": (lambda sd: _entry(sd)["ro"].__setitem__(0, torch.ones(2)), TypeError,
                        r"\['ro'\]\[0\] must be a real number or a one-element"),
    "t_not_a_number": (_set("t", lambda e: "1.0"), TypeError, r"\['t'\] must be a real number"),
    "group_without_history_size": (lambda sd: sd["param_groups"][0].pop("history_size"),
                                   ValueError, r"param_groups'\]\[0\] lacks 'history_size'"),
    "negative_lr": (lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0), ValueError,
                    r"param_groups'\]\[0\]: Invalid learning rate: -1.0"),
    "unknown_line_search": (lambda sd: sd["param_groups"][0].__setitem__("line_search_fn", "x"),
                            ValueError, r"line_search_fn must be None or 'strong_wolfe'"),
}


def _state_of(opt):
    """The optimizer's state_dict, as nested Python values (tensors as lists)."""
    def plain(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", value.dtype, value.tolist())
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value
    return plain(opt.state_dict())


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_checkpoint_is_refused_naming_the_entry_and_changes_nothing(name):
    mutate, error, message = BAD[name]
    start, loss_fn = quartic(torch.float64)
    params, source, closure = build(ft.LBFGS, start, loss_fn, **OPTIONS)
    run(source, closure, BEFORE)
    checkpoint = through_file(source.state_dict())
    mutate(checkpoint)
    # the target is mid-run, with other options: a failed load must keep all of it
    target_params, target, target_closure = build(ft.LBFGS, start, loss_fn, history_size=5,
                                                  max_iter=3, line_search_fn="strong_wolfe")
    twin_params, twin, twin_closure = build(ft.LBFGS, start, loss_fn, history_size=5,
                                            max_iter=3, line_search_fn="strong_wolfe")
    run(target, target_closure, 2)
    run(twin, twin_closure, 2)
    before = _state_of(target)
    with pytest.raises(error, match=message):
        target.load_state_dict(checkpoint)
    assert _state_of(target) == before
    run(target, target_closure, 2)
    run(twin, twin_closure, 2)
    assert torch.equal(target_params[0], twin_params[0])


def test_state_without_iterations_loads():
    """torch's state after a step that found the gradient already small: counters only."""
    start, loss_fn = quartic(torch.float64)
    theirs, torch_opt, torch_closure = build(torch.optim.LBFGS, start, loss_fn,
                                             tolerance_grad=1e6)
    torch_opt.step(torch_closure)
    checkpoint = through_file(torch_opt.state_dict())
    assert set(checkpoint["state"][0]) == {"func_evals", "n_iter"}
    ours, our_opt, our_closure = build(ft.LBFGS, start, loss_fn)
    our_opt.load_state_dict(checkpoint)
    assert our_opt.state[ours[0]] == {"func_evals": 1, "n_iter": 0}
    checkpoint["param_groups"][0]["tolerance_grad"] = 1e-7
    for opt in (our_opt, torch_opt):
        opt.load_state_dict(checkpoint)
    run(our_opt, our_closure, 2)
    run(torch_opt, torch_closure, 2)
    assert_same_params(ours, theirs, **TOLERANCE[torch.float64])
