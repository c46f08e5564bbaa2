"""pytest plugin: run SciPy's own tests that use L-BFGS-B with the method redirected to fastopt.

Loaded with ``-p scipy_lbfgsb_redirect`` by ``test_scipy_suite.py`` on the test files shipped in
the installed SciPy wheel (``scipy/optimize/tests``); nothing of SciPy's is copied. It

* replaces SciPy's ``_minimize_lbfgsb`` -- what ``minimize(method='L-BFGS-B')``,
  ``fmin_l_bfgs_b`` and everything built on them (basinhopping, shgo, dual_annealing,
  differential_evolution's polishing) call -- by a call to ``fastopt.lbfgs``;
* leaves the check that no upper bound is below its lower bound, which ``minimize`` makes before
  it calls any method, to fastopt for L-BFGS-B, so SciPy's tests of that error test fastopt's;
* keeps only the tests that use L-BFGS-B (the ``L-BFGS-B`` case of tests parametrized over
  methods, and tests whose code names it), minus those in ``EXCLUDED``;
* writes the number of redirected calls to the file named by ``FASTOPT_REDIRECT_REPORT``, so
  the caller can check that fastopt, not SciPy, ran.
"""
import inspect
import os

import numpy as np

# Tests that use SciPy's compiled L-BFGS-B internals directly, which no redirection reaches.
EXCLUDED = {
    "test_lbfgsb_setulb.py::test_setulb_floatround":
        "calls scipy.optimize._lbfgsb.setulb (SciPy's C routine) directly",
    "test_lbfgsb_setulb.py::test_gh_issue18730":
        "calls scipy.optimize._lbfgsb.setulb (SciPy's C routine) directly",
}

OTHER_METHODS = {"nelder-mead", "powell", "cg", "bfgs", "newton-cg", "tnc", "cobyla", "cobyqa",
                 "slsqp", "trust-constr", "dogleg", "trust-ncg", "trust-exact", "trust-krylov",
                 "fmin", "fmin_powell", "fmin_cg", "fmin_bfgs", "fmin_ncg", "fmin_tnc",
                 "fmin_cobyla", "fmin_slsqp"}
MARKERS = ("l-bfgs-b", "fmin_l_bfgs_b", "lbfgsb", "lbfgs")

calls = {"count": 0}


def _redirected(fun, x0, args=(), jac=None, bounds=None, **options):
    import fastopt
    calls["count"] += 1
    return fastopt.lbfgs(fun, x0, args=args, jac=jac, bounds=bounds, **options)


def _validate_bounds_shape_only(scipy_validate_bounds):
    """SciPy's ``_validate_bounds`` without its ``lb <= ub`` check for L-BFGS-B (fastopt's to make)."""
    def validate(bounds, x0, meth):
        if meth != "l-bfgs-b":
            return scipy_validate_bounds(bounds, x0, meth)
        try:   # the shape check, as SciPy makes it
            bounds.lb = np.broadcast_to(bounds.lb, x0.shape)
            bounds.ub = np.broadcast_to(bounds.ub, x0.shape)
        except Exception as exc:
            raise ValueError("The number of bounds is not compatible with the length of "
                             "`x0`.") from exc
        return bounds
    return validate


def pytest_configure(config):
    import scipy.optimize._lbfgsb_py as lbfgsb_py
    import scipy.optimize._minimize as minimize_module
    lbfgsb_py._minimize_lbfgsb = _redirected
    minimize_module._minimize_lbfgsb = _redirected
    minimize_module._validate_bounds = _validate_bounds_shape_only(
        minimize_module._validate_bounds)


def _params(item):
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return []
    return [v.lower() for v in callspec.params.values() if isinstance(v, str)]


def _uses_lbfgsb(item):
    params = _params(item)
    if any(p in ("l-bfgs-b", "fmin_l_bfgs_b") for p in params):
        return True
    if any(p in OTHER_METHODS for p in params):
        return False
    try:
        source = inspect.getsource(item.function).lower()
    except (OSError, TypeError):
        return False
    return any(marker in source for marker in MARKERS)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = f"{item.path.name}::{item.nodeid.split('::', 1)[-1]}"
        excluded = any(name.startswith(key) for key in EXCLUDED)
        (keep if _uses_lbfgsb(item) and not excluded else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FASTOPT_REDIRECT_REPORT")
    if path:
        with open(path, "w") as f:
            f.write(str(calls["count"]))
