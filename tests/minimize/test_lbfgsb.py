"""L-BFGS-B (bounds), finite differences and SciPy-compatible options, against SciPy's L-BFGS-B:
same iterates, evaluation counts, messages and hess_inv where the arithmetic allows."""
import os
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import Bounds, LbfgsInvHessProduct, minimize, rosen, rosen_der

import fastopt
from fastopt.minimize import lbfgs, minimize_lbfgs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "_support"))
import mgh_problems  # noqa: E402

PROBLEMS = mgh_problems.all_problems()
PROBLEM_IDS = [p.name for p in PROBLEMS]


def rosen_pair(x):
    return rosen(x), rosen_der(x)


def scipy_lbfgsb(fun, x0, **kwargs):
    with np.errstate(all="ignore"):
        return minimize(fun, x0, method="L-BFGS-B", **kwargs)


def bounded(problem):
    x_free = scipy_lbfgsb(problem.fun_and_grad, problem.x0, jac=True).x
    lower, upper = mgh_problems.box_cutting_off_minimizer(problem, x_free)
    return list(zip(lower, upper))


# ---------------------------------------------------------------------------------------------
# Bounded problems against SciPy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEM_IDS)
def test_bounded_mgh_reaches_scipys_value_inside_the_box(problem):
    bounds = bounded(problem)
    reference = scipy_lbfgsb(problem.fun_and_grad, problem.x0, jac=True, bounds=bounds)
    with np.errstate(all="ignore"):
        result = minimize_lbfgs(problem.fun_and_grad, problem.x0, bounds=bounds)
    lower, upper = np.array(bounds).T
    assert np.all(result.x >= lower) and np.all(result.x <= upper)
    assert result.status == reference.status, (result.message, reference.message)
    assert result.fun <= reference.fun + 1e-8 + 1e-6 * abs(reference.fun)
    assert result.fun == pytest.approx(problem.fun(result.x), rel=1e-12, abs=1e-300)
    # the same bounds are active as at SciPy's solution
    np.testing.assert_array_equal((result.x == lower) | (result.x == upper),
                                  (reference.x == lower) | (reference.x == upper))


def test_bounded_mgh_evaluations_total_within_ten_percent_of_scipy():
    ours = theirs = 0
    for problem in PROBLEMS:
        bounds = bounded(problem)
        theirs += scipy_lbfgsb(problem.fun_and_grad, problem.x0, jac=True, bounds=bounds).nfev
        with np.errstate(all="ignore"):
            ours += minimize_lbfgs(problem.fun_and_grad, problem.x0, bounds=bounds).nfev
    assert ours <= 1.1 * theirs, (ours, theirs)


@pytest.mark.parametrize("bounds", [
    [(-2.0, 0.5)] * 5,
    Bounds([-1.0, 0.2, -np.inf, 0.0, -3.0], [0.5, np.inf, 0.1, 0.0, 3.0]),
    [(None, 0.3), (0.5, None), (None, None), (-1, 1), (0.9, 0.95)],
])
def test_bounded_iterates_counts_and_hess_inv_are_scipys(bounds):
    x0 = np.array([-1.2, 1.0, -1.2, 1.0, 0.3])
    reference = scipy_lbfgsb(rosen, x0, jac=rosen_der, bounds=bounds)
    result = minimize(rosen, x0, jac=rosen_der, method=lbfgs, bounds=bounds)
    assert (result.nit, result.nfev, result.njev) == (reference.nit, reference.nfev,
                                                      reference.njev)
    assert result.message == reference.message and result.status == reference.status
    np.testing.assert_allclose(result.x, reference.x, rtol=1e-10, atol=1e-12)
    assert isinstance(result.hess_inv, LbfgsInvHessProduct)
    np.testing.assert_allclose(result.hess_inv.todense(), reference.hess_inv.todense(),
                               rtol=1e-6, atol=1e-9)


