"""fastopt.Muon and fastopt.torch.Muon: matrices only, so Muon is not in reference.CONFIGS (whose
tests use every shape); this file covers for it what those tests cover for the others.

The Newton-Schulz iteration runs in bfloat16, as torch runs it, with its products in float32
through BLAS. The reference (tests/_support/reference.py) rounds exactly where fastopt does but multiplies
with NumPy's matmul, whose float32 sums may be ordered otherwise; where such a sum lands next to a
bfloat16 rounding boundary, an element of the orthogonalized update X (|X| <~ 1) moves by a few
bfloat16 ulps (2**-8 relative). So params are compared to within lr * s * 2**-6 per step (s: the
shape's learning-rate ratio), while the momentum buffer, elementwise, must be bit-identical.
"""
import math

import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import DEFAULTS, RefOptimizer, fingerprint, random_arrays

CONFIGS = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False),
    dict(lr=0.02, weight_decay=0.0, momentum=0.6),
    dict(lr=0.02, momentum=1.3),            # lerp weights -0.3 and 1.3: torch's other lerp forms
    dict(lr=0.02, adjust_lr_fn="match_rms_adamw", ns_steps=3),
    dict(lr=0.02, adjust_lr_fn="original", ns_coefficients=(3.4, -4.7, 2.0), eps=1e-3),
    dict(lr=0.02, ns_steps=0, maximize=True),
]
SHAPES = [(6, 3), (3, 6), (40, 40), (65, 33), (1, 7), (7, 1), (0, 4)]
DTYPES = [np.float32, np.float64]


def _ratio(shape, cfg):
    rows, cols = shape
    if cfg.get("adjust_lr_fn") == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


def run_pair(cfg, shapes, dtypes, steps=8, seed=0, none_every=None, skip_nonfinite=False):
    rng = np.random.default_rng(seed)
    params = random_arrays(rng, shapes, dtypes)
    ref = RefOptimizer("Muon", [p.copy() for p in params], **cfg)
    opt = fastopt.Muon(params, skip_nonfinite=skip_nonfinite, **cfg)
    stepped = [0] * len(params)
    for step in range(steps):
        grads = random_arrays(rng, shapes, dtypes)
        if none_every:
            grads = [None if (step + i) % none_every == 0 else g for i, g in enumerate(grads)]
        assert opt.step(grads) is True
        ref.step(grads)
        for i, (p, q, g) in enumerate(zip(params, ref.params, grads)):
            stepped[i] += g is not None
            bound = stepped[i] * cfg["lr"] * _ratio(p.shape, cfg) * 2.0 ** -6
            assert p.dtype == q.dtype and p.shape == q.shape
            assert float(np.max(np.abs(p - q), initial=0.0)) <= bound, (i, step)
    for i, ref_state in enumerate(ref.state):
        if not ref_state:
            assert i not in opt.state
            continue
        assert set(opt.state[i]) == {"momentum_buffer"}       # no step count, as torch
        np.testing.assert_array_equal(opt.state[i]["momentum_buffer"], ref_state["momentum_buffer"])
    return opt, params


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CONFIGS])
def test_matches_reference(cfg, dtype):
    run_pair(cfg, SHAPES, [dtype] * len(SHAPES))


def test_mixed_dtypes_groups_and_none_grads():
    rng = np.random.default_rng(3)
    a = random_arrays(rng, [(8, 5), (5, 8)], [np.float32, np.float64])
    b = random_arrays(rng, [(4, 4)], [np.float32])
    groups = [dict(params=a, lr=0.02), dict(params=b, lr=0.01, nesterov=False, weight_decay=0.0)]
    ref = RefOptimizer("Muon", [dict(g, params=[p.copy() for p in g["params"]]) for g in groups])
    opt = fastopt.Muon(groups)
    params = a + b
    for step in range(10):
        if step == 5:
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.005
        grads = random_arrays(rng, [p.shape for p in params], [p.dtype for p in params])
        grads[step % 3] = None
        opt.step(grads)
        ref.step(grads)
    for p, q in zip(params, ref.params):
        assert float(np.max(np.abs(p - q))) <= 10 * 0.02 * 2.0 ** -6


