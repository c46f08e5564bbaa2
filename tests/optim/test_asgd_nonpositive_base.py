"""ASGD's next step size ``lr / (1 + lambd lr t) ** alpha`` for a negative ``lambd`` (torch takes
any real ``lambd`` and ``alpha``): from the step ``t = 1 / (-lambd lr)`` on the base is zero or
negative. fastopt computes it in IEEE double arithmetic (C's pow and division: inf, 0 or nan);
torch, in Python floats, raises ZeroDivisionError for a zero base and keeps the real part of a
complex power for a negative one. The reference must give fastopt's IEEE values there instead of
raising or returning a complex number, and torch's everywhere else."""
import numpy as np
import pytest

import fastopt
from reference import RefOptimizer

#: (lr, lambd, alpha): base 1 + lambd lr t of 0.5, 0, -0.5, -1, ... (0.5 apart; exact in binary),
#: with a fractional, an integer, a zero and a negative power.
CASES = [(0.5, -1.0, 0.75), (0.5, -1.0, 2.0), (0.5, -1.0, 0.0), (0.5, -1.0, -0.5),
         (1.0, -0.5, 0.75), (0.25, -1.0, -1.5)]


def same(a, b):
    """Bitwise equal, any NaN equal to any NaN."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(nan_a, nan_b)) and a[~nan_a].tobytes() == b[~nan_b].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lr, lambd, alpha", CASES)
def test_asgd_base_through_zero_matches_reference(lr, lambd, alpha, dtype):
    rng = np.random.default_rng(11)
    p = rng.standard_normal(23).astype(dtype)
    hypers = dict(lr=lr, lambd=lambd, alpha=alpha, t0=2.0, weight_decay=0.0)
    opt = fastopt.ASGD([p], **hypers)
    ref = RefOptimizer("ASGD", [dict(params=[p.copy()], maximize=False, **hypers)])
    for step in range(8):
        g = rng.standard_normal(23).astype(dtype)
        opt.step([g.copy()])
        ref.step([g.copy()])
        state = opt.state_dict()["state"][0]
        for key in ("eta", "mu", "ax"):
            assert same(np.asarray(state[key]), np.asarray(ref.state[0][key])), f"{key}, step {step + 1}"
        assert same(p, ref.params[0]), f"param, step {step + 1}"


@pytest.mark.parametrize("lr, lambd, alpha", [(0.25, -1.0, 0.75), (0.25, -1.0, 2.0), (1e-2, 1e-4, 0.75)])
def test_asgd_positive_base_matches_torch(lr, lambd, alpha):
    """While the base stays positive (0.75, 0.5, 0.25 for lambd lr = -1/4) the reference's eta is
    torch's, bit for bit."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(5)
    hypers = dict(lr=lr, lambd=lambd, alpha=alpha, t0=1e6, weight_decay=0.0)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = torch.optim.ASGD([tp], **hypers)
    ref = RefOptimizer("ASGD", [dict(params=[p0.copy()], maximize=False, **hypers)])
    for _ in range(3):
        g = rng.standard_normal(5)
        tp.grad = torch.tensor(g.copy())
        topt.step()
        ref.step([g.copy()])
        assert np.float32(topt.state[tp]["eta"].item()) == ref.state[0]["eta"]