def test_x0_outside_the_box_is_projected():
    seen = []

    def fun(x):
        seen.append(x.copy())
        return rosen_pair(x)

    minimize_lbfgs(fun, [5.0, -5.0], bounds=[(-1, 1), (-1, 1)])
    np.testing.assert_array_equal(seen[0], [1.0, -1.0])
    assert all(np.all(np.abs(x) <= 1.0) for x in seen)


def test_unconstrained_iterates_and_hess_inv_are_scipys():
    x0 = np.array([-1.2, 1.0, -1.2, 1.0, 0.3])
    for maxiter in (7, 12, 15000):
        reference = scipy_lbfgsb(rosen, x0, jac=rosen_der, options=dict(maxiter=maxiter))
        result = minimize_lbfgs(rosen_pair, x0, maxiter=maxiter)
        assert (result.nit, result.nfev) == (reference.nit, reference.nfev)
        assert result.message == reference.message
        np.testing.assert_allclose(result.hess_inv.todense(), reference.hess_inv.todense(),
                                   rtol=1e-6, atol=1e-9)


def test_bounded_nan_region_is_backtracked_out_of():
    def fun(x):
        if x[0] > 1.5:
            return np.nan, np.full_like(x, np.nan)
        return float((x[0] - 1.4) ** 2 + x[1] ** 2), np.array([2 * (x[0] - 1.4), 2 * x[1]])

    result = minimize_lbfgs(fun, [-3.0, 0.1], bounds=[(-5, 5), (0.05, 1)])
    assert result.success and np.isfinite(result.fun)
    np.testing.assert_allclose(result.x, [1.4, 0.05], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Finite differences through SciPy's machinery
# ---------------------------------------------------------------------------------------------

def convex(x):
    """A smooth convex function (a well-conditioned quartic), on which SciPy's run and ours do not
    drift apart in round-off even with noisy finite-difference gradients."""
    scale = np.arange(1.0, x.size + 1.0)
    return scale @ (x - 0.3) ** 2 + 0.25 * np.sum(x ** 4) + np.sum(x)   # complex for 'cs'


@pytest.mark.parametrize("jac", [None, "2-point", "3-point", "cs"])
@pytest.mark.parametrize("with_bounds", [False, True])
def test_finite_differences_count_and_land_as_scipy(jac, with_bounds):
    x0 = np.array([-1.2, 1.0, 0.7, 2.0])
    bounds = [(-2, 0.9), (None, 0.1), (0.1, 2), (-1, None)] if with_bounds else None
    calls = []

    def fun(x):
        calls.append(1)
        return convex(x)

    reference = scipy_lbfgsb(convex, x0, jac=jac, bounds=bounds)
    result = minimize_lbfgs(fun, x0, jac=jac, bounds=bounds)
    assert result.nfev == len(calls) == reference.nfev
    assert result.njev == reference.njev and result.nit == reference.nit
    np.testing.assert_allclose(result.x, reference.x, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("jac", [None, "3-point"])
def test_finite_differences_on_rosenbrock_follow_scipy(jac):
    """On Rosenbrock round-off differences grow along the valley; the first iterations agree."""
    x0 = np.array([-1.2, 1.0, 0.7])
    reference = scipy_lbfgsb(rosen, x0, jac=jac, options=dict(maxiter=8))
    result = minimize_lbfgs(rosen, x0, jac=jac, maxiter=8)
    assert result.nfev == reference.nfev and result.message == reference.message
    np.testing.assert_allclose(result.x, reference.x, rtol=1e-7)
    assert minimize_lbfgs(rosen, x0, jac=jac).fun < 1e-9


def test_finite_difference_options_reach_scipy():
    x0 = np.array([-1.2, 1.0])
    for kwargs in (dict(eps=1e-4), dict(finite_diff_rel_step=1e-3, jac="2-point")):
        jac = kwargs.pop("jac", None)
        reference = scipy_lbfgsb(rosen, x0, jac=jac, options=kwargs)
        result = minimize_lbfgs(rosen, x0, jac=jac, **kwargs)
        assert result.nfev == reference.nfev
        np.testing.assert_allclose(result.x, reference.x, rtol=1e-7)


def test_plugin_without_jac_uses_finite_differences():
    result = minimize(rosen, [-1.2, 1.0], method=lbfgs)
    reference = scipy_lbfgsb(rosen, [-1.2, 1.0])
    assert result.success and result.nfev == reference.nfev
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-4)


def test_fixed_variables_with_finite_differences_are_removed_as_scipy_does():
    bounds = [(0.5, 0.5), (-2, 2), (0.3, 0.3)]
    x0 = [0.5, 1.0, 0.3]
    result = minimize(rosen, x0, method=lbfgs, bounds=bounds)
    reference = scipy_lbfgsb(rosen, x0, bounds=bounds)
    np.testing.assert_allclose(result.x, reference.x, rtol=1e-7)
    assert np.isnan(result.jac[0]) and np.isnan(result.jac[2]) and result.hess_inv is None
    everything_fixed = minimize_lbfgs(rosen, x0, jac=None, bounds=[(0.5, 0.5), (1, 1), (2, 2)])
    assert everything_fixed.success and everything_fixed.nfev == 1
    assert everything_fixed.message == "All independent variables were fixed by bounds."
    assert everything_fixed.fun == rosen([0.5, 1.0, 2.0])


# ---------------------------------------------------------------------------------------------
# Options, results and errors as SciPy's
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [dict(maxiter=0), dict(maxiter=2.5), dict(maxfun=5.5),
                                     dict(maxfun=50.0, maxcor=5), dict(maxiter=100.1),
                                     dict(maxls=3)])
