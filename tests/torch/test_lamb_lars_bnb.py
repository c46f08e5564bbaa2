"""fastopt's LAMB and LARS (both front ends) against bitsandbytes' own, ``optim_bits=32``, on CPU:
trajectories of 1 and 200 steps on several shapes, with the trust ratio clipping and not, with
weight decay and without; and where fastopt departs from bitsandbytes' CPU path on purpose (LAMB's
decay after the update, as bitsandbytes' CUDA kernel) or refuses what bitsandbytes ignores.

bitsandbytes computes in float32 with torch's operations (its norms in float32 too); fastopt
rounds each operation in float32 and sums the norms in float64. Without LAMB's weight decay the
trajectories agree to 2 float32 ulps of the params' scale after 200 steps (measured with
bitsandbytes 0.50.2); the tests allow 4 after one step and 16 after 200."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")    # bitsandbytes' CPU backend looks for hub kernels
torch = pytest.importorskip("torch")
bnb_optim = pytest.importorskip("bitsandbytes.optim")

import fastopt  # noqa: E402
import fastopt.torch  # noqa: E402
from trust_ratio import lamb_step  # noqa: E402  (tests/_support: pytest's pythonpath)

SHAPES = [(7,), (33, 5), (4, 3, 6), (1,), (20_000,)]

LAMB_CASES = [
    pytest.param(dict(), id="defaults"),                                        # max_unorm 1
    pytest.param(dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, max_unorm=0.05), id="clipped"),
    pytest.param(dict(lr=1e-3, max_unorm=1e4), id="never-clipped"),
    pytest.param(dict(lr=1e-2, max_unorm=0.0), id="no-trust-ratio"),
    # decoupled decay: bitsandbytes' CPU path decays before the update, fastopt after
    pytest.param(dict(lr=1e-2, weight_decay=0.1), id="decay"),
    pytest.param(dict(lr=0.05, weight_decay=0.05, max_unorm=0.05), id="decay-clipped"),
]
LARS_CASES = [
    pytest.param(dict(lr=0.1, momentum=0.9), id="defaults"),                   # max_unorm 0.02
    pytest.param(dict(lr=1e-3, momentum=0.5, max_unorm=1e4), id="never-clipped"),
    pytest.param(dict(lr=0.01, momentum=0.9, max_unorm=0.0), id="no-trust-ratio"),
    pytest.param(dict(lr=0.1, momentum=0.9, weight_decay=1e-2), id="decay"),
    pytest.param(dict(lr=0.05, momentum=0.95, weight_decay=0.1, max_unorm=0.5), id="decay-clipped"),
]
FRONT_ENDS = ["torch", "numpy"]


def _gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(steps)]


def _start(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _bnb_run(cls, cfg, steps):
    """bitsandbytes' trajectory: its params and state after ``steps`` steps."""
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in _start()]
    opt = cls(params, optim_bits=32, **cfg)
    for grads in _gradients(steps):
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g)
        opt.step()
    return [p.detach().numpy() for p in params], [opt.state[p] for p in params]


