"""SciPy's private names: read in fastopt/minimize/_scipy_compat.py only, each with a fallback that works.

(a) No other module of fastopt names a private attribute of SciPy (a source scan).
(b) With each private name gone (as a SciPy release may do), the minimizers still give SciPy's
    answers through the fallback.
"""
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der

import fastopt
from fastopt.minimize import _common, _scipy_compat

PACKAGE = Path(fastopt.__file__).resolve().parent
COMPAT = PACKAGE / "minimize" / "_scipy_compat.py"
# a dotted SciPy path with a private component: scipy.optimize._optimize, scipy._lib, ...
PRIVATE = re.compile(r"\bscipy(?:\.[A-Za-z]\w*)*\._\w+")


def _sources():
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxi", ".pxd") and path != COMPAT:
            yield path


def test_the_scan_sees_private_scipy_names():
    assert PRIVATE.search('private("scipy._lib.deprecation", "_NoValue")'.replace('", "', "."))
    assert PRIVATE.search("from scipy.optimize._optimize import _prepare_scalar_function")
    assert not PRIVATE.search("from scipy.linalg.cython_blas cimport sgemm")


def test_only_the_compat_module_names_private_scipy_attributes():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
                 for path in _sources()
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if PRIVATE.search(line)]
    assert not offenders, ("private SciPy names outside fastopt/minimize/_scipy_compat.py (read them "
                           "there, with a fallback):\n" + "\n".join(offenders))


@pytest.fixture
def without(monkeypatch):
    """Make ``_scipy_compat.private`` answer None for the given ``(module, name)`` pairs."""
    real = _scipy_compat.private

    def remove(*missing):
        def private(module, name):
            return None if (module, name) in missing else real(module, name)
        monkeypatch.setattr(_scipy_compat, "private", private)
    return remove


def test_each_private_name_is_found_on_this_scipy():
    assert _scipy_compat.no_value_marker() is not None
    assert _scipy_compat.memoize_jac_class() is not None
    assert _scipy_compat.private("scipy.optimize._optimize", "_prepare_scalar_function") is not None


def test_without_no_value_only_none_is_not_given(without):
    marker = _scipy_compat.no_value_marker()
    assert _common.not_given(marker)
    without(("scipy._lib.deprecation", "_NoValue"))
    assert _common.not_given(None) and not _common.not_given(marker)


def test_without_memoize_jac_minimize_with_jac_true_still_agrees(without):
    def fun(x):
        return rosen(x), rosen_der(x)
    x0 = np.array([-1.2, 1.0, 0.5])
    expected = minimize(fun, x0, jac=True, method=fastopt.lbfgs)
    without(("scipy.optimize._optimize", "MemoizeJac"))
    got = minimize(fun, x0, jac=True, method=fastopt.lbfgs)
    np.testing.assert_allclose(got.x, expected.x, rtol=1e-10)
    assert got.nit == expected.nit


@pytest.mark.parametrize("jac", [None, "2-point", "3-point", "cs"])
def test_without_scalar_function_finite_differences_still_reach_scipys_optimum(without, jac):
    x0 = np.array([-1.2, 1.0, 0.7])
    bounds = [(-2.0, 0.9), (-2.0, 2.0), (0.0, 2.0)]
    reference = minimize(rosen, x0, method="L-BFGS-B", bounds=bounds)
    without(("scipy.optimize._optimize", "_prepare_scalar_function"))
    got = fastopt.minimize_lbfgs(rosen, x0, jac=jac, bounds=bounds)
    assert got.success
    np.testing.assert_allclose(got.x, reference.x, atol=1e-4)
    assert got.nfev > got.nit   # evaluations of the differences are counted
