"""Bad input to the minimizers: boxes no point lies in, and objectives that return text.

* A lower bound of +inf or an upper bound of -inf admits no finite x: ValueError, from every
  entry point that takes bounds (SciPy 1.17 has no error of its own here: with every variable so
  bounded, ``minimize(method='L-BFGS-B')`` reports success at x = inf, otherwise it fails with a
  KeyError from inside L-BFGS-B). Crossed bounds raise ``scipy.optimize.minimize``'s ValueError.
* An objective value ``float()`` would parse (``"1.0"``) is text, not a number: TypeError, as
  SciPy's minimizers raise (from comparing it with a float), with a message naming the value.
"""
import numpy as np
import pytest
import scipy.optimize
from scipy.optimize import Bounds

import fastopt

INF = np.inf
N = 5


def quadratic(x):
    return float(np.sum((x - 0.5) ** 2)), 2.0 * (x - 0.5)


# ---------------------------------------------------------------------------------------------
# Bounds no point satisfies
# ---------------------------------------------------------------------------------------------

INFEASIBLE = {
    "lower_inf_both": ([(INF, INF)] * N, "lower bound is \\+inf"),
    "lower_inf_upper_open": ([(INF, None)] * N, "lower bound is \\+inf"),
    "upper_minus_inf_both": ([(-INF, -INF)] * N, "upper bound is -inf"),
    "upper_minus_inf_lower_open": ([(None, -INF)] * N, "upper bound is -inf"),
    "Bounds_inf": (Bounds(INF, INF), "lower bound is \\+inf"),
    "Bounds_minus_inf": (Bounds(-INF, -INF), "upper bound is -inf"),
    "one_of_five": ([(0, 1)] * 4 + [(INF, INF)], "bounds\\[4\\]: the lower bound is \\+inf"),
    "array_items": ([(np.float64(INF), np.array(INF))] * N, "lower bound is \\+inf"),
}


def _minimize_lbfgs(bounds, jac=True):
    return fastopt.minimize_lbfgs(quadratic if jac is True else (lambda x: quadratic(x)[0]),
                                  np.zeros(N), jac=jac, bounds=bounds)


ENTRY_POINTS = {
    "minimize_lbfgs": _minimize_lbfgs,
    "minimize_lbfgs_finite_differences": lambda bounds: _minimize_lbfgs(bounds, jac=None),
    "scipy_minimize_method_lbfgs": lambda bounds: scipy.optimize.minimize(
        quadratic, np.zeros(N), jac=True, method=fastopt.lbfgs, bounds=bounds),
    "stepwise_LBFGS": lambda bounds: fastopt.LBFGS([np.zeros(N)], bounds=bounds),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", INFEASIBLE)
def test_infinite_bound_on_the_wrong_side_is_a_value_error(entry, case):
    bounds, message = INFEASIBLE[case]
    with pytest.raises(ValueError, match=message):
        ENTRY_POINTS[entry](bounds)


def test_the_error_says_how_to_leave_a_side_open():
    with pytest.raises(ValueError) as lower:
        _minimize_lbfgs([(INF, None)] * N)
    with pytest.raises(ValueError) as upper:
        _minimize_lbfgs([(None, -INF)] * N)
    assert str(lower.value) == ("bounds[0]: the lower bound is +inf, which no finite x satisfies; "
                                "use None or -inf for no lower bound")
    assert str(upper.value) == ("bounds[0]: the upper bound is -inf, which no finite x satisfies; "
                                "use None or +inf for no upper bound")


CROSSED = {
    "pairs": [(0, 1), (2, 1), (0, 1), (0, 1), (0, 1)],
    "Bounds": Bounds([1, 6, 1, 0, 0], [3, 4, 2, 1, 1]),
    "infinite_lower_above_finite_upper": [(INF, 1)] * N,
}


def _scipy_error(bounds):
    """What scipy.optimize.minimize(method='L-BFGS-B') raises for ``bounds``."""
    with pytest.raises(ValueError) as raised:
        scipy.optimize.minimize(quadratic, np.zeros(N), jac=True, method="L-BFGS-B",
                                bounds=bounds)
    return str(raised.value)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CROSSED)
def test_crossed_bounds_raise_what_scipy_minimize_raises(entry, case):
    expected = _scipy_error(CROSSED[case])
    assert expected == "An upper bound is less than the corresponding lower bound."
    with pytest.raises(ValueError) as raised:
        ENTRY_POINTS[entry](CROSSED[case])
    assert str(raised.value) == expected
