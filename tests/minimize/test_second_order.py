"""Newton (plain and saddle-free), dense BFGS and critical-point classification, checked against
closed-form answers (quadratics, the Rosenbrock optimum, saddles) and SciPy."""
import os
import sys

import numpy as np
import pytest
from scipy.optimize import OptimizeResult, minimize, rosen, rosen_der, rosen_hess

from fastopt.minimize import classify_critical_point, minimize_bfgs, newton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "_support"))
import mgh_problems  # noqa: E402


def random_spd(n, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    return B @ B.T + n * np.eye(n), rng.standard_normal(n)


def quadratic(A, b):
    return lambda x: (0.5 * x @ A @ x - b @ x, A @ x - b)


# x^2 - y^2: a saddle at the origin; with + y^4 the minima are at (0, +-1/sqrt 2), f = -1/4.
def saddle(x):
    return x[0] ** 2 - x[1] ** 2, np.array([2.0 * x[0], -2.0 * x[1]])


def saddle_hess(x):
    return np.diag([2.0, -2.0])


def saddle_quartic(x):
    return (x[0] ** 2 - x[1] ** 2 + x[1] ** 4,
            np.array([2.0 * x[0], -2.0 * x[1] + 4.0 * x[1] ** 3]))


def saddle_quartic_hess(x):
    return np.diag([2.0, -2.0 + 12.0 * x[1] ** 2])


# ---------------------------------------------------------------------------------------------
# Newton
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("saddle_free", [False, True])
@pytest.mark.parametrize("n, seed", [(1, 0), (5, 1), (20, 2)])
def test_newton_is_exact_in_one_step_on_a_quadratic(n, seed, saddle_free):
    A, b = random_spd(n, seed)
    result = newton(quadratic(A, b), np.ones(n), True, lambda x: A, saddle_free=saddle_free)
    assert result.success and result.nit == 1 and result.nhev == 1
    assert result.nfev == 2  # x0 and the unit Newton step, accepted at once
    np.testing.assert_allclose(result.x, np.linalg.solve(A, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("saddle_free", [False, True])
@pytest.mark.parametrize("line_search", ["more-thuente", "armijo"])
def test_newton_reaches_the_rosenbrock_optimum(saddle_free, line_search):
    result = newton(rosen, [-1.2, 1.0], rosen_der, rosen_hess, saddle_free=saddle_free,
                    line_search=line_search)
    assert result.success, result.message
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-8)
    assert classify_critical_point(rosen_hess(result.x)) == "minimum"
    # Newton needs far fewer iterations than a quasi-Newton method on this problem
    assert result.nit < minimize(rosen, [-1.2, 1.0], jac=rosen_der, method="BFGS").nit


@pytest.mark.parametrize("x0", [[0.1, 0.1], [0.1, -0.05], [-0.3, 0.2]])
def test_plain_newton_lands_on_the_saddle(x0):
    result = newton(saddle, x0, True, saddle_hess)
    np.testing.assert_allclose(result.x, [0.0, 0.0], atol=1e-12)
    assert result.nit == 1
    assert classify_critical_point(saddle_hess(result.x)) == "saddle"


@pytest.mark.parametrize("x0", [[0.1, 0.1], [0.1, -0.05], [-0.3, 0.2]])
@pytest.mark.parametrize("line_search", ["more-thuente", "armijo"])
def test_saddle_free_newton_moves_away_from_the_saddle(x0, line_search):
    f0 = saddle(np.array(x0))[0]
    result = newton(saddle, x0, True, saddle_hess, saddle_free=True, maxiter=3,
                    line_search=line_search)
    assert result.nit >= 1
    assert result.fun < f0
    assert abs(result.x[1]) > abs(x0[1])  # escapes along the negative-curvature axis
    assert np.linalg.norm(result.x) > np.linalg.norm(x0)
    # The first step is -|H|^{-1} g = (-x, +y): toward the y axis and away from the x axis.
    # (f is unbounded below along it, so Moré–Thuente extrapolates the step a long way.)
    first = []
    newton(saddle, x0, True, saddle_hess, saddle_free=True, maxiter=1, line_search=line_search,
           callback=lambda xk: first.append(xk))
    direction = first[0] - np.array(x0)
    expected = np.array([-x0[0], x0[1]])
    assert direction @ expected == pytest.approx(np.linalg.norm(direction)
                                                 * np.linalg.norm(expected), rel=1e-12)


@pytest.mark.parametrize("x0", [[0.1, 0.05], [-0.2, -0.01]])
def test_saddle_free_newton_finds_the_minimum_plain_newton_the_saddle(x0):
    plain = newton(saddle_quartic, x0, True, saddle_quartic_hess)
    free = newton(saddle_quartic, x0, True, saddle_quartic_hess, saddle_free=True)
    assert classify_critical_point(saddle_quartic_hess(plain.x)) == "saddle"
    assert classify_critical_point(saddle_quartic_hess(free.x)) == "minimum"
    assert free.fun == pytest.approx(-0.25, abs=1e-12)
    np.testing.assert_allclose(np.abs(free.x), [0.0, 1.0 / np.sqrt(2.0)], atol=1e-8)


def test_newton_bad_input():
    with pytest.raises(TypeError, match="hess"):
        newton(saddle, [0.1, 0.1], True, None)
    with pytest.raises(ValueError, match="hess"):
        newton(saddle, [0.1, 0.1], True, lambda x: np.eye(3))
    with pytest.raises(ValueError, match="x0"):
        newton(saddle, [np.nan, 0.1], True, saddle_hess)
    with pytest.raises(ValueError, match="gtol"):
        newton(saddle, [0.1, 0.1], True, saddle_hess, gtol=-1)
    result = newton(lambda x: (np.nan, np.zeros(2)), [0.1, 0.1], True, saddle_hess)
    assert result.status == 2 and not result.success
    result = newton(saddle, [0.1, 0.1], True, lambda x: np.full((2, 2), np.inf))
    assert result.status == 2 and "Hessian" in result.message


def test_newton_backtracks_out_of_a_nan_region():
    # f = -log(1 - x^2) + x^2/2 is defined on (-1, 1) only; the first Newton step from 0.9
    # overshoots the domain edge.
    def fun(x):
        if abs(x[0]) >= 1.0:
            return np.nan, np.array([np.nan])
        return float(-np.log(1 - x[0] ** 2) + 0.5 * x[0] ** 2), \
            np.array([2 * x[0] / (1 - x[0] ** 2) + x[0]])

    def hess(x):
        return np.array([[2 * (1 + x[0] ** 2) / (1 - x[0] ** 2) ** 2 + 1.0]])

    result = newton(fun, [0.9], True, hess, saddle_free=True)
    assert result.success
    assert result.x[0] == pytest.approx(0.0, abs=1e-8)


# ---------------------------------------------------------------------------------------------
# classify_critical_point
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eigenvalues, expected", [
    ([1.0, 2.0, 3.0], "minimum"),
    ([-1.0, -2.0], "maximum"),
    ([1.0, -1e-3], "saddle"),
    ([1.0, 0.0, -1.0], "saddle"),
    ([1.0, 0.0], "degenerate"),
    ([-1.0, 1e-12], "degenerate"),
    ([0.0], "degenerate"),
])
def test_classify_critical_point_by_eigenvalues(eigenvalues, expected):
    rng = np.random.default_rng(len(eigenvalues))
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    H = Q @ np.diag(eigenvalues) @ Q.T  # rotated, so the test is not about diagonal matrices
    assert classify_critical_point(H) == expected


