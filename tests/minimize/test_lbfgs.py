"""Tests of fastopt's L-BFGS against independent references: SciPy's L-BFGS-B and line search,
a NumPy two-loop recursion, finite differences, torch.optim.LBFGS and the MGH literature values."""
import os
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import OptimizeResult, OptimizeWarning, minimize, rosen, rosen_der

from fastopt.minimize import LBFGS, MoreThuente, lbfgs, minimize_lbfgs, two_loop_direction

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "_support"))
import mgh_problems  # noqa: E402

PROBLEMS = mgh_problems.all_problems()
PROBLEM_IDS = [p.name for p in PROBLEMS]


def starts(problem, count=5):
    """x0 and count - 1 copies moved by ~1e-9 relative.

    Where both solvers stop on the ftol test at a zero-residual minimum, the final f depends on
    rounding (BLAS kernels, FMA) more than on the method: from starts 1e-9 apart, both land
    anywhere between ~1e-12 and ~1e-7 on the extended Rosenbrock function. So results are
    compared over a few starts, by their median, not from one start.
    """
    rng = np.random.default_rng(len(problem.name) * 1000 + problem.n)
    points = [problem.x0]
    for _ in range(count - 1):
        points.append(problem.x0 + 1e-9 * np.maximum(np.abs(problem.x0), 1.0)
                      * rng.uniform(-1.0, 1.0, problem.n))
    return points


def scipy_lbfgsb(problem, x0=None):
    with np.errstate(over="ignore", invalid="ignore"):
        return minimize(problem.fun_and_grad, problem.x0 if x0 is None else x0, jac=True,
                        method="L-BFGS-B", options=dict(maxcor=10, gtol=1e-5, ftol=2.2e-9))


def fastopt_lbfgs(problem, x0=None, **kwargs):
    with np.errstate(over="ignore", invalid="ignore"):
        return minimize_lbfgs(problem.fun_and_grad, problem.x0 if x0 is None else x0, **kwargs)


def reaches_literature_value(f, problem):
    """Within 1e-4 (relative) or 1e-6 (absolute) of a minimum value listed by MGH."""
    return any(abs(f - f_star) <= 1e-6 + 1e-4 * abs(f_star) for f_star in problem.f_star)


# ---------------------------------------------------------------------------------------------
# The problem set itself
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEM_IDS)
def test_mgh_jacobians_match_central_differences(problem):
    """g = 2 J'r is assembled mechanically, so checking J column by column against central
    differences of the residuals checks the gradient (and, unlike differencing f, stays
    accurate when f is huge, as in Brown badly scaled)."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = problem.x0 + 0.1 * rng.standard_normal(problem.n)
        analytic = problem.jacobian(x)
        for j in range(problem.n):
            h = 1e-6 * max(1.0, abs(x[j]))
            e = np.zeros(problem.n)
            e[j] = h
            numeric = (problem.residuals(x + e) - problem.residuals(x - e)) / (2.0 * h)
            scale = max(1.0, np.abs(analytic[:, j]).max())
            # plus the cancellation error of differencing residuals of size |r|
            rounding = 4e-16 * np.abs(problem.residuals(x)).max() / h
            assert np.abs(analytic[:, j] - numeric).max() <= 1e-6 * scale + rounding, \
                (problem.name, j)


@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEM_IDS)
def test_mgh_gradients_match_check_grad(problem):
    from scipy.optimize import check_grad
    rng = np.random.default_rng(1)
    x = problem.x0 + 0.1 * rng.standard_normal(problem.n)
    g = problem.grad(x)
    # forward differences lose about sqrt(eps) |f| / h of accuracy
    tolerance = 1e-5 * max(1.0, np.linalg.norm(g)) + 1e-6 * abs(problem.fun(x))
    assert check_grad(problem.fun, problem.grad, x, epsilon=1e-7) <= tolerance


def test_problem_set_has_at_least_15_problems():
    assert len(PROBLEMS) >= 15


# ---------------------------------------------------------------------------------------------
# Convergence against SciPy's L-BFGS-B
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEM_IDS)
def test_more_thuente_reaches_scipy_optimum(problem):
    ours, theirs = [], []
    for x0 in starts(problem):
        reference = scipy_lbfgsb(problem, x0)
        result = fastopt_lbfgs(problem, x0)
        assert result.success, result.message
        assert np.isfinite(result.fun)
        # the reported f and gradient belong to the reported x
        assert result.fun == pytest.approx(problem.fun(result.x), rel=1e-12, abs=1e-300)
        np.testing.assert_allclose(result.jac, problem.grad(result.x), rtol=1e-10, atol=1e-12)
        ours.append(result.fun)
        theirs.append(reference.fun)
    f_ours, f_theirs = np.median(ours), np.median(theirs)
    assert f_ours <= f_theirs + 1e-8 + 1e-6 * abs(f_theirs), (ours, theirs)


@pytest.mark.parametrize("problem", PROBLEMS, ids=PROBLEM_IDS)
def test_armijo_reaches_scipy_optimum(problem):
    reference = scipy_lbfgsb(problem)
    result = fastopt_lbfgs(problem, line_search="armijo")
    assert result.status in (0, 1), result.message
    assert result.fun <= reference.fun + 1e-6 + 1e-4 * abs(reference.fun)


def problem_set_totals():
    """Over every problem and start (see ``starts``): how many reach a literature minimum, and,
    where both solvers do, the evaluations SciPy used and the evaluations fastopt needed to get
    as low as SciPy's final value (all of its evaluations if it never did)."""
    totals = dict(solved_scipy=0, solved_fast=0, nfev_scipy=0, nfev_fast=0)
    for problem in PROBLEMS:
        for x0 in starts(problem):
            reference = scipy_lbfgsb(problem, x0)
            values = []

            def recorded(x, problem=problem):
                f, g = problem.fun_and_grad(x)
                values.append(f)
                return f, g

            with np.errstate(over="ignore", invalid="ignore"):
                result = minimize_lbfgs(recorded, x0)
            ok_scipy = reaches_literature_value(reference.fun, problem)
            ok_fast = reaches_literature_value(result.fun, problem)
            totals["solved_scipy"] += ok_scipy
            totals["solved_fast"] += ok_fast
            if ok_scipy and ok_fast:
                target = reference.fun + 1e-12 + 1e-6 * abs(reference.fun)
                reached = [i + 1 for i, f in enumerate(values) if f <= target]
                totals["nfev_scipy"] += reference.nfev
                totals["nfev_fast"] += reached[0] if reached else result.nfev
    return totals