def test_defaults_follow_torch():
    opt = fastopt.Muon([np.zeros((2, 2))])
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    assert group == DEFAULTS["Muon"]


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
def test_params_must_be_matrices(shape):
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters.*params\[1\].*shape"):
        fastopt.Muon([np.zeros((2, 2)), np.zeros(shape)])
    opt = fastopt.Muon([np.zeros((2, 2))])
    with pytest.raises(ValueError, match="2D"):
        opt.add_param_group({"params": [np.zeros(shape)]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("key, value, exc", [
    ("adjust_lr_fn", "arbitrary", ValueError), ("adjust_lr_fn", 1, ValueError),
    ("ns_steps", 100, ValueError), ("ns_steps", -1, ValueError), ("ns_steps", 2.0, TypeError),
    ("ns_coefficients", (3.4, -4.7), TypeError), ("ns_coefficients", (3.4, math.nan, 2.0), ValueError),
    ("momentum", -0.1, ValueError), ("eps", -1.0, ValueError), ("nesterov", 1, TypeError),
    ("lr", -1e-3, ValueError), ("weight_decay", math.inf, ValueError), ("maximize", None, TypeError),
])
def test_bad_hyperparameter(key, value, exc):
    with pytest.raises(exc, match=key):
        fastopt.Muon([np.zeros((3, 2))], **{key: value})
    p = np.ones((3, 2))
    opt = fastopt.Muon([p])
    opt.step([np.ones((3, 2))])
    before = fingerprint(opt, [p])
    opt.param_groups[0][key] = value
    with pytest.raises(exc, match=key):
        opt.step([np.ones((3, 2))])
    opt.param_groups[0][key] = DEFAULTS["Muon"][key]
    assert fingerprint(opt, [p]) == before


def test_bad_grad_changes_nothing():
    p = [np.ones((3, 2), np.float32), np.ones((2, 2))]
    opt = fastopt.Muon(p)
    opt.step([np.ones((3, 2), np.float32), np.ones((2, 2))])
    before = fingerprint(opt, p)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        opt.step([np.ones((3, 2), np.float32), np.ones((2, 3))])
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.ones((3, 2)), np.ones((2, 2))])
    assert fingerprint(opt, p) == before


# ----------------------------------------------------------------------------------------------
# State, threads, skip_nonfinite, clipping
# ----------------------------------------------------------------------------------------------

def test_state_dict_round_trip_and_resume():
    rng = np.random.default_rng(4)
    shapes = [(9, 4), (4, 9)]
    start = random_arrays(rng, shapes, [np.float32, np.float64])
    grads = [random_arrays(rng, shapes, [np.float32, np.float64]) for _ in range(6)]
    full_params = [p.copy() for p in start]
    full = fastopt.Muon(full_params, lr=0.02)
    for g in grads:
        full.step(g)
    params = [p.copy() for p in start]
    first = fastopt.Muon(params, lr=0.02)
    for g in grads[:3]:
        first.step(g)
    sd = first.state_dict()
    resumed = fastopt.Muon(params, lr=0.02)
    resumed.load_state_dict(sd)
    for g in grads[3:]:
        resumed.step(g)
    for p, q in zip(params, full_params):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match=r"\['momentum_buffer'\].*shape"):
        bad = dict(sd, state={0: {"momentum_buffer": np.zeros((4, 9), np.float32)}})
        fastopt.Muon(params, lr=0.02).load_state_dict(bad)


def test_checkpoint_file(tmp_path):
    p = [np.ones((3, 5), np.float32)]
    opt = fastopt.Muon(p, lr=0.05)
    opt.step([np.full((3, 5), 0.5, np.float32)])
    fastopt.save(opt, tmp_path / "muon.npz", params=True)
    q = [np.zeros((3, 5), np.float32)]
    other = fastopt.Muon(q, lr=0.05)
    fastopt.load(other, tmp_path / "muon.npz")
    np.testing.assert_array_equal(p[0], q[0])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], other.state[0]["momentum_buffer"])


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
def test_bit_identical_for_any_thread_count(thread_settings):
    kernels.set_parallel_min_size(0)
    results = []
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        rng = np.random.default_rng(5)
        params = random_arrays(rng, [(130, 70), (70, 130), (5, 5)], [np.float32, np.float64, np.float32])
        opt = fastopt.Muon(params, lr=0.02)
        for _ in range(3):
            opt.step(random_arrays(rng, [p.shape for p in params], [p.dtype for p in params]))
        results.append(fingerprint(opt, params))
    assert results[0] == results[1] == results[2]


