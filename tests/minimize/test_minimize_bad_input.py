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


# ---------------------------------------------------------------------------------------------
# Objectives returning text (or nothing numeric)
# ---------------------------------------------------------------------------------------------

TEXT_VALUES = {
    "str": ("1.0", "'1.0'"),
    "bytes": (b"1.0", "b'1.0'"),
    "numpy_str": (np.str_("1.0"), "np.str_('1.0')"),
    "numpy_text_array": (np.array(["1.0"]), "array(['1.0']"),
}


def _with_value(value):
    """``(value, gradient)`` of the quadratic: its value replaced by ``value``."""
    return lambda x: (value, quadratic(x)[1])


def _torch_lbfgs(value):
    torch = pytest.importorskip("torch")
    import fastopt.torch
    param = torch.zeros(N, requires_grad=True)
    optimizer = fastopt.torch.LBFGS([param])

    def closure():
        optimizer.zero_grad()
        ((param - 0.5) ** 2).sum().backward()
        return value
    optimizer.step(closure)


def _stepwise(value, bounds=None):
    param = np.zeros(N)
    fastopt.LBFGS([param], bounds=bounds).step(lambda: (value, [2.0 * (param - 0.5)]))


MINIMIZERS = {
    "lbfgs_jac_true": lambda v: fastopt.minimize_lbfgs(_with_value(v), np.zeros(N)),
    "lbfgs_float32": lambda v: fastopt.minimize_lbfgs(_with_value(v), np.zeros(N, np.float32)),
    "lbfgs_jac_callable": lambda v: fastopt.minimize_lbfgs(
        lambda x: v, np.zeros(N), jac=lambda x: quadratic(x)[1]),
    "lbfgs_bounded": lambda v: fastopt.minimize_lbfgs(_with_value(v), np.zeros(N),
                                                      bounds=[(-1, 1)] * N),
    "lbfgs_all_fixed": lambda v: fastopt.minimize_lbfgs(_with_value(v), np.zeros(N),
                                                        bounds=[(1, 1)] * N),
    "owlqn_l1": lambda v: fastopt.minimize_lbfgs(_with_value(v), np.zeros(N), l1=0.1),
    "scipy_minimize_method_lbfgs": lambda v: scipy.optimize.minimize(
        _with_value(v), np.zeros(N), jac=True, method=fastopt.lbfgs),
    "minimize_bfgs": lambda v: fastopt.minimize_bfgs(_with_value(v), np.zeros(N)),
    "newton": lambda v: fastopt.newton(_with_value(v), np.zeros(N), True,
                                       lambda x: 2.0 * np.eye(N)),
    "stepwise_LBFGS": _stepwise,
    "stepwise_LBFGS_bounded": lambda v: _stepwise(v, bounds=[(-1, 1)] * N),
    "torch_LBFGS": _torch_lbfgs,
}


@pytest.mark.parametrize("minimizer", MINIMIZERS)
@pytest.mark.parametrize("kind", TEXT_VALUES)
def test_text_value_is_a_type_error_naming_it(minimizer, kind):
    value, shown = TEXT_VALUES[kind]
    with pytest.raises(TypeError, match="must be a real number, not text|must return a real "
                                        "number, not text") as raised:
        MINIMIZERS[minimizer](value)
    assert shown in str(raised.value)


def test_scipy_raises_type_error_for_text_too():
    """The reference: SciPy's L-BFGS-B fails on a text value with TypeError (comparing it)."""
    for fun, jac in [(lambda x: "1.0", None), (_with_value("1.0"), True)]:
        with pytest.raises(TypeError, match="not supported between instances of 'str'"):
            scipy.optimize.minimize(fun, np.zeros(N), jac=jac, method="L-BFGS-B")
    with pytest.raises(TypeError, match="fun returned str '1.0'"):
        fastopt.minimize_lbfgs(_with_value("1.0"), np.zeros(N))


@pytest.mark.parametrize("minimizer", MINIMIZERS)
@pytest.mark.parametrize("value, shown", [(None, "NoneType None"), (1 + 2j, "complex (1+2j)")])
def test_non_numbers_are_type_errors_naming_them(minimizer, value, shown):
    with pytest.raises(TypeError, match="must (return|be) a real number") as raised:
        MINIMIZERS[minimizer](value)
    assert shown in str(raised.value)


def _minimum(minimizer, objective):
    if minimizer == "stepwise_LBFGS":
        param = np.zeros(N)

        def closure():
            loss, grad = objective(param)
            return loss, [grad]
        fastopt.LBFGS([param], line_search_fn="strong_wolfe").step(closure)
        return param
    if minimizer == "minimize_bfgs":
        return fastopt.minimize_bfgs(objective, np.zeros(N)).x
    return fastopt.newton(objective, np.zeros(N), True, lambda x: 2.0 * np.eye(N)).x


@pytest.mark.parametrize("minimizer", ["minimize_bfgs", "newton", "stepwise_LBFGS"])
def test_a_size_one_array_value_is_taken_as_minimize_lbfgs_takes_it(minimizer):
    """A value in a size-1 array is that value (as for minimize_lbfgs and SciPy): the run is the
    one of the plain number."""
    in_array = _minimum(minimizer, lambda x: (np.array([quadratic(x)[0]]), quadratic(x)[1]))
    np.testing.assert_array_equal(in_array, _minimum(minimizer, quadratic))
    np.testing.assert_allclose(in_array, 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The NumPy LBFGS's closure returns the gradients too
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("returned", [1.0, np.float64(1.0), np.array(1.0), np.array([1.0]),
                                      "ab"], ids=["float", "np_float64", "0d_array",
                                                  "size1_array", "two_char_str"])
def test_numpy_lbfgs_closure_returning_only_a_loss_gets_a_hint(returned):
    param = np.zeros(N)
    with pytest.raises(TypeError, match=r"closure must return \(loss, grads\)") as raised:
        fastopt.LBFGS([param]).step(lambda: returned)
    assert "without autograd" in str(raised.value)
    assert type(returned).__name__ in str(raised.value)
    assert not param.any()                       # nothing was written