def test_problem_set_totals_no_worse_than_scipy():
    """As many problems solved (to a literature minimum) as L-BFGS-B, and, on the problems both
    solve, no more evaluations in total to get as low as L-BFGS-B's final value."""
    totals = problem_set_totals()
    assert totals["solved_fast"] >= totals["solved_scipy"], totals
    assert totals["nfev_fast"] <= totals["nfev_scipy"], totals


@pytest.mark.parametrize("n", [8191, 8192, 20000])
def test_large_problems_follow_scipy_on_both_sides_of_the_gil_threshold(n):
    """From 8192 elements the vector work runs without the GIL (other code paths in C)."""
    from fastopt.benchmarks.lbfgs_vs_scipy import chained_rosenbrock, chained_rosenbrock_start
    x0 = chained_rosenbrock_start(n)
    ours = minimize_lbfgs(chained_rosenbrock, x0, maxiter=40)
    theirs = minimize(chained_rosenbrock, x0, jac=True, method="L-BFGS-B",
                      options=dict(maxiter=40, maxcor=10))
    assert ours.nit == theirs.nit == 40
    assert abs(ours.nfev - theirs.nfev) <= 2
    assert ours.fun == pytest.approx(theirs.fun, rel=1e-7)
    np.testing.assert_allclose(ours.x, theirs.x, atol=1e-4)


def test_known_optimum_of_rosenbrock_in_many_dimensions():
    x0 = np.tile([-1.2, 1.0], 50)
    result = minimize_lbfgs(lambda x: (rosen(x), rosen_der(x)), x0, gtol=1e-8, ftol=0.0)
    assert result.success
    np.testing.assert_allclose(result.x, np.ones(100), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Two-loop recursion against a plain NumPy reference
# ---------------------------------------------------------------------------------------------

def numpy_two_loop(g, history, rho, newest, count, gamma):
    m = rho.size
    q = -g.astype(np.float64)
    order = [(newest - k) % m for k in range(count)]
    alpha = {}
    for i in order:
        s, y = history[2 * i].astype(np.float64), history[2 * i + 1].astype(np.float64)
        alpha[i] = rho[i] * (s @ q)
        q -= alpha[i] * y
    r = gamma * q
    for i in reversed(order):
        s, y = history[2 * i].astype(np.float64), history[2 * i + 1].astype(np.float64)
        beta = rho[i] * (y @ r)
        r += (alpha[i] - beta) * s
    return r


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1003, 10001])
@pytest.mark.parametrize("m, newest, count", [(1, 0, 0), (1, 0, 1), (3, 0, 2), (5, 2, 5),
                                              (5, 4, 3), (10, 9, 10)])