def _fastopt_run(name, cfg, steps, front_end):
    """fastopt's trajectory (torch or NumPy front end): its params and state."""
    if front_end == "torch":
        params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in _start()]
        opt = getattr(fastopt.torch, name)(params, **cfg)
        for grads in _gradients(steps):
            for p, g in zip(params, grads):
                p.grad = torch.from_numpy(g)
            opt.step()
        return ([p.detach().numpy() for p in params],
                [{k: (v.numpy() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
                 for p in params])
    params = _start()
    opt = getattr(fastopt, name)(params, **cfg)
    for grads in _gradients(steps):
        opt.step(grads)
    return params, [opt.state[i] for i in range(len(params))]


def _tolerance(theirs, steps):
    """4 float32 ulps of the array's scale after one step, 16 after more (they round differently)."""
    return (4 if steps == 1 else 16) * np.finfo(np.float32).eps * float(np.abs(theirs).max())


def _assert_near(ours, theirs, steps, what):
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=_tolerance(theirs, steps), err_msg=what)


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("steps", [1, 200])
@pytest.mark.parametrize("cfg", LAMB_CASES)
def test_lamb_follows_bitsandbytes(cfg, steps, front_end):
    theirs, their_state = _bnb_run(bnb_optim.LAMB, cfg, steps)
    ours, our_state = _fastopt_run("LAMB", cfg, steps, front_end)
    # bitsandbytes' CPU path decays before the update, fastopt after (its CUDA kernel's order):
    # they differ by lr^2 wd |u| per step (|u| < 4 here), on top of the rounding
    lr, wd = cfg.get("lr", 1e-3), cfg.get("weight_decay", 0.0)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        order = steps * lr * lr * wd * 4
        np.testing.assert_allclose(p, q, rtol=0, atol=order + _tolerance(q, steps),
                                   err_msg=f"param {i}")
        assert our_state[i]["step"] == their_state[i]["step"] == steps
        for ours_name, theirs_name in (("exp_avg", "state1"), ("exp_avg_sq", "state2")):
            their_value = their_state[i][theirs_name].numpy()
            # the moments depend on the params only through the gradients: given the same
            # gradients they agree to the rounding, whatever the decay
            _assert_near(our_state[i][ours_name], their_value, 1, f"{ours_name} {i}")


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("steps", [1, 200])
@pytest.mark.parametrize("cfg", LARS_CASES)
def test_lars_follows_bitsandbytes(cfg, steps, front_end):
    theirs, their_state = _bnb_run(bnb_optim.LARS, cfg, steps)
    ours, our_state = _fastopt_run("LARS", cfg, steps, front_end)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        _assert_near(p, q, steps, f"param {i}")
        assert our_state[i]["step"] == their_state[i]["step"] == steps
        _assert_near(our_state[i]["momentum_buffer"], their_state[i]["state1"].numpy(), steps,
                     f"momentum_buffer {i}")


@pytest.mark.parametrize("name, cfg, clips", [
    ("LAMB", LAMB_CASES[1].values[0], True), ("LAMB", LAMB_CASES[2].values[0], False),
    ("LARS", LARS_CASES[0].values[0], True), ("LARS", LARS_CASES[1].values[0], False)])
def test_the_first_step_is_scaled_by_the_ratio_bitsandbytes_measures(name, cfg, clips):
    """bitsandbytes' update norm (its unorm_vec) over max_unorm times the param's norm is above 1
    for every param in the clipping cases and below in the others (so the trajectories above
    cover both), and fastopt's first step is its step without the trust ratio divided by it."""
    cfg = dict(cfg, max_unorm=cfg.get("max_unorm", 0.02 if name == "LARS" else 1.0))
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in _start()]
    norms = [float(torch.linalg.vector_norm(p.detach())) for p in params]
    opt = getattr(bnb_optim, name)(params, optim_bits=32, **cfg)
    for p, g in zip(params, _gradients(1)[0]):
        p.grad = torch.from_numpy(g)
    opt.step()
    ratios = [float(opt.state[p]["unorm_vec"]) / (cfg["max_unorm"] * n) for p, n in zip(params, norms)]
    assert all(r > 1.5 for r in ratios) if clips else all(r < 1 for r in ratios), ratios
    start = _start()
    clipped, free = _fastopt_run(name, cfg, 1, "numpy")[0], \
        _fastopt_run(name, dict(cfg, max_unorm=0.0), 1, "numpy")[0]
    for p0, p1, q1, ratio in zip(start, clipped, free, ratios):
        expected = (q1 - p0) / max(ratio, 1.0)
        np.testing.assert_allclose(p1 - p0, expected, rtol=1e-4,
                                   atol=_tolerance(p0, 1) + 1e-4 * float(np.abs(expected).max()))


def test_bitsandbytes_cpu_decays_lamb_before_the_update_and_fastopt_after():
    """The one place fastopt departs from bitsandbytes' CPU LAMB on purpose: bitsandbytes' CPU
    path is the decay-first reference, fastopt the decay-after one (bitsandbytes' CUDA kernel)."""
    cfg = dict(lr=0.1, weight_decay=0.5, max_unorm=0.0)
    g = np.linspace(-1, 1, 64).astype(np.float32)
    first, after = np.ones(64, np.float32), np.ones(64, np.float32)
    lamb_step(first, g, {}, **cfg, decay_first=True)
    lamb_step(after, g, {}, **cfg)
    assert np.abs(first - after).max() > 1e-3
    p = torch.nn.Parameter(torch.ones(64))
    opt = bnb_optim.LAMB([p], optim_bits=32, **cfg)
    p.grad = torch.from_numpy(g)
    opt.step()
    _assert_near(p.detach().numpy(), first, 1, "bitsandbytes (CPU) decays first")
    q = torch.nn.Parameter(torch.ones(64))
    ours = fastopt.torch.LAMB([q], **cfg)
    q.grad = torch.from_numpy(g)
    ours.step()
    np.testing.assert_array_equal(q.detach().numpy(), after)


@pytest.mark.parametrize("cls, flags", [
    ("LAMB", dict(bias_correction=False)), ("LAMB", dict(amsgrad=True)),
    ("LAMB", dict(adam_w_mode=False)),
    ("LARS", dict(dampening=0.5)), ("LARS", dict(nesterov=True))])
def test_arguments_bitsandbytes_ignores_are_refused(cls, flags):
    """bitsandbytes takes these and steps exactly as without them; fastopt refuses them (with the
    argument's name) rather than silently doing nothing."""
    base = dict(lr=0.1, momentum=0.9) if cls == "LARS" else dict(lr=0.01, weight_decay=0.1)
    plain, flagged = _bnb_run(getattr(bnb_optim, cls), base, 3)[0], \
        _bnb_run(getattr(bnb_optim, cls), dict(base, **flags), 3)[0]
    for p, q in zip(plain, flagged):
        np.testing.assert_array_equal(p, q)
    (name,) = flags
    for make in (getattr(fastopt.torch, cls), getattr(fastopt, cls)):
        params = [torch.nn.Parameter(torch.ones(3))] if make is getattr(fastopt.torch, cls) \
            else [np.ones(3, np.float32)]
        with pytest.raises(ValueError, match=name):
            make(params, **base, **flags)


def test_lars_without_momentum_is_refused_as_bitsandbytes_refuses_it():
    with pytest.raises(NotImplementedError):
        bnb_optim.LARS([torch.nn.Parameter(torch.ones(3))], lr=0.1, optim_bits=32)
    with pytest.raises(ValueError, match="momentum"):
        fastopt.torch.LARS([torch.nn.Parameter(torch.ones(3))], lr=0.1)