def test_skip_nonfinite():
    rng = np.random.default_rng(6)
    params = random_arrays(rng, [(4, 3)], [np.float32])
    opt = fastopt.Muon(params, skip_nonfinite=True)
    opt.step(random_arrays(rng, [(4, 3)], [np.float32]))
    before = fingerprint(opt, params)
    bad = random_arrays(rng, [(4, 3)], [np.float32])
    bad[0][1, 1] = np.nan
    assert opt.step(bad) is False and opt.skipped_steps == 1
    assert fingerprint(opt, params) == before


def test_nonfinite_propagates_by_default():
    p = [np.ones((3, 3), np.float32)]
    g = np.ones((3, 3), np.float32)
    g[0, 0] = np.inf
    fastopt.Muon(p).step([g])
    assert np.isnan(p[0]).all()     # the norm is inf: every element of X becomes NaN, as in torch


def test_clip_in_step_equals_clip_then_step():
    rng = np.random.default_rng(7)
    grads = random_arrays(rng, [(6, 4)], [np.float32], scale=10.0)
    a = [np.ones((6, 4), np.float32)]
    b = [np.ones((6, 4), np.float32)]
    fastopt.Muon(a).step(grads, max_norm=1.0)
    clipped = [g.copy() for g in grads]
    fastopt.clip_grad_norm_(clipped, 1.0)
    fastopt.Muon(b).step(clipped)
    np.testing.assert_array_equal(a[0], b[0])


# ----------------------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS[:-1] + [dict(lr=0.02, ns_steps=0)],
                         ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CONFIGS])
def test_parity_with_torch(cfg, dtype):
    """Against torch.optim.Muon; its bfloat16 products are summed by its own kernels (see the
    module docstring), so params agree to lr * s * 2**-6 per step, and the momentum buffers, whose
    gradients here are given (not computed from the params), to an ulp of torch's lerp (torch's
    vectorized lerp contracts to an FMA)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    shapes = [(16, 8), (8, 16), (33, 33)]
    params = random_arrays(rng, shapes, [dtype] * 3)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = fastopt.Muon(params, **cfg)
    topt = torch.optim.Muon(tparams, **cfg)
    for step in range(1, 11):
        grads = random_arrays(rng, shapes, [dtype] * 3)
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g.copy())
        opt.step(grads)
        topt.step()
        for p, t in zip(params, tparams):
            bound = step * cfg["lr"] * _ratio(p.shape, cfg) * 2.0 ** -6
            assert float(np.max(np.abs(p - t.detach().numpy()))) <= bound
    eps = np.finfo(dtype).eps
    for i, t in enumerate(tparams):
        ours, theirs = opt.state[i]["momentum_buffer"], topt.state[t]["momentum_buffer"].numpy()
        np.testing.assert_allclose(ours, theirs, rtol=8 * eps, atol=8 * eps * np.abs(theirs).max())


@pytest.mark.torch
def test_torch_adapter_checkpoints_both_ways():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    rng = np.random.default_rng(9)
    start = torch.from_numpy(random_arrays(rng, [(6, 4)], [np.float32])[0])
    p, q = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours, theirs = ft.Muon([p], lr=0.02), torch.optim.Muon([q], lr=0.02)
    for _ in range(3):
        g = torch.randn(6, 4)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    into_torch = torch.optim.Muon([torch.nn.Parameter(start.clone())], lr=0.02)
    into_torch.load_state_dict(ours.state_dict())
    into_ours = ft.Muon([torch.nn.Parameter(start.clone())], lr=0.02)
    into_ours.load_state_dict(theirs.state_dict())
    assert torch.equal(next(iter(into_ours.state.values()))["momentum_buffer"],
                       theirs.state[q]["momentum_buffer"])
    assert torch.equal(next(iter(into_torch.state.values()))["momentum_buffer"],
                       ours.state[p]["momentum_buffer"])
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        ft.Muon([torch.nn.Parameter(torch.zeros(3))])
    # as torch.optim.Muon: built, then refused at every step (before anything is written)
    real = torch.nn.Parameter(torch.ones(2, 2))
    opt = ft.Muon([real, torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))])
    real.grad = torch.ones(2, 2)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
            opt.step()
    assert torch.equal(real, torch.ones(2, 2)) and not opt.state