def test_two_loop_matches_numpy(dtype, rtol, n, m, newest, count):
    rng = np.random.default_rng(n * 100 + m * 10 + count)
    # Pairs of a convex quadratic with Hessian diag(D), so every rho is positive as in L-BFGS.
    S = rng.standard_normal((m, n))
    Y = S * rng.uniform(0.5, 2.0, n)
    history = np.empty((2 * m, n))
    history[0::2], history[1::2] = S, Y
    history = history.astype(dtype)
    rho = 1.0 / np.einsum("ij,ij->i", history[0::2].astype(np.float64),
                          history[1::2].astype(np.float64))
    g = rng.standard_normal(n).astype(dtype)
    gamma = 0.7
    d = two_loop_direction(g, history, rho, newest, count, gamma)
    assert d.dtype == dtype
    expected = numpy_two_loop(g, history, rho, newest, count, gamma)
    np.testing.assert_allclose(d, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_loop_on_long_vectors_matches_numpy(dtype):
    """Long vectors are summed in blocks; still the same direction."""
    rng = np.random.default_rng(11)
    n, m = 70_001, 4
    S = rng.standard_normal((m, n))
    history = np.empty((2 * m, n))
    history[0::2], history[1::2] = S, S * rng.uniform(0.5, 2.0, n)
    history = history.astype(dtype)
    rho = 1.0 / np.einsum("ij,ij->i", history[0::2].astype(np.float64),
                          history[1::2].astype(np.float64))
    g = rng.standard_normal(n).astype(dtype)
    d = two_loop_direction(g, history, rho, 1, m, 0.5)
    expected = numpy_two_loop(g, history, rho, 1, m, 0.5)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(d, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def test_two_loop_with_conjugate_pairs_inverts_a_quadratic():
    """For y_i = A s_i with A-conjugate s_i, the BFGS updates are hereditary (H y_j = s_j for
    every stored pair), so n pairs give H = inv(A) whatever gamma is: d = -inv(A) g."""
    rng = np.random.default_rng(3)
    n = 6
    B = rng.standard_normal((n, n))
    A = B @ B.T + n * np.eye(n)
    S = []
    for v in rng.standard_normal((n, n)):  # Gram-Schmidt in the A inner product
        for s in S:
            v = v - (s @ A @ v) / (s @ A @ s) * s
        S.append(v)
    history = np.empty((2 * n, n))
    for k, s in enumerate(S):
        history[2 * k], history[2 * k + 1] = s, A @ s
    rho = 1.0 / np.einsum("ij,ij->i", history[0::2], history[1::2])
    g = rng.standard_normal(n)
    for gamma in (0.3, 1.0, 7.0):
        d = two_loop_direction(g, history, rho, n - 1, n, gamma)
        np.testing.assert_allclose(d, -np.linalg.solve(A, g), rtol=1e-8, atol=1e-10)


def test_two_loop_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="history"):
        two_loop_direction(np.zeros(3), np.zeros((4, 2)), np.ones(2), 0, 1, 1.0)
    with pytest.raises(ValueError, match="count"):
        two_loop_direction(np.zeros(3), np.zeros((4, 3)), np.ones(2), 0, 3, 1.0)


# ---------------------------------------------------------------------------------------------
# Moré–Thuente against SciPy's port of MINPACK-2 dcsrch
# ---------------------------------------------------------------------------------------------

LINE_FUNCTIONS = {
    # Moré & Thuente (1994), functions (5.1)-(5.3), and a quartic.
    "mt-5.1": (lambda a: -a / (a * a + 2.0), lambda a: (a * a - 2.0) / (a * a + 2.0) ** 2),
    "mt-5.2": (lambda a: (a + 0.004) ** 5 - 2.0 * (a + 0.004) ** 4,
               lambda a: 5.0 * (a + 0.004) ** 4 - 8.0 * (a + 0.004) ** 3),
    "mt-5.3": (lambda a: -np.sin(20.0 * a) * 0.01 / 20.0 - a + (a - 1.0) ** 2 * 0.5,
               lambda a: -0.01 * np.cos(20.0 * a) - 1.0 + (a - 1.0)),
    "quartic": (lambda a: (a - 3.0) ** 4 - 10.0 * a, lambda a: 4.0 * (a - 3.0) ** 3 - 10.0),
}


@pytest.mark.parametrize("name", sorted(LINE_FUNCTIONS))
@pytest.mark.parametrize("stp0", [1e-3, 1e-1, 1.0, 10.0, 1e3])
@pytest.mark.parametrize("c1, c2", [(1e-4, 0.9), (1e-3, 0.1)])
def test_more_thuente_follows_scipy_dcsrch(name, stp0, c1, c2):
    dcsrch = pytest.importorskip("scipy.optimize._dcsrch")
    phi, dphi = LINE_FUNCTIONS[name]
    trials_scipy = []

    def phi_logged(a):
        trials_scipy.append(a)
        return phi(a)

    reference = dcsrch.DCSRCH(phi_logged, dphi, c1, c2, 0.1, 0.0, 1e10)
    stp_ref, _, _, task_ref = reference(stp0, phi0=phi(0.0), derphi0=dphi(0.0), maxiter=50)

    search = MoreThuente(c1=c1, c2=c2, xtol=0.1, stpmin=0.0, stpmax=1e10)
    trials = []
    stp, task = search.start(phi(0.0), dphi(0.0), stp0)
    while task == "FG" and len(trials) < 50:
        trials.append(stp)
        stp, task = search.iterate(phi(stp), dphi(stp), stp)
    np.testing.assert_allclose(trials, trials_scipy, rtol=1e-12)
    assert task.split(":")[0] == task_ref.decode().split(":")[0][:len(task.split(":")[0])]
    if task == "CONVERGENCE":
        assert stp == pytest.approx(stp_ref, rel=1e-12)
        assert phi(stp) <= phi(0.0) + c1 * stp * dphi(0.0)
        assert abs(dphi(stp)) <= c2 * abs(dphi(0.0))


def test_more_thuente_rejects_ascent_direction_and_bad_constants():
    search = MoreThuente()
    _, task = search.start(0.0, 1.0, 1.0)
    assert task == "ERROR"
    with pytest.raises(RuntimeError):
        search.iterate(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="c1"):
        MoreThuente(c1=0.5, c2=0.4)


# ---------------------------------------------------------------------------------------------
# Result fields, limits, float32
# ---------------------------------------------------------------------------------------------

def rosen_pair(x):
    return rosen(x), rosen_der(x)


def test_result_fields_and_counters():
    calls = []

    def fun(x):
        calls.append(x.copy())
        return rosen_pair(x)

    result = minimize_lbfgs(fun, [-1.2, 1.0])
    assert isinstance(result, OptimizeResult)
    for key in ("x", "fun", "jac", "nit", "nfev", "njev", "status", "success", "message"):
        assert key in result
    assert result.nfev == result.njev == len(calls)
    assert result.status == 0 and result.success
    assert result.message.startswith("CONVERGENCE")
    assert result.x.dtype == np.float64


def test_separate_jac_callable_matches_combined():
    combined = minimize_lbfgs(rosen_pair, [-1.2, 1.0, 0.5])
    separate = minimize_lbfgs(rosen, [-1.2, 1.0, 0.5], jac=rosen_der)
    np.testing.assert_array_equal(combined.x, separate.x)
    assert combined.nit == separate.nit and combined.nfev == separate.nfev


def test_args_are_passed_through():
    def fun(x, a, b):
        return a * float(x @ x) + b, 2.0 * a * x

    result = minimize_lbfgs(fun, [1.0, 2.0], args=(3.0, 4.0))
    assert result.fun == pytest.approx(4.0)


def test_maxiter_and_maxfun_stop_with_status_1():
    result = minimize_lbfgs(rosen_pair, [-1.2, 1.0], maxiter=5)
    assert result.status == 1 and not result.success and result.nit == 5
    assert "ITERATIONS" in result.message
    result = minimize_lbfgs(rosen_pair, [-1.2, 1.0], maxfun=10)
    assert result.status == 1 and not result.success
    assert "EVALUATIONS" in result.message
    # As in L-BFGS-B the limit is checked between iterations, so a line search may overrun a bit.
    assert 10 <= result.nfev <= 10 + 20


def test_float32_stays_float32():
    seen = []

    def fun(x):
        seen.append(x.dtype)
        return rosen(x), rosen_der(x)

    x0 = np.array([-1.2, 1.0, -1.2, 1.0], dtype=np.float32)
    result = minimize_lbfgs(fun, x0, gtol=1e-3)
    assert set(seen) == {np.dtype(np.float32)}
    assert result.x.dtype == np.float32 and result.jac.dtype == np.float32
    reference = minimize(rosen, x0.astype(np.float64), jac=rosen_der, method="L-BFGS-B")
    assert result.fun <= max(reference.fun, 0.0) + 1e-5
    np.testing.assert_allclose(result.x, np.ones(4), atol=2e-2)


def test_other_dtypes_become_float64():
    result = minimize_lbfgs(lambda x: (float(x @ x), 2 * x), np.array([3, 4]))
    assert result.x.dtype == np.float64
    assert result.fun == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("keep", ["array", "view", "nothing"])
def test_x_kept_by_fun_is_never_overwritten(keep):
    """The array x is handed over in is reused only when the user kept no reference to it."""
    kept, snapshots = [], []

    def fun(x):
        if keep == "array":
            kept.append(x)
        elif keep == "view":
            kept.append(x[1:])
        snapshots.append(x.copy())
        return rosen_pair(x)

    minimize_lbfgs(fun, [-1.2, 1.0, 0.7])
    if keep == "array":
        for x, snapshot in zip(kept, snapshots):
            np.testing.assert_array_equal(x, snapshot)
    elif keep == "view":
        for x, snapshot in zip(kept, snapshots):
            np.testing.assert_array_equal(x, snapshot[1:])
    assert len(snapshots) > 10


def test_x_given_to_fun_is_a_copy():
    kept = []

    def fun(x):
        kept.append(x)
        value, grad = rosen_pair(x)
        x[:] = 1e9  # a hostile objective must not corrupt the iteration
        return value, grad

    result = minimize_lbfgs(fun, [-1.2, 1.0])
    clean = minimize_lbfgs(rosen_pair, [-1.2, 1.0])
    np.testing.assert_array_equal(result.x, clean.x)


# ---------------------------------------------------------------------------------------------
# The scipy.optimize.minimize plug-in
# ---------------------------------------------------------------------------------------------

def test_plugin_matches_direct_call():
    direct = minimize_lbfgs(rosen_pair, [-1.2, 1.0, 0.3], m=5, gtol=1e-7)
    via_scipy = minimize(rosen_pair, [-1.2, 1.0, 0.3], jac=True, method=lbfgs,
                         options=dict(m=5, gtol=1e-7))
    np.testing.assert_array_equal(via_scipy.x, direct.x)
    assert via_scipy.nfev == direct.nfev and via_scipy.nit == direct.nit
    via_jac = minimize(rosen, [-1.2, 1.0, 0.3], jac=rosen_der, method=lbfgs,
                       options=dict(maxcor=5, gtol=1e-7))
    np.testing.assert_array_equal(via_jac.x, direct.x)


def test_plugin_tol_sets_gtol_and_ftol():
    loose = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, tol=1e-2)
    tight = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, tol=1e-12)
    reference = minimize_lbfgs(rosen_pair, [-1.2, 1.0], gtol=1e-2, ftol=1e-2)
    assert loose.nit == reference.nit
    assert tight.fun < loose.fun


