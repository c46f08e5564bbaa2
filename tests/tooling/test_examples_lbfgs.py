"""The L-BFGS logistic-regression example runs and both solvers agree on the optimum."""
import importlib.util
import os

import pytest

pytest.importorskip("sklearn")

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples",
                       "lbfgs_logistic_regression.py")


def load_example():
    spec = importlib.util.spec_from_file_location("lbfgs_logistic_regression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_regression_example_losses_agree(capsys):
    results = load_example().main()
    ours, scipy = results["fastopt L-BFGS"], results["SciPy L-BFGS-B"]
    assert ours["success"] and scipy["success"]
    # same strictly convex problem, both stopped at gtol=1e-6: same minimum
    assert ours["loss"] == pytest.approx(scipy["loss"], rel=1e-8, abs=1e-10)
    assert ours["accuracy"] == pytest.approx(scipy["accuracy"], abs=2e-3)
    assert ours["accuracy"] > 0.95
    printed = capsys.readouterr().out
    assert "fastopt L-BFGS" in printed and "SciPy L-BFGS-B" in printed


def test_example_gradient_matches_finite_differences():
    import numpy as np
    from scipy.optimize import check_grad
    module = load_example()
    X, y = module.load_data()
    loss_and_grad = module.make_loss(X, y, 1e-3)
    rng = np.random.default_rng(0)
    params = 0.1 * rng.standard_normal(X.shape[1] + 1)
    error = check_grad(lambda p: loss_and_grad(p)[0], lambda p: loss_and_grad(p)[1], params)
    assert error <= 1e-6
