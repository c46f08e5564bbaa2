"""fastopt against torch.optim (foreach=False) and torch.nn.utils clipping on the same data."""
import inspect
import math

import numpy as np
import pytest

import fastopt
from reference import (CONFIGS, TORCH_CONFIGS, TORCH_NAMES, ElementwiseParity, RefOptimizer, config_id,
                       make_fastopt, random_arrays)

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

# Optimizer steps are held to torch element by element, after every step, in ulps of each element's
# scale (the largest magnitude it has had so far; see reference.ElementwiseParity). Worst measured
# over every configuration below: params 29 ulps in float32 and 17 in float64 (centered RMSprop,
# whose sqrt(s - ga^2) cancels, and RMSprop's (-lr*d)/avg, which torch computes as -lr*(d/avg));
# state buffers 4 ulps.
ULPS_PARAM = 64
ULPS_STATE = 8
# With weight decay torch forms d = g + wd*p with a fused multiply-add (add with alpha) and fastopt
# rounds wd*p first: where g and wd*p nearly cancel, d's relative error is large, and state that
# scales with d (d^2 in square_avg, d/sqrt(s) in RMSprop's momentum buffer) carries it. Those
# elements are held to the array's scale divided by 1024 instead (worst measured: 159 ulps of it
# in float32, 95 in float64, both in RMSprop's momentum buffer at the first step).
ULPS_STATE_WEIGHT_DECAY = 256
WEIGHT_DECAY_FLOOR = 2.0 ** -10
# Adadelta: torch contracts addcmul's multiply-add into an FMA (fastopt rounds the product first,
# as everywhere: -ffp-contract=off), and acc_delta feeds back into the next delta through
# sqrt(acc_delta + eps) / sqrt(square_avg + eps), so its one-ulp differences grow over the steps
# (worst measured: 14 ulps in 100 steps, float32 and float64).
ULPS_STATE_OF = {"Adadelta": 32}
# Clipping: max |fastopt - torch| <= REL * max |torch| (torch's float32 norm is accumulated in
# float32, fastopt's in float64).
REL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def assert_parity(np_arrays, torch_tensors, what=""):
    """max |fastopt - torch| <= REL * max |torch| over all arrays (clipping and non-finite tests)."""
    scale = max((float(t.detach().abs().max()) for t in torch_tensors if t.numel()), default=0.0)
    for i, (a, t) in enumerate(zip(np_arrays, torch_tensors)):
        t = t.detach().numpy()
        assert a.dtype == t.dtype and a.shape == t.shape, (what, i)
        if a.size == 0:
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - t.astype(np.float64))))
        assert diff <= REL[a.dtype] * scale, f"{what}: array {i} differs by {diff} (scale {scale})"


def make_torch(name, params, **kwargs):
    return getattr(torch.optim, name)(params, foreach=False, **kwargs)


def to_torch(arrays):
    return [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]


def check_step(parity, opt, topt, params_np, params_t, what):
    """Every param and state buffer of ``opt`` (fastopt) against ``topt`` (torch), per element."""
    weight_decay = any(g.get("weight_decay", 0) for g in opt.param_groups)
    state_ulps = ULPS_STATE_OF.get(type(opt).__name__, ULPS_STATE)
    for i, (p, tp) in enumerate(zip(params_np, params_t)):
        parity.check(("param", i), p, tp.detach().numpy(), ULPS_PARAM, what=f"{what}: param {i}")
        tstate = topt.state.get(tp, {})
        fstate = opt.state.get(i, {})
        tnames = {k for k, v in tstate.items() if k != "step" and v is not None}
        fnames = {k for k in fstate if k != "step"}
        assert tnames == fnames, (what, i, tnames, fnames)
        if "step" in tstate:
            assert fstate["step"] == int(tstate["step"]), (what, i)
        for k in sorted(fnames):
            ulps, floor = (ULPS_STATE_WEIGHT_DECAY, WEIGHT_DECAY_FLOOR) if weight_decay else (state_ulps, 0.0)
            parity.check((k, i), fstate[k], tstate[k].numpy(), ulps, floor, what=f"{what}: {k!r} of param {i}")


