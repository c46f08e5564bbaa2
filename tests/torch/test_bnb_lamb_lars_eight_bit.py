"""fastopt.torch.LAMB8bit and LARS8bit against bitsandbytes' (0.50, CPU): bitsandbytes' 8-bit
(blockwise) kernels take Adam's and momentum SGD's steps without a trust ratio, and so do ours;
their checkpoints interchange both ways."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")    # bitsandbytes' CPU backend looks for hub kernels
torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
import fastopt.torch as fastopt_torch  # noqa: E402

CASES = [pytest.param("LAMB8bit", dict(lr=1e-3), id="LAMB8bit"),
         pytest.param("LAMB8bit", dict(lr=1e-3, weight_decay=0.1), id="LAMB8bit-wd"),
         pytest.param("LARS8bit", dict(lr=1e-2, momentum=0.9), id="LARS8bit"),
         pytest.param("LARS8bit", dict(lr=1e-2, momentum=0.9, weight_decay=0.01), id="LARS8bit-wd")]
N = 20_000     # above min_8bit_size: 8-bit states in both


def _pair(name, kwargs, seed=0):
    torch.manual_seed(seed)
    start = torch.randn(N)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    return (start, ours, getattr(fastopt_torch, name)([ours], **kwargs),
            theirs, getattr(bnb.optim, name)([theirs], **kwargs))


def _step(pairs, grad):
    for p, opt in pairs:
        p.grad = grad.clone()
        opt.step()


@pytest.mark.parametrize("name, kwargs", CASES)
def test_50_steps_follow_bitsandbytes_to_its_quantizer_rounding(name, kwargs):
    """Within 5% of how far the params moved: the two differ only in bitsandbytes' CPU quantizer
    (its table is up to 3e-5 of a block's maximum off the nearest code) and, with weight decay,
    in when the param decays (an lr^2 wd |update| term); a wrong learning rate moves them apart by
    the whole movement."""
    start, ours, opt, theirs, ref = _pair(name, kwargs)
    wrong = torch.nn.Parameter(start.clone())
    off = getattr(fastopt_torch, name)([wrong], **dict(kwargs, lr=kwargs["lr"] * 1.5))
    for _ in range(50):
        _step([(ours, opt), (theirs, ref), (wrong, off)], torch.randn(N))
    moved = (theirs - start).abs().max().item()
    assert moved > 10 * kwargs["lr"]
    assert (ours - theirs).abs().max().item() <= 0.05 * moved
    assert (wrong - theirs).abs().max().item() > 0.05 * moved
    assert set(opt.state_dict()["state"][0]) == set(ref.state_dict()["state"][0])


@pytest.mark.parametrize("name, kwargs", CASES)
def test_checkpoints_interchange_both_ways(name, kwargs):
    start, ours, opt, theirs, ref = _pair(name, kwargs, seed=1)
    for _ in range(5):
        _step([(ours, opt), (theirs, ref)], torch.randn(N))
    ours_in_bnb = torch.nn.Parameter(ours.detach().clone())
    bnb_from_ours = getattr(bnb.optim, name)([ours_in_bnb], **kwargs)
    bnb_from_ours.load_state_dict(opt.state_dict())
    theirs_in_ours = torch.nn.Parameter(theirs.detach().clone())
    ours_from_bnb = getattr(fastopt_torch, name)([theirs_in_ours], **kwargs)
    ours_from_bnb.load_state_dict(ref.state_dict())
    grad = torch.randn(N)
    _step([(ours, opt), (ours_in_bnb, bnb_from_ours), (theirs, ref), (theirs_in_ours, ours_from_bnb)],
          grad)
    # the same states and param, one step on either side: the same step to float32 rounding
    torch.testing.assert_close(ours_in_bnb, ours, rtol=0, atol=1e-6)
    torch.testing.assert_close(theirs_in_ours, theirs, rtol=0, atol=1e-6)
