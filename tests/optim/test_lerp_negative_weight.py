"""torch.lerp's choice of formula for a negative weight: RMSprop's grad_avg is averaged with weight
``1 - alpha``, negative for ``alpha > 1`` (torch only requires ``alpha >= 0``). torch takes
``start + w (end - start)`` for ``|w| < 0.5`` and ``end - (end - start)(1 - w)`` otherwise, so from
``alpha >= 1.5`` on the second form: the magnitude of the weight decides, not its sign."""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import RefOptimizer

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("weight", [-0.5, -0.75, -0.3, 0.3, 0.7])
def test_torch_lerp_form_depends_on_the_weights_magnitude(weight):
    """The rule the reference's ``lerp`` and fastopt's lerp switch follow is torch's. torch
    evaluates the form it takes with a fused multiply-add, so its float32 bits are that form with
    an exact product: evaluated in float64 (a product of two floats is exact there), then rounded."""
    rng = np.random.default_rng(7)
    start, end = rng.standard_normal((2, 300)).astype(np.float32)
    got = np.array([torch.lerp(torch.tensor(start[i]), torch.tensor(end[i]), weight).item()
                    for i in range(300)], dtype=np.float32)
    w = np.float32(weight)
    difference = np.float64(1) * (end - start)          # rounded to float32 first, as torch does
    if abs(w) < 0.5:
        fused = start + np.float64(w) * difference
    else:
        fused = end - difference * np.float64(np.float32(1) - w)
    assert np.array_equal(fused.astype(np.float32), got)


def same(a, b):
    """Bitwise equal, any NaN equal to any NaN (a centered RMSprop with alpha > 1 takes the square
    root of a negative variance estimate: NaN params whose sign bits need not agree)."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(nan_a, nan_b)) and a[~nan_a].tobytes() == b[~nan_b].tobytes()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [1, 37, 1003], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("alpha", [1.5, 1.75, 1.98, 1.25])
def test_rmsprop_centered_alpha_above_one_matches_reference(alpha, dtype, size, threads):
    """Every element (SIMD body, scalar tail, either thread's chunk) of grad_avg, square_avg and
    the param is the reference's, bit for bit, over a few steps: alpha = 1.5 (weight -0.5) is the
    first to take the second form."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(size).astype(dtype)
    hypers = dict(lr=1e-2, alpha=alpha, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=True)
    opt = fastopt.RMSprop([p], **hypers)
    ref = RefOptimizer("RMSprop", [dict(params=[p.copy()], maximize=False, **hypers)])
    old_min = kernels.get_parallel_min_size()
    fastopt.set_num_threads(threads)
    if threads > 1:
        kernels.set_parallel_min_size(16)
    try:
        for step in range(4):
            g = rng.standard_normal(size).astype(dtype)
            opt.step([g.copy()])
            ref.step([g.copy()])
            state = opt.state_dict()["state"][0]
            for key in ("grad_avg", "square_avg"):
                assert same(state[key], ref.state[0][key]), f"{key}, step {step + 1}"
            assert same(p, ref.params[0]), f"param, step {step + 1}"
    finally:
        fastopt.set_num_threads(0)
        kernels.set_parallel_min_size(old_min)