def run_parity(name, np_groups, torch_groups, params_np, params_t, steps, rng, none_every=None,
               lr_change=None, grads=None):
    """Step fastopt and torch.optim (foreach=False) side by side; compare after every step.

    ``grads(step)`` gives a step's gradients (default: random, with ``None`` every ``none_every``
    steps, rotating over the params)."""
    opt = make_fastopt(name, np_groups)
    topt = make_torch(name, torch_groups)
    if name == "Adagrad":
        # torch.optim.Adagrad fills "sum" from the constructor's initial_accumulator_value and
        # ignores a per-group value; fastopt honours the group's. Start torch where fastopt starts.
        for group in topt.param_groups:
            for p in group["params"]:
                topt.state[p]["sum"].fill_(group["initial_accumulator_value"])
    shapes = [p.shape for p in params_np]
    dtypes = [p.dtype for p in params_np]
    parity = ElementwiseParity()
    for i, p in enumerate(params_np):
        parity.start(("param", i), p)            # a step that lands near zero keeps p's scale
    for step in range(steps):
        if lr_change and step in lr_change:
            for g, lr in lr_change[step].items():
                opt.param_groups[g]["lr"] = lr
                topt.param_groups[g]["lr"] = lr
        if grads is not None:
            step_grads = grads(step)
        else:
            step_grads = random_arrays(rng, shapes, dtypes)
            if none_every:
                step_grads = [None if (step + i) % none_every == 0 else g for i, g in enumerate(step_grads)]
        for p, g in zip(params_t, step_grads):
            p.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step(step_grads)
        topt.step()
        check_step(parity, opt, topt, params_np, params_t, f"{name} step {step + 1}")
    return opt, topt


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name_cfg", TORCH_CONFIGS, ids=config_id)
def test_parity_100_steps(name_cfg, dtype):
    name, cfg = name_cfg
    rng = np.random.default_rng(0)
    shapes = [(16, 8), (33,), ()]
    if name != "Adafactor":   # torch's Adafactor divides by a param's size: ZeroDivisionError if empty
        shapes.append((0,))
    params_np = random_arrays(rng, shapes, [dtype] * len(shapes))
    params_t = to_torch(params_np)
    run_parity(name, [dict(params=params_np, **cfg)], [dict(params=params_t, **cfg)], params_np, params_t,
               100, rng)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_parity_groups_lr_change_none_grads_mixed_dtypes(name):
    rng = np.random.default_rng(1)
    cfg_a, cfg_b = CONFIGS[name][1], CONFIGS[name][-1]
    a = random_arrays(rng, [(10, 3), (7,)], [np.float32, np.float64])
    b = random_arrays(rng, [(5,), (2, 2)], [np.float64, np.float32])
    ta, tb = to_torch(a), to_torch(b)
    run_parity(name, [dict(params=a, **cfg_a), dict(params=b, **cfg_b)],
               [dict(params=ta, **cfg_a), dict(params=tb, **cfg_b)], a + b, ta + tb, 100, rng,
               none_every=4, lr_change={30: {0: cfg_a["lr"] * 0.3}, 60: {1: cfg_b["lr"] * 2.0, 0: 0.0}})


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_defaults_match_torch(name):
    ours = inspect.signature(getattr(fastopt, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for key, param in ours.items():
        if key in ("params", "decoupled_weight_decay") or key in fastopt._factory.OPTIONS:
            continue    # fastopt's own options
        assert key in theirs, key
        expected = theirs[key].default
        if isinstance(expected, torch.Tensor):
            expected = expected.item()
        assert param.default == expected, (key, param.default, expected)
    # And the optimizer built with no hyperparameters behaves as torch's.
    rng = np.random.default_rng(2)
    p = random_arrays(rng, [(20,)], [np.float64])
    t = to_torch(p)
    run_parity(name, p, t, p, t, 10, rng)


@pytest.fixture
def several_threads():
    """Two threads, and the parallel path even for small steps; restored afterwards."""
    from fastopt._backend import kernels
    threads, min_size = fastopt.get_num_threads(), kernels.get_parallel_min_size()
    fastopt.set_num_threads(2)
    kernels.set_parallel_min_size(0)
    yield
    fastopt.set_num_threads(threads)
    kernels.set_parallel_min_size(min_size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", TORCH_NAMES)
def test_parity_on_several_threads(name, dtype, several_threads):
    """Arrays split across threads (one of 50,000 elements, above every default threshold too)."""
    rng = np.random.default_rng(6)
    cfg_a, cfg_b = CONFIGS[name][0], CONFIGS[name][-1]
    a = random_arrays(rng, [(50_000,), (7, 3)], [dtype, dtype])
    b = random_arrays(rng, [(20_001,)], [dtype])
    ta, tb = to_torch(a), to_torch(b)
    run_parity(name, [dict(params=a, **cfg_a), dict(params=b, **cfg_b)],
               [dict(params=ta, **cfg_a), dict(params=tb, **cfg_b)], a + b, ta + tb, 25, rng,
               none_every=5)


# Params of one group whose step counts differ: each needs its own bias corrections (Adam, AdamW)
# or learning-rate decay (Adagrad). Param 1 sits out the first step, param 0 the third.
STEP_COUNT_GRADS = [(True, False), (True, True), (False, True), (True, True), (True, True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,cfg", [("Adam", dict(lr=0.01, betas=(0.8, 0.9))),
                                      ("AdamW", dict(lr=0.01, betas=(0.7, 0.95), amsgrad=True)),
                                      ("Adagrad", dict(lr=0.1, lr_decay=0.5))])
def test_step_counts_differ_within_a_group(name, cfg, dtype):
    """A [g, None] step, then [g, g]: the params of one bucket carry their own step counts, against
    torch.optim and against the NumPy reference; a shared step count would be far outside."""
    rng = np.random.default_rng(7)
    shapes = [(300,), (4, 5)]
    params = random_arrays(rng, shapes, [dtype, dtype])
    params_t = to_torch(params)
    reference = RefOptimizer(name, [dict(params=params, **cfg)])
    shared = RefOptimizer(name, [dict(params=params, **cfg)])     # the bug: one count per group
    steps = [[random_arrays(rng, [s], [dtype])[0] if use else None for s, use in zip(shapes, mask)]
             for mask in STEP_COUNT_GRADS]
    opt, _ = run_parity(name, [dict(params=params, **cfg)], [dict(params=params_t, **cfg)], params,
                        params_t, len(steps), rng, grads=lambda k: steps[k])
    for grads in steps:
        reference.step(grads)
        if shared.state[0] and shared.state[1]:
            shared.state[1]["step"] = shared.state[0]["step"]
        shared.step(grads)
    assert [opt.state[i]["step"] for i in range(2)] == [4, 4]
    assert [reference.state[i]["step"] for i in range(2)] == [4, 4]
    for i in range(2):
        ElementwiseParity().check(i, params[i], reference.params[i], 4, what=f"param {i} vs the NumPy reference")
    with pytest.raises(AssertionError):
        ElementwiseParity().check(1, shared.params[1], params_t[1].detach().numpy(), ULPS_PARAM)


# ----------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------

def _torch_grads(arrays):
    params = []
    for a in arrays:
        p = torch.nn.Parameter(torch.zeros(a.shape, dtype=TORCH_DTYPE[a.dtype]))
        p.grad = torch.from_numpy(a.copy())
        params.append(p)
    return params


@pytest.mark.parametrize("mixed", [False, True], ids=["same", "mixed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "no-clip"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
def test_clip_grad_norm_parity(norm_type, max_norm, dtype, mixed):
    rng = np.random.default_rng(3)
    shapes = [(40, 3), (17,), (), (0,)]
    other = np.float64 if dtype == np.float32 else np.float32
    dtypes = [dtype, other if mixed else dtype, dtype, other if mixed else dtype]
    grads = random_arrays(rng, shapes, dtypes)
    nonempty = [g for g in grads if g.size]   # torch's inf norm rejects empty tensors
    tparams = _torch_grads(nonempty)
    tnorm = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type, foreach=False))
    fnorm = fastopt.clip_grad_norm_(grads, max_norm, norm_type)
    assert isinstance(fnorm, float)
    # fastopt accumulates in float64; torch in each grad's dtype (and its clip coefficient is a
    # float32 tensor as soon as one grad is float32), so float32 anywhere means float32 accuracy.
    rel = REL[np.dtype(np.float32)] if mixed or dtype == np.float32 else REL[np.dtype(np.float64)]
    assert abs(fnorm - tnorm) <= rel * tnorm
    got = [g for g in grads if g.size]
    scale = max(float(np.max(np.abs(t.grad.numpy()))) for t in tparams)
    for g, t in zip(got, tparams):
        assert g.dtype == t.grad.numpy().dtype
        assert float(np.max(np.abs(g.astype(np.float64) - t.grad.numpy()))) <= rel * scale
    if max_norm > 1e3:
        for g, t in zip(got, tparams):
            np.testing.assert_array_equal(g, t.grad.numpy())   # untouched


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 10.0])
def test_clip_grad_value_parity(clip_value):
    rng = np.random.default_rng(4)
    grads = random_arrays(rng, [(30,), (4, 4), ()], [np.float32, np.float64, np.float32])
    grads[0][3] = np.nan
    tparams = _torch_grads(grads)
    torch.nn.utils.clip_grad_value_(tparams, clip_value, foreach=False)
    assert fastopt.clip_grad_value_(grads, clip_value) is None
    for g, t in zip(grads, tparams):
        np.testing.assert_array_equal(g, t.grad.numpy())   # clamping is exact


@pytest.mark.parametrize("name_cfg", TORCH_CONFIGS, ids=config_id)
def test_nonfinite_propagation_matches_torch(name_cfg):
    """Without skip_nonfinite, NaN/Inf gradients propagate exactly as in torch.optim."""
    name, cfg = name_cfg
    rng = np.random.default_rng(5)
    params_np = random_arrays(rng, [(8,)], [np.float64])
    params_t = to_torch(params_np)
    opt = make_fastopt(name, params_np, **cfg)
    topt = make_torch(name, params_t, **cfg)
    for step in range(4):
        g = random_arrays(rng, [(8,)], [np.float64])[0]
        if step == 1:
            g[2], g[5], g[6] = np.nan, np.inf, -np.inf
        params_t[0].grad = torch.from_numpy(g.copy())
        opt.step([g])
        topt.step()
        t = params_t[0].detach().numpy()
        p = params_np[0]
        np.testing.assert_array_equal(np.isnan(p), np.isnan(t), err_msg=f"NaN positions, step {step + 1}")
        np.testing.assert_array_equal(np.isinf(p), np.isinf(t), err_msg=f"Inf positions, step {step + 1}")
        np.testing.assert_array_equal(np.sign(p[np.isinf(p)]), np.sign(t[np.isinf(t)]))
        finite = np.isfinite(t)
        assert_parity([p[finite]], [params_t[0].detach()[torch.from_numpy(finite)]], f"step {step + 1}")
