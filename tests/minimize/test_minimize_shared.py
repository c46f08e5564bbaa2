"""What the minimizers share: one stopping order, one message table, and the compiled
L-BFGS iteration's typed contracts (named options in, one result type out of all three drivers).
"""
import pathlib
import re

import numpy as np
import pytest
import scipy.optimize

import fastopt.minimize
from fastopt.minimize import _common as C
from fastopt.minimize import minimize_bfgs, minimize_lbfgs, newton
from fastopt.minimize._compiled import lbfgs as _lbfgs

# f = sum x^4 has no Newton step that lands on the minimum (each step takes x to 2x/3), so with
# gtol = 0 every minimizer stops on the relative reduction of f, never on the gradient.
X0 = np.array([1.0, -2.0, 0.5])
FTOL = 1e-8


def quartic(x):
    return float(np.sum(x ** 4)), 4.0 * x ** 3


def quartic_hessian(x):
    return np.diag(12.0 * x ** 2)


def run_newton(maxiter):
    return newton(quartic, X0, jac=True, hess=quartic_hessian, gtol=0.0, ftol=FTOL,
                  maxiter=maxiter, maxfun=10_000)


def run_bfgs(maxiter):
    return minimize_bfgs(quartic, X0, gtol=0.0, ftol=FTOL, maxiter=maxiter)


def run_lbfgs(maxiter):
    return minimize_lbfgs(quartic, X0, gtol=0.0, ftol=FTOL, maxiter=maxiter)


def run_scipy(maxiter):
    return scipy.optimize.minimize(quartic, X0, jac=True, method="L-BFGS-B",
                                   options={"gtol": 0.0, "ftol": FTOL, "maxiter": maxiter})


RUNS = [run_scipy, run_lbfgs, run_bfgs, run_newton]
RELATIVE_REDUCTION = {C.MESSAGES["factr"], C.MESSAGES["ftol"]}


@pytest.mark.parametrize("run", RUNS, ids=[run.__name__ for run in RUNS])
def test_f_reduction_on_the_last_permitted_iteration_reports_the_iteration_limit(run):
    free = run(1000)
    assert free.status == 0 and free.message in RELATIVE_REDUCTION, free.message
    # The same run, allowed exactly the iterations after which its f-reduction test holds.
    limited = run(free.nit)
    assert limited.nit == free.nit
    np.testing.assert_array_equal(limited.x, free.x)
    assert (limited.status, limited.success, limited.message) == (
        C.STATUS_LIMIT, False, C.MESSAGES["maxiter"])


def test_every_minimizer_reports_what_scipy_does_when_the_limit_and_f_reduction_coincide():
    reports = {run.__name__: (lambda r: (r.status, r.message))(run(run(1000).nit))
               for run in RUNS}
    assert set(reports.values()) == {(1, C.MESSAGES["maxiter"])}, reports


def _string_literals(path):
    """The texts of the string literals in a Python or Cython source (adjacent ones joined)."""
    text = path.read_text()
    joined = re.sub(r'"\s*\n\s*"', "", text)          # implicit concatenation over lines
    return re.findall(r'"((?:[^"\\\n]|\\.)*)"', joined)


def test_every_message_text_is_written_once():
    package = pathlib.Path(fastopt.minimize.__file__).parent
    texts = set(C.MESSAGES.values())
    python_sources = sorted(package.glob("*.py"))
    compiled_sources = sorted(package.glob("*.pyx")) + sorted(package.glob("*.pxi"))
    assert any(path.name == "_lbfgs.pyx" for path in compiled_sources)
    where = {}
    for path in python_sources + compiled_sources:
        for literal in _string_literals(path):
            if literal in texts or re.match(r"(STOP|CONVERGENCE|ABNORMAL): ?", literal):
                where.setdefault(literal, []).append(path.name)
    # Every stop message of the Python layer comes from the table in _common.py...
    for literal, files in where.items():
        python_files = [name for name in files if name.endswith(".py")]
        assert python_files in ([], ["_common.py"]), (literal, files)
        # ... and the compiled iteration (which cannot import it) spells each text at most once,
        # and only texts of the table.
        compiled_files = [name for name in files if not name.endswith(".py")]
        assert len(compiled_files) <= 1, (literal, files)
        assert literal in texts, (literal, files)


def _quadratic(x):
    return float(x @ x), 2.0 * x


def _options(**changes):
    settings = dict(m=4, gtol=1e-5, ftol=2.2e-9, maxiter=100, maxfun=1000, maxls=20,
                    line_search="more-thuente", c1=1e-3, c2=0.9)
    settings.update(changes)
    return _lbfgs.LbfgsOptions(**settings)


def test_compiled_options_are_given_by_name_and_checked():
    options = _options(line_search="armijo", maxiter=7)
    assert (options.m, options.maxiter, options.line_search, options.c2) == (4, 7, "armijo", 0.9)
    with pytest.raises(TypeError):
        _lbfgs.LbfgsOptions(4, 1e-5, 2.2e-9, 100, 1000, 20, "armijo", 1e-3, 0.9)
    with pytest.raises(TypeError):
        _options(maxcor=4)
    with pytest.raises(ValueError, match="line_search"):
        _options(line_search="wolfe")
    with pytest.raises(ValueError, match="m and maxls"):
        _options(m=0)
    with pytest.raises(TypeError, match="callback"):
        _options(callback=3)


@pytest.mark.parametrize("driver", ["plain", "bounded", "owlqn"])
def test_the_three_compiled_drivers_return_one_result_type(driver):
    x0 = np.array([3.0, -4.0, 0.5])
    options = _options()
    if driver == "plain":
        run = _lbfgs._run(_quadratic, True, (), x0, options)
        expected = minimize_lbfgs(_quadratic, x0, m=4)
    elif driver == "bounded":
        lower, upper = np.full(3, -1.0), np.full(3, 2.0)
        run = _lbfgs._run_bounded(_quadratic, True, (), np.clip(x0, lower, upper), lower, upper,
                                  C.kind_of_bounds(lower, upper), options)
        expected = minimize_lbfgs(_quadratic, x0, m=4, bounds=list(zip(lower, upper)))
    else:
        run = _lbfgs._run_owlqn(_quadratic, True, (), x0, np.full(3, 0.5), options)
        expected = minimize_lbfgs(_quadratic, x0, m=4, l1=0.5)
    assert type(run) is _lbfgs.LbfgsResult
    np.testing.assert_array_equal(run.x, expected.x)
    np.testing.assert_array_equal(run.g, expected.jac)
    assert run.f == expected.fun
    assert (run.nit, run.nfev, run.njev, run.status, run.message) == (
        expected.nit, expected.nfev, expected.njev, expected.status, expected.message)
    # The history ring: 2 rows (s, y) per slot; OWL-QN keeps a spare slot for a candidate pair.
    slots = 5 if driver == "owlqn" else 4
    assert run.pairs.shape == (2 * slots, 3)
    assert 0 <= run.newest < slots and 0 <= run.count <= 4 and run.updates >= run.count
    with pytest.raises(AttributeError):
        run.status = 0          # a result is read-only