def test_limits_accept_what_scipy_accepts(options):
    reference = scipy_lbfgsb(rosen, [1.3, 0.7, 0.8], jac=rosen_der, options=options)
    result = minimize(rosen, [1.3, 0.7, 0.8], jac=rosen_der, method=lbfgs, options=options)
    assert (result.nit, result.nfev, result.status) == (reference.nit, reference.nfev,
                                                        reference.status)
    assert result.message == reference.message


def test_counts_take_integral_floats():
    as_int = minimize_lbfgs(rosen_pair, [1.3, 0.7], m=5, maxls=3)
    as_float = minimize_lbfgs(rosen_pair, [1.3, 0.7], m=5.0, maxls=3.0)
    assert (as_int.nit, as_int.nfev) == (as_float.nit, as_float.nfev)
    with pytest.raises(TypeError, match="maxls"):
        minimize_lbfgs(rosen_pair, [1.3, 0.7], maxls=2.5)


def test_result_types_are_scipys():
    result = minimize_lbfgs(lambda x: (np.array([rosen(x)]), rosen_der(x)), [-1.2, 1.0])
    assert type(result.fun) is np.float64 and result.success
    assert isinstance(result.nit, int) and isinstance(result.nfev, int)
    assert isinstance(result.hess_inv, LbfgsInvHessProduct)
    assert result.hess_inv.shape == (2, 2)


@pytest.mark.parametrize("bounds, message", [
    ([(0, 1)], "length of x0 != length of bounds"),
    ([(0, 1), (2, 1)], "An upper bound is less than the corresponding lower bound"),
    (Bounds([0, 0, 0], [1, 1, 1]), "number of bounds is not compatible"),
    ([(0, np.nan), (0, 1)], "NaN"),
])
def test_bad_bounds_raise_scipys_errors(bounds, message):
    with pytest.raises(ValueError, match=message):
        minimize_lbfgs(rosen_pair, [0.5, 0.5], bounds=bounds)


def test_deprecated_options_warn_and_unknown_ones_are_reported():
    with pytest.warns(DeprecationWarning, match="iprint"):
        minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, options=dict(iprint=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs,
                 options=dict(maxcor=4, eps=1e-6, finite_diff_rel_step=None, workers=None))


