"""fastopt.torch across changes of its param groups: what the differential contract tests
(test_torch_contract.py) do not show -- groups with no params, params swapped at every step
without piling up, and the state reassigned wholesale."""
import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.torch


def _pair(**kwargs):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    make = [lambda ps: ft.AdamW([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}], lr=0.1, **kwargs),
            lambda ps: torch.optim.AdamW([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}], lr=0.1,
                                         foreach=False, **kwargs)]
    return (ours, make[0](ours)), (theirs, make[1](theirs))


def test_groups_emptied_between_steps_as_zero3_does():
    """ZeRO-3 empties every group's params and puts one partition in for its step only: a group
    with no params is stepped as nothing, as torch.optim steps it, and each param keeps its state."""
    sides = _pair()
    for step in range(4):
        for params, opt in sides:
            for p in params:
                p.grad = torch.full_like(p, 0.25 * (step + 1))
            g = step % 2
            opt.param_groups[g]["params"] = [params[g]]
            opt.param_groups[1 - g]["params"] = []
            opt.step()
            opt.param_groups[g]["params"] = []
        for a, b in zip(sides[0][0], sides[1][0]):
            torch.testing.assert_close(a, b)
    (ours, opt), _ = sides
    assert opt.state[ours[0]]["step"] == 2 and opt.state[ours[1]]["step"] == 2
    opt.step()                                # every group empty: nothing to step, no error
    assert opt.state[ours[0]]["step"] == 2


def test_params_swapped_at_every_step_do_not_pile_up():
    """A group's params replaced by new tensors at every step: the optimizer must not keep the
    old ones alive (torch.optim keeps only the state of params that have some)."""
    keep = torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([keep], lr=0.1)
    gone = []
    for _ in range(20):
        fresh = torch.nn.Parameter(torch.ones(3))
        gone.append(weakref.ref(fresh))
        opt.param_groups[0]["params"] = [fresh]
        opt.step()                            # no gradient: no state
        del fresh
    gc.collect()
    assert sum(ref() is not None for ref in gone) <= 2


def test_state_reassigned_wholesale_and_read_back():
    """``opt.state = opt.state`` and ``opt.state = {p: {...}}`` (a reset of one param) are seen by
    the next step as torch.optim sees them."""
    (ours, opt), (theirs, ref) = _pair()
    for step in range(3):
        for (params, o) in ((ours, opt), (theirs, ref)):
            for p in params:
                p.grad = torch.full_like(p, 0.5 - step)
            o.step()
        if step == 0:
            opt.state = opt.state
        if step == 1:
            saved = {name: v.clone() for name, v in ref.state[theirs[0]].items()}
            opt.state = {ours[0]: {name: v.clone() for name, v in saved.items()}}
            ref.state = {theirs[0]: saved}
            from collections import defaultdict
            ref.state = defaultdict(dict, ref.state)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b)
    assert opt.state[ours[1]]["step"] == ref.state[theirs[1]]["step"] == 1
    with pytest.raises(TypeError, match="keyed by params"):
        opt.state = {"exp_avg": torch.zeros(4)}
    assert opt.state[ours[0]]["step"] == 3       # the refused assignment changed nothing