def test_plugin_ignores_unused_arguments_and_warns_on_unknown_options():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, bounds=None,
                          hess=lambda x: np.eye(2))
    assert result.success
    # deprecated in SciPy's L-BFGS-B: accepted, with a DeprecationWarning as SciPy gives
    with pytest.warns(DeprecationWarning, match="disp"):
        minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs,
                 options=dict(disp=True, iprint=5))
    with pytest.warns(OptimizeWarning, match="frobnicate"):
        minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, options=dict(frobnicate=1))
    # infinite bounds are no bounds
    result = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs,
                      bounds=[(None, None), (-np.inf, np.inf)])
    assert result.success
    with pytest.raises(ValueError, match="constraints"):
        minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs,
                 constraints={"type": "eq", "fun": lambda x: x[0]})


# ---------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------

def test_callback_xk_style_gets_each_iterate():
    iterates = []
    result = minimize_lbfgs(rosen_pair, [-1.2, 1.0], callback=lambda xk: iterates.append(xk))
    assert len(iterates) == result.nit
    np.testing.assert_array_equal(iterates[-1], result.x)
    assert len({id(x) for x in iterates}) == len(iterates)  # copies, not one reused buffer


def test_callback_intermediate_result_style():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)

    result = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, callback=callback)
    assert len(seen) == result.nit
    assert all(isinstance(r, OptimizeResult) for r in seen)
    for r in seen:
        assert r.fun == pytest.approx(rosen(r.x), rel=1e-14)
    assert seen[-1].fun == result.fun


