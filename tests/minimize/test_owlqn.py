"""OWL-QN (``minimize_lbfgs(..., l1=...)``): L1-regularized objectives, checked against
scikit-learn's L1 logistic regression (SAGA) and against the optimality conditions."""
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fastopt import minimize_lbfgs


def breast_cancer_logistic(C):
    """``C * sum_i log(1 + exp(-t_i (a_i'w + b)))`` (t_i = +-1) on the standardized data, and
    its gradient in ``(w, b)``; with ``||w||_1`` added this is scikit-learn's objective."""
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    sign = np.where(y == 1, -1.0, 1.0)

    def loss(wb):
        z = sign * (X @ wb[:-1] + wb[-1])
        sigma = 0.5 * (1.0 + np.tanh(0.5 * z))
        dz = C * sign * sigma
        return C * np.logaddexp(0.0, z).sum(), np.concatenate([X.T @ dz, [dz.sum()]])
    return X, y, loss


def sklearn_l1_logistic(X, y, C):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # 'penalty' is deprecated in favour of l1_ratio
        try:
            model = LogisticRegression(l1_ratio=1.0, C=C, solver="saga", tol=1e-10,
                                       max_iter=100_000)
            model.fit(X, y)
        except (TypeError, ValueError):  # scikit-learn < 1.8
            model = LogisticRegression(penalty="l1", C=C, solver="saga", tol=1e-10,
                                       max_iter=100_000).fit(X, y)
    return np.concatenate([model.coef_.ravel(), model.intercept_])


@pytest.mark.parametrize("C", [0.05, 0.5])
def test_owlqn_matches_sklearn_l1_logistic_regression(C):
    X, y, loss = breast_cancer_logistic(C)
    p = X.shape[1]
    weights = np.ones(p + 1)
    weights[-1] = 0.0    # the intercept is not penalized, as in scikit-learn

    def objective(wb):
        return loss(wb)[0] + np.abs(wb[:-1]).sum()

    result = minimize_lbfgs(loss, np.zeros(p + 1), l1=weights, gtol=1e-9, ftol=1e-15,
                            maxiter=10_000)
    assert result.success, result.message
    assert result.fun == pytest.approx(objective(result.x), rel=1e-12)
    reference = sklearn_l1_logistic(X, y, C)
    assert objective(result.x) <= objective(reference) * (1.0 + 1e-6)
    assert objective(result.x) == pytest.approx(objective(reference), rel=1e-6)
    # the same coefficients are exactly zero (sparsity is the point of L1)
    np.testing.assert_array_equal(result.x[:-1] == 0.0, np.abs(reference[:-1]) < 1e-6)
    np.testing.assert_allclose(result.x, reference, atol=2e-3)


def test_owlqn_solves_the_lasso_by_its_optimality_conditions():
    """For f = ||A x - b||^2 / 2 the minimizer of f + alpha ||x||_1 satisfies
    |A'(Ax - b)|_i <= alpha where x_i = 0 and A'(Ax - b)_i = -alpha sign(x_i) elsewhere."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((60, 25))
    b = A @ np.where(rng.random(25) < 0.3, rng.standard_normal(25), 0.0) \
        + 0.1 * rng.standard_normal(60)
    alpha = 3.0

    def fun(x):
        r = A @ x - b
        return 0.5 * float(r @ r), A.T @ r

    result = minimize_lbfgs(fun, np.zeros(25), l1=alpha, gtol=1e-10, ftol=0.0, maxiter=5000)
    assert result.status == 0, result.message
    x = result.x
    g = A.T @ (A @ x - b)
    zero = x == 0.0
    assert zero.sum() >= 5
    assert np.all(np.abs(g[zero]) <= alpha + 1e-6)
    np.testing.assert_allclose(g[~zero], -alpha * np.sign(x[~zero]), atol=1e-6)
    # the pseudo-gradient, 0 at the minimizer; f stopped decreasing in round-off before
    assert np.abs(result.jac).max() <= 1e-6


def test_l1_argument_checks():
    fun = lambda x: (float(x @ x), 2 * x)   # noqa: E731
    with pytest.raises(ValueError, match="l1"):
        minimize_lbfgs(fun, [1.0, 2.0], l1=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="l1"):
        minimize_lbfgs(fun, [1.0, 2.0], l1=1.0, bounds=[(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="l1"):
        minimize_lbfgs(lambda x: float(x @ x), [1.0, 2.0], jac=None, l1=1.0)
    # zero weights are plain L-BFGS
    plain = minimize_lbfgs(fun, [1.0, 2.0])
    zero = minimize_lbfgs(fun, [1.0, 2.0], l1=[0.0, 0.0])
    np.testing.assert_array_equal(plain.x, zero.x)
