"""Clipping inside the step: ``opt.step(grads, max_norm=..., norm_type=...)`` equals
``clip_grad_norm_`` followed by ``step`` to the last bit, and leaves the gradients unchanged."""
import math

import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import CONFIGS, fingerprint, make_fastopt, random_arrays

NAMES = list(CONFIGS)
SHAPES = [(40, 3), (17,), (), (5, 5)]


def _pair(name, cfg, dtypes, seed=0):
    rng = np.random.default_rng(seed)
    a = random_arrays(rng, SHAPES, dtypes)
    b = [x.copy() for x in a]
    groups_a = [{"params": a[:2]}, {"params": a[2:], "lr": cfg.get("lr", 0.01) * 0.5}]
    groups_b = [{"params": b[:2]}, {"params": b[2:], "lr": cfg.get("lr", 0.01) * 0.5}]
    return make_fastopt(name, groups_a, **cfg), a, make_fastopt(name, groups_b, **cfg), b, rng


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("name", NAMES)
def test_fused_clip_equals_clip_then_step(name, norm_type):
    cfg = CONFIGS[name][-1]
    dtypes = [np.float32, np.float64, np.float32, np.float32]
    fused, pa, plain, pb, rng = _pair(name, cfg, dtypes)
    for step in range(6):
        grads = random_arrays(rng, SHAPES, dtypes, scale=3.0)
        if step == 2:
            grads[1] = None        # a param without a gradient this step
        max_norm = 0.5 if step % 2 == 0 else 1e6   # clipping, then not
        kept = [None if g is None else g.copy() for g in grads]
        fused.step(grads, max_norm=max_norm, norm_type=norm_type)
        for g, k in zip(grads, kept):       # the gradients are not rewritten
            assert (g is None and k is None) or g.tobytes() == k.tobytes()
        clipped = [None if g is None else g.copy() for g in grads]
        norm = fastopt.clip_grad_norm_([g for g in clipped if g is not None], max_norm, norm_type)
        plain.step(clipped)
        assert fused.grad_norm == norm
        assert fingerprint(fused, pa) == fingerprint(plain, pb)


def test_clip_in_step_on_several_threads_is_bitwise_the_same():
    before = kernels.get_parallel_min_size()
    results = []
    try:
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            kernels.set_parallel_min_size(0)
            rng = np.random.default_rng(3)
            p = [rng.standard_normal(300_000).astype(np.float32), rng.standard_normal(70_001)]
            opt = fastopt.Adam(p, lr=1e-2)
            for _ in range(3):
                g = [rng.standard_normal(x.shape).astype(x.dtype) for x in p]
                opt.step(g, max_norm=1.0)
            results.append(b"".join(x.tobytes() for x in p) + repr(opt.grad_norm).encode())
    finally:
        fastopt.set_num_threads(0)
        kernels.set_parallel_min_size(before)
    assert results[0] == results[1]


def test_skip_nonfinite_uses_the_norm_pass():
    p = [np.zeros(8), np.zeros(3, dtype=np.float32)]
    opt = fastopt.Adam(p, lr=0.1, skip_nonfinite=True)
    g = [np.ones(8), np.ones(3, dtype=np.float32)]
    g[0][4] = np.nan
    assert opt.step(g, max_norm=1.0) is False
    assert opt.found_inf and opt.skipped_steps == 1 and math.isnan(opt.grad_norm)
    assert not p[0].any() and opt.state == {}
    # finite float64 gradients whose squares overflow: the norm is inf, yet nothing is skipped
    huge = [np.full(8, 1e200), np.ones(3, dtype=np.float32)]
    assert opt.step(huge, max_norm=1.0) is True
    assert opt.grad_norm == math.inf and not opt.found_inf


def test_bad_clip_arguments_change_nothing():
    p = [np.ones(4)]
    opt = fastopt.Adam(p, lr=0.1)
    g = [np.ones(4)]
    before = fingerprint(opt, p)
    for kwargs, exc in [(dict(max_norm=-1.0), ValueError), (dict(max_norm="1"), TypeError),
                        (dict(max_norm=1.0, norm_type=0.0), ValueError),
                        (dict(max_norm=1.0, norm_type="two"), ValueError),
                        (dict(max_norm=1.0, norm_type=None), TypeError)]:
        with pytest.raises(exc, match="max_norm|norm_type"):
            opt.step(g, **kwargs)
        assert fingerprint(opt, p) == before
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        opt.step([np.ones(5)], max_norm=1.0)      # a bad gradient is named by its index
    assert fingerprint(opt, p) == before


def test_grad_norm_is_none_without_clipping():
    p = [np.ones(4)]
    opt = fastopt.SGD(p, lr=0.1)
    opt.step([np.ones(4)], max_norm=1.0)
    assert opt.grad_norm == pytest.approx(2.0)
    opt.step([np.ones(4)])
    assert opt.grad_norm is None