@pytest.mark.parametrize("style", ["xk", "intermediate_result"])
def test_bounded_callbacks_in_both_styles(style):
    seen = []
    if style == "xk":
        def callback(xk):
            seen.append(xk)
    else:
        def callback(intermediate_result):
            seen.append(intermediate_result.x)
            if len(seen) == 4:
                raise StopIteration
    result = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs,
                      bounds=[(-2, 0.8), (-2, 2)], callback=callback)
    assert len(seen) == result.nit
    np.testing.assert_array_equal(seen[-1], result.x)
    if style == "intermediate_result":
        assert result.status == 99 and result.nit == 4


def test_float32_with_bounds_runs_in_float64():
    result = minimize_lbfgs(rosen_pair, np.array([-1.2, 1.0], dtype=np.float32),
                            bounds=[(-2, 0.8), (-2, 2)])
    assert result.x.dtype == np.float64 and result.success


def test_top_level_names_still_work():
    assert fastopt.minimize_lbfgs is minimize_lbfgs and fastopt.lbfgs is lbfgs


# ---------------------------------------------------------------------------------------------
# The bench module for bounded problems (no timing assertions)
# ---------------------------------------------------------------------------------------------

def test_bounded_bench_rows():
    from fastopt.benchmarks.lbfgsb_vs_scipy import (chained_rosenbrock_box,
                                                    compare_bounded_with_scipy, format_bounded_rows)
    lower, upper = chained_rosenbrock_box(9)
    assert np.isfinite(lower).sum() == 6 and np.isfinite(upper).sum() == 3
    rows = compare_bounded_with_scipy(sizes=[60], repeats=1)
    row = rows[0]
    assert row["n"] == 60 and row["active"] == 20   # a third of the coordinates at a bound
    assert row["scipy_nit"] == row["fastopt_nit"]
    assert row["fastopt_fun"] <= row["scipy_fun"] * (1 + 1e-9)
    assert row["ratio"] == pytest.approx(row["fastopt_us_per_iter"] / row["scipy_us_per_iter"])
    assert "| 60 |" in format_bounded_rows(rows)


def test_owlqn_bench_row():
    from fastopt.benchmarks.lbfgsb_vs_scipy import compare_owlqn_with_saga
    row = compare_owlqn_with_saga(repeats=1)
    assert abs(row["rel_gap"]) <= 1e-6 and row["owlqn_zeros"] == row["saga_zeros"]
    assert row["owlqn_s"] > 0 and row["saga_s"] > 0


def test_stepwise_lbfgs_with_bounds_runs_lbfgsb_from_the_current_point():
    from fastopt import LBFGS
    x = np.array([-1.2, 1.0, 0.5])
    y = np.array([[2.0]])
    bounds = [(-2, 0.8), (None, None), (0.6, 1.0), (-1.0, 1.5)]
    opt = LBFGS([x, y], max_iter=200, max_eval=300, bounds=bounds, tolerance_grad=1e-9,
                tolerance_change=1e-15, history_size=10)

    def closure():
        z = np.concatenate([x, y.ravel()])
        g = rosen_der(z)
        return rosen(z), [g[:3], g[3:].reshape(1, 1)]

    loss0 = opt.step(closure)   # from the start point projected into the box
    assert loss0 == pytest.approx(rosen([-1.2, 1.0, 0.6, 1.5]))
    reference = scipy_lbfgsb(rosen, [-1.2, 1.0, 0.6, 1.5], jac=rosen_der, bounds=bounds,
                             options=dict(gtol=1e-9, ftol=1e-15, maxiter=200, maxfun=300))
    np.testing.assert_allclose(np.concatenate([x, y.ravel()]), reference.x, rtol=1e-7,
                               atol=1e-9)
    assert opt.state["n_iter"] == reference.nit
    with pytest.raises(ValueError, match="bounds"):
        LBFGS([x], bounds=[(0, 1)])