@pytest.mark.parametrize("style", ["xk", "intermediate_result"])
@pytest.mark.parametrize("through_scipy", [False, True])
def test_callback_stop_iteration_stops_cleanly(style, through_scipy):
    calls = []
    if style == "xk":
        def callback(xk):
            calls.append(xk)
            if len(calls) == 3:
                raise StopIteration
    else:
        def callback(intermediate_result):
            calls.append(intermediate_result.x)
            if len(calls) == 3:
                raise StopIteration
    if through_scipy:
        result = minimize(rosen_pair, [-1.2, 1.0], jac=True, method=lbfgs, callback=callback)
    else:
        result = minimize_lbfgs(rosen_pair, [-1.2, 1.0], callback=callback)
    assert result.nit == 3 and len(calls) == 3
    assert result.status == 99 and not result.success
    np.testing.assert_array_equal(result.x, calls[-1])
    assert result.fun == pytest.approx(rosen(result.x), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Bad input and non-finite values
# ---------------------------------------------------------------------------------------------

def test_nan_at_start_is_reported_not_iterated():
    calls = []

    def fun(x):
        calls.append(1)
        return np.nan, np.zeros_like(x)

    result = minimize_lbfgs(fun, [1.0, 2.0])
    assert result.status == 2 and not result.success
    assert "non-finite" in result.message
    assert len(calls) == 1


def test_inf_gradient_at_start_is_reported():
    result = minimize_lbfgs(lambda x: (1.0, np.array([np.inf, 0.0])), [1.0, 2.0])
    assert result.status == 2 and not result.success


def test_nan_region_is_backtracked_out_of():
    """f is NaN where x0 > 1.5 (a domain edge, like log of a negative number); the first
    steepest-descent step lands there and the search must cut back into finite territory."""
    def fun(x):
        if x[0] > 1.5:
            return np.nan, np.full_like(x, np.nan)
        return float((x[0] - 1.4) ** 2 + x[1] ** 2), np.array([2 * (x[0] - 1.4), 2 * x[1]])

    result = minimize_lbfgs(fun, [-3.0, 0.1])
    assert np.all(np.isfinite(result.x)) and np.isfinite(result.fun)
    assert result.fun <= 1e-8
    reference = minimize(fun, [-3.0, 0.1], jac=True, method="L-BFGS-B")
    assert result.fun <= reference.fun + 1e-8


def test_objective_that_turns_nan_stops_with_last_finite_point():
    state = {"calls": 0}

    def fun(x):
        state["calls"] += 1
        if state["calls"] > 4:
            return np.nan, np.full_like(x, np.nan)
        return rosen_pair(x)

    result = minimize_lbfgs(fun, [-1.2, 1.0], maxls=5)
    assert not result.success and result.status == 2
    assert np.all(np.isfinite(result.x)) and np.isfinite(result.fun)
    assert result.fun == pytest.approx(rosen(result.x))
    assert "NaN" in result.message
    assert result.nfev <= 4 + 2 * 5


def test_wrong_gradient_fails_line_search_after_one_restart():
    # The "gradient" points uphill, so no step along -g decreases f.
    result = minimize_lbfgs(lambda x: (float(x @ x), -2.0 * x), [1.0, -2.0], maxls=6)
    assert result.status == 2 and not result.success
    assert result.message == "ABNORMAL: "   # SciPy's message for a failed line search
    np.testing.assert_array_equal(result.x, [1.0, -2.0])
    assert result.nfev <= 1 + 6


@pytest.mark.parametrize("lie_after", [3, 5, 8])
def test_line_search_failure_restarts_with_steepest_descent(lie_after):
    """After a few good iterations the gradient starts to lie (points uphill): the quasi-Newton
    search fails, the history is dropped and steepest descent along the reported gradient is tried
    (and fails too) before the run stops. The trial points after the last accepted x show both."""
    D = np.array([1.0, 10.0, 100.0])
    points = []

    def fun(x):
        points.append(x.copy())
        f = 0.5 * float(x @ (D * x)) + 0.25 * float((x ** 4).sum())
        g = D * x + x ** 3
        return (f, -g) if len(points) > lie_after else (f, g)

    maxls = 4
    result = minimize_lbfgs(fun, [1.0, -2.0, 0.5], maxls=maxls)
    assert result.status == 2 and not result.success
    assert result.message == "ABNORMAL: "
    last = max(i for i, x in enumerate(points) if np.array_equal(x, result.x))
    reported_descent = D * result.x + result.x ** 3  # -(the lying gradient)
    along_reported = [
        abs((x - result.x) @ reported_descent) / (np.linalg.norm(x - result.x)
                                                   * np.linalg.norm(reported_descent)) > 1 - 1e-9
        for x in points[last + 1:]]
    assert along_reported == [False] * maxls + [True] * maxls


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(m=0), ValueError, "m"),
    (dict(m=2.5), TypeError, "m"),
    (dict(gtol=-1.0), ValueError, "gtol"),
    (dict(ftol=float("nan")), ValueError, "ftol"),
    (dict(maxls=0), ValueError, "maxls"),
    (dict(maxiter=float("nan")), ValueError, "maxiter"),
    (dict(maxfun="10"), TypeError, "maxfun"),
    (dict(line_search="wolfe-ish"), ValueError, "line_search"),
    (dict(jac="4-point"), ValueError, "jac"),
    (dict(l1=-1.0), ValueError, "l1"),
    (dict(c1=0.95, c2=0.9), ValueError, "c1"),
])
def test_bad_options_name_the_argument(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        minimize_lbfgs(rosen_pair if kwargs.get("jac", True) is True else rosen, [1.0, 2.0],
                       **kwargs)


@pytest.mark.parametrize("x0", [[1.0, np.nan], [np.inf, 0.0], [[1.0, 2.0], [3.0, 4.0]], []])
def test_bad_x0_names_x0(x0):
    with pytest.raises(ValueError, match="x0"):
        minimize_lbfgs(rosen_pair, x0)


@pytest.mark.parametrize("bad_grad", [np.zeros(3), np.zeros((2, 1)), np.zeros(1)])
def test_gradient_shape_mismatch_names_jac(bad_grad):
    with pytest.raises(ValueError, match="jac"):
        minimize_lbfgs(lambda x: (1.0, bad_grad), [1.0, 2.0])


def test_non_scalar_value_is_scipys_error_and_non_pair_a_type_error():
    with pytest.raises(ValueError, match="must return a scalar value"):
        minimize_lbfgs(lambda x: (x, x), [1.0, 2.0])
    with pytest.raises(TypeError, match="pair"):
        minimize_lbfgs(lambda x: 1.0, [1.0, 2.0])


def test_exceptions_from_fun_propagate():
    def fun(x):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        minimize_lbfgs(fun, [1.0])


# ---------------------------------------------------------------------------------------------
# The stepwise LBFGS optimizer against torch.optim.LBFGS
# ---------------------------------------------------------------------------------------------

def _problem_arrays():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((30, 5))
    b = (rng.random(30) > 0.5).astype(np.float64)
    return A, b


def _logistic_loss_numpy(w, c, A, b):
    z = A @ w + c
    loss = np.mean(np.logaddexp(0.0, z) - b * z) + 0.05 * (w @ w) + 0.25 * ((w[0] - 1.0) ** 4)
    p = 1.0 / (1.0 + np.exp(-z))
    grad_w = A.T @ (p - b) / len(b) + 0.1 * w
    grad_w[0] += (w[0] - 1.0) ** 3
    grad_c = np.array([np.mean(p - b)])
    return loss, [grad_w, grad_c]


@pytest.mark.torch
@pytest.mark.parametrize("history_size, lr, max_iter", [(100, 1.0, 20), (3, 0.5, 7)])
def test_stepwise_lbfgs_matches_torch_trajectory(history_size, lr, max_iter):
    torch = pytest.importorskip("torch")
    A, b = _problem_arrays()
    w0, c0 = np.linspace(-1.0, 1.0, 5), np.array([0.3])

    w, c = w0.copy(), c0.copy()
    ours = LBFGS([w, c], lr=lr, max_iter=max_iter, history_size=history_size)

    def closure():
        return _logistic_loss_numpy(w, c, A, b)

    tw = torch.tensor(w0, requires_grad=True)
    tc = torch.tensor(c0, requires_grad=True)
    At, bt = torch.tensor(A), torch.tensor(b)
    theirs = torch.optim.LBFGS([tw, tc], lr=lr, max_iter=max_iter, history_size=history_size)

    def torch_closure():
        theirs.zero_grad()
        z = At @ tw + tc
        loss = (torch.nn.functional.softplus(z) - bt * z).mean() + 0.05 * (tw @ tw) \
            + 0.25 * (tw[0] - 1.0) ** 4
        loss.backward()
        return loss

    for _ in range(4):
        loss_ours = ours.step(closure)
        loss_theirs = theirs.step(torch_closure).item()
        assert loss_ours == pytest.approx(loss_theirs, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(c, tc.detach().numpy(), rtol=1e-8, atol=1e-10)
    assert ours.state["func_evals"] == theirs.state[theirs._params[0]]["func_evals"]
    assert ours.state["n_iter"] == theirs.state[theirs._params[0]]["n_iter"]


@pytest.mark.torch
def test_stepwise_strong_wolfe_converges_like_torch_and_scipy():
    torch = pytest.importorskip("torch")
    A, b = _problem_arrays()
    w, c = np.zeros(5), np.zeros(1)
    ours = LBFGS([w, c], max_iter=100, line_search_fn="strong_wolfe", history_size=10)
    for _ in range(5):
        ours.step(lambda: _logistic_loss_numpy(w, c, A, b))

    def flat_fun(z):
        loss, (gw, gc) = _logistic_loss_numpy(z[:5], z[5:], A, b)
        return loss, np.concatenate([gw, gc])

    reference = minimize(flat_fun, np.zeros(6), jac=True, method="L-BFGS-B",
                         options=dict(gtol=1e-10, ftol=1e-15))
    loss, _ = _logistic_loss_numpy(w, c, A, b)
    assert loss == pytest.approx(reference.fun, rel=1e-9)

    tw = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    tc = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    At, bt = torch.tensor(A), torch.tensor(b)
    theirs = torch.optim.LBFGS([tw, tc], max_iter=100, line_search_fn="strong_wolfe",
                               history_size=10)

    def torch_closure():
        theirs.zero_grad()
        z = At @ tw + tc
        out = (torch.nn.functional.softplus(z) - bt * z).mean() + 0.05 * (tw @ tw) \
            + 0.25 * (tw[0] - 1.0) ** 4
        out.backward()
        return out

    for _ in range(5):
        theirs.step(torch_closure)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_stepwise_strong_wolfe_on_rosenbrock_reaches_the_known_optimum():
    x = np.array([-1.2, 1.0])
    opt = LBFGS([x], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                tolerance_change=1e-14, history_size=10)
    for _ in range(3):
        opt.step(lambda: (rosen(x), [rosen_der(x)]))
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-7)


def test_stepwise_updates_params_in_place_and_checks_grads():
    x = np.array([3.0, -4.0])
    y = np.array([[1.0]])
    opt = LBFGS([x, y], line_search_fn="strong_wolfe")
    ids = (id(x), id(y))
    opt.step(lambda: (float(x @ x + y[0, 0] ** 2), [2 * x, 2 * y]))
    assert (id(x), id(y)) == ids
    assert np.abs(x).max() < 1e-6 and abs(y[0, 0]) < 1e-6
    with pytest.raises(ValueError, match="grads\\[1\\]"):
        opt.step(lambda: (0.0, [2 * x, np.zeros(3)]))
    with pytest.raises(ValueError, match="gradients"):
        opt.step(lambda: (0.0, [2 * x]))
    with pytest.raises(TypeError, match="params"):
        LBFGS([[1.0, 2.0]])
    with pytest.raises(ValueError, match="line_search_fn"):
        LBFGS([x], line_search_fn="backtracking")
    with pytest.raises(ValueError, match="history_size"):
        LBFGS([x], history_size=0)


# ---------------------------------------------------------------------------------------------
# The benchmark entry point used by ``python -m fastopt bench`` (no timing assertions)
# ---------------------------------------------------------------------------------------------

def test_compare_with_scipy_rows():
    from fastopt.benchmarks.lbfgs_vs_scipy import chained_rosenbrock, compare_with_scipy, format_rows
    x = np.random.default_rng(0).standard_normal(7)
    f, g = chained_rosenbrock(x)
    assert f == pytest.approx(rosen(x), rel=1e-14)
    np.testing.assert_allclose(g, rosen_der(x), rtol=1e-13)
    rows = compare_with_scipy(sizes=[50], repeats=1, maxiter=20)
    assert len(rows) == 1
    row = rows[0]
    assert row["n"] == 50 and row["scipy_nit"] == row["fastopt_nit"] == 20
    assert row["ratio"] == pytest.approx(row["fastopt_us_per_iter"] / row["scipy_us_per_iter"])
    assert row["floor_us_per_iter"] is None and row["floor_ratio"] is None   # n < 1e4
    assert "| 50 |" in format_rows(rows)
    rows = compare_with_scipy(sizes=[20_000], repeats=1, maxiter=3)
    row = rows[0]
    assert row["floor_us_per_iter"] > 0
    assert row["floor_ratio"] == pytest.approx(row["floor_us_per_iter"] / row["scipy_us_per_iter"])