def test_classify_critical_point_rejects_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        classify_critical_point(np.ones((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        classify_critical_point(np.array([[np.nan]]))


# ---------------------------------------------------------------------------------------------
# Dense BFGS
# ---------------------------------------------------------------------------------------------

PROBLEMS = mgh_problems.all_problems()


@pytest.mark.parametrize("problem", PROBLEMS, ids=[p.name for p in PROBLEMS])
def test_bfgs_reaches_scipy_bfgs_optimum(problem):
    with np.errstate(over="ignore", invalid="ignore"):
        reference = minimize(problem.fun_and_grad, problem.x0, jac=True, method="BFGS",
                             options=dict(gtol=1e-6, maxiter=5000))
        result = minimize_bfgs(problem.fun_and_grad, problem.x0, gtol=1e-6, ftol=0.0)
    assert isinstance(result, OptimizeResult)
    assert result.status in (0, 2), result.message  # 2: no more progress possible at round-off
    assert result.fun <= reference.fun + 1e-8 + 1e-6 * abs(reference.fun)


def test_bfgs_result_matches_minimize_lbfgs_api():
    from fastopt.minimize import minimize_lbfgs
    a = minimize_bfgs(lambda x: (rosen(x), rosen_der(x)), [-1.2, 1.0])
    b = minimize_lbfgs(lambda x: (rosen(x), rosen_der(x)), [-1.2, 1.0])
    assert set(b) <= set(a)
    assert a.success and a.x == pytest.approx([1.0, 1.0], abs=1e-4)
    assert a.hess_inv.shape == (2, 2)
    # hess_inv approximates the inverse Hessian at the optimum
    np.testing.assert_allclose(a.hess_inv, np.linalg.inv(rosen_hess(a.x)), rtol=0.3, atol=0.05)


def test_bfgs_callbacks_float32_and_bad_input():
    seen = []
    result = minimize_bfgs(rosen, [-1.2, 1.0], jac=rosen_der, callback=lambda xk: seen.append(xk))
    assert len(seen) == result.nit

    def stop(intermediate_result):
        raise StopIteration

    result = minimize_bfgs(rosen, [-1.2, 1.0], jac=rosen_der, callback=stop)
    assert result.status == 99 and result.nit == 1
    result = minimize_bfgs(rosen, np.array([-1.2, 1.0], dtype=np.float32), jac=rosen_der,
                           gtol=1e-3)
    assert result.x.dtype == np.float32
    assert result.x == pytest.approx([1.0, 1.0], abs=2e-2)
    with pytest.raises(ValueError, match="jac"):
        minimize_bfgs(lambda x: (1.0, np.zeros(3)), [1.0, 2.0])
    with pytest.raises(ValueError, match="maxls"):
        minimize_bfgs(rosen, [1.0, 2.0], jac=rosen_der, maxls=0)
