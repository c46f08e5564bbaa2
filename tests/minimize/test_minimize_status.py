"""The minimizers agree on which stopping test wins when several hold at once.

After an accepted step SciPy's L-BFGS-B driver checks the iteration limit first (it sets
``STOP`` before its iteration routine gets to test convergence), so a run whose last permitted
iteration also converges reports status 1, "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT". The
L-BFGS here reports what SciPy does; Newton and dense BFGS follow the same order.
"""
import numpy as np
import pytest
import scipy.optimize

from fastopt.minimize._compiled import lbfgs as _lbfgs
from fastopt.minimize import _common as C
from fastopt.minimize import minimize_bfgs, minimize_lbfgs, newton

X0 = np.array([3.0, -4.0, 0.5])


def quadratic(x):
    return float(x @ x), 2.0 * x


def run_newton(maxiter):
    return newton(quadratic, X0, jac=True, hess=lambda x: 2.0 * np.eye(x.size), maxiter=maxiter)


def run_bfgs(maxiter):
    return minimize_bfgs(quadratic, X0, maxiter=maxiter)


def run_lbfgs(maxiter):
    return minimize_lbfgs(quadratic, X0, maxiter=maxiter)


def run_scipy(maxiter):
    return scipy.optimize.minimize(quadratic, X0, jac=True, method="L-BFGS-B",
                                   options={"maxiter": maxiter})


@pytest.mark.parametrize("run", [run_scipy, run_lbfgs, run_bfgs, run_newton],
                         ids=["scipy-L-BFGS-B", "minimize_lbfgs", "minimize_bfgs", "newton"])
def test_iteration_limit_reached_on_the_converging_iteration_reports_the_limit(run):
    free = run(1000)
    assert free.status == 0 and free.success, free.message
    assert free.nit >= 1
    # The same run, allowed exactly the iterations it needs to converge.
    limited = run(free.nit)
    assert limited.nit == free.nit
    np.testing.assert_array_equal(limited.x, free.x)
    assert np.abs(limited.jac).max() <= 1e-5       # converged on that iteration too
    assert (limited.status, limited.success, limited.message) == (
        1, False, "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT")


def test_all_minimizers_report_the_same_status_and_message_when_limit_and_convergence_coincide():
    reports = {}
    for run in (run_scipy, run_lbfgs, run_bfgs, run_newton):
        result = run(run(1000).nit)
        reports[run.__name__] = (result.status, result.message)
    assert len(set(reports.values())) == 1, reports


def test_the_compiled_iteration_speaks_the_message_table():
    # The compiled L-BFGS cannot import the table; its texts must be the table's.
    for name in ("MSG_PGTOL", "MSG_FTOL", "MSG_MAXITER", "MSG_MAXFUN", "MSG_CALLBACK",
                 "MSG_NONFINITE", "MSG_NONFINITE_X0"):
        assert getattr(_lbfgs, name) in C.MESSAGES.values(), name
    assert C.MESSAGES["maxiter"] == _lbfgs.MSG_MAXITER
    assert C.MESSAGES["maxfun"] == _lbfgs.MSG_MAXFUN


def test_stopping_order_limits_before_convergence_iterations_before_evaluations():
    # (nit, maxiter, nfev, maxfun, gradient small, f reduction small) -> what is reported
    cases = [
        ((5, 5, 11, 10, True, True), (1, C.MESSAGES["maxiter"])),
        ((4, 5, 11, 10, True, True), (1, C.MESSAGES["maxfun"])),
        ((4, 5, 10, 10, True, True), (0, C.MESSAGES["pgtol"])),     # maxfun is exceeded, not met
        ((4, 5, 10, 10, False, True), (0, C.MESSAGES["factr"])),
        ((4, 5, 10, 10, False, False), None),
    ]
    for arguments, expected in cases:
        assert C.stopping_status(*arguments) == expected, arguments
    assert C.stopping_status(4, 5, 10, 10, True, True, converged=("gtol", "ftol")) == (
        0, C.MESSAGES["gtol"])


def test_a_wrapped_callback_stop_reports_what_scipy_reports():
    # minimize(method='L-BFGS-B') semantics: a limit reached on that iteration wins over the halt.
    assert C.callback_stop_status(True, 5, 5, 3, 10) == (1, C.MESSAGES["maxiter"])
    assert C.callback_stop_status(True, 2, 5, 11, 10) == (1, C.MESSAGES["maxfun"])
    assert C.callback_stop_status(True, 2, 5, 3, 10) == (2, C.MESSAGES["callback_halt"])
    assert C.callback_stop_status(False, 5, 5, 11, 10) == (99, C.MESSAGES["callback_stop"])
