"""fastopt.torch's fast gradient gather (raw pointers read through torch's C API) and its fallbacks.

Every case the fast gather does not vouch for must reach the precise checks: the same errors, the
same results as before, nothing written on an error.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.torch


def _pair(shapes, **kwargs):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    return ours, ft.Adam(ours, **kwargs), theirs, torch.optim.Adam(theirs, foreach=False, **kwargs)


def test_new_grad_tensors_every_step_and_empty_params():
    ours, opt, theirs, topt = _pair([(3, 4), (0,), (5,)], lr=0.1)
    for step in range(4):
        for o, ps in ((opt, ours), (topt, theirs)):
            o.zero_grad()       # set_to_none: new gradient tensors every step
            for p in ps:
                p.grad = torch.full_like(p, 0.5 + step)
            o.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert int(opt.state[ours[1]]["step"]) == int(topt.state[theirs[1]]["step"]) == 4


def test_gradients_the_fast_gather_does_not_vouch_for():
    ours, opt, _, _ = _pair([(4, 4)], lr=0.1)
    p = ours[0]
    before = p.detach().clone()
    p.grad = torch.ones(4, 4).t()        # same shape and dtype, not contiguous
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    p.grad = torch._neg_view(torch.ones(4, 4))
    with pytest.raises(ValueError, match="neg"):
        opt.step()
    p.grad = torch.ones(4, 4)
    p.grad.data = torch.ones(16, dtype=torch.float64)   # .data can change a gradient's dtype and size
    with pytest.raises(TypeError, match="dtype"):
        opt.step()
    p.grad = torch.ones(4, 4).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert torch.equal(p.detach(), before)     # nothing written by any of them
    assert not opt.state


class _Subclass(torch.Tensor):
    pass


def test_a_gradient_of_a_tensor_subclass_takes_the_precise_path():
    ours, opt, theirs, topt = _pair([(6,)], lr=0.1)
    ours[0].grad = torch.ones(6).as_subclass(_Subclass)
    theirs[0].grad = torch.ones(6)
    opt.step()
    topt.step()
    torch.testing.assert_close(ours[0], theirs[0])


def test_param_memory_replaced_after_construction_is_stepped_with_its_state():
    """torch.optim steps whatever memory a param has at step time, with the param's state: so
    does the adapter, which sees the new data pointer in the fast gather and rebuilds its views."""
    ours, opt, theirs, topt = _pair([(5,)], lr=0.1)
    for step in range(3):
        if step == 1:
            ours[0].data = torch.linspace(-1, 1, 5)
            theirs[0].data = torch.linspace(-1, 1, 5)
        ours[0].grad = torch.full((5,), 0.5 + step)
        theirs[0].grad = torch.full((5,), 0.5 + step)
        opt.step()
        topt.step()
        torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(opt.state[ours[0]]["exp_avg"], topt.state[theirs[0]]["exp_avg"])


def test_changed_hyperparameters_reach_the_kernel_after_caching():
    """A group's hyperparameters are pushed once and cached; an assignment (a scheduler's) or an
    in-place change of a tensor lr must still take effect at the next step."""
    for lr_value in (0.1, torch.tensor(0.1)):
        ours, opt, theirs, topt = _pair([(8,)], lr=lr_value)
        for step in range(6):
            if step == 2:
                opt.param_groups[0]["betas"] = (0.5, 0.9)
                topt.param_groups[0]["betas"] = (0.5, 0.9)
            if step == 4:
                if isinstance(lr_value, torch.Tensor):
                    opt.param_groups[0]["lr"].fill_(0.01)
                    topt.param_groups[0]["lr"].fill_(0.01)
                else:
                    opt.param_groups[0]["lr"] = 0.01
                    topt.param_groups[0]["lr"] = 0.01
            for o, ps in ((opt, ours), (topt, theirs)):
                ps[0].grad = torch.linspace(-1, 1, 8) * (step + 1)
                o.step()
        torch.testing.assert_close(ours[0], theirs[0])


def test_clip_inside_the_step_matches_clip_then_step():
    torch.manual_seed(1)
    shapes = [(30, 4), (7,), (2, 2)]
    a = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa, ob = ft.AdamW(a, lr=0.05), ft.AdamW(b, lr=0.05)
    for _ in range(4):
        grads = [torch.randn(*s) * 5 for s in shapes]
        for p, g in zip(a, grads):
            p.grad = g.clone()
        for p, g in zip(b, grads):
            p.grad = g.clone()
        oa.step(max_norm=1.0)
        norm = fastopt.clip_grad_norm_([p.grad.numpy() for p in b], 1.0)
        ob.step()
        assert oa.grad_norm == norm
        for p, g in zip(a, grads):
            assert torch.equal(p.grad, g)      # the fused clip leaves .grad unchanged
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    assert np.isfinite(oa.grad_norm)
