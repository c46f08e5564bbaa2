"""L2-regularised logistic regression on the breast-cancer data, fit with fastopt's L-BFGS and
with SciPy's L-BFGS-B.

The loss, for labels y_i in {-1, +1}, standardized features x_i, weights w and bias b, is

    L(w, b) = (1/N) sum_i log(1 + exp(-y_i (x_i'w + b))) + (lam / 2) ||w||^2

with gradient

    dL/dw = (1/N) sum_i -y_i sigma(-y_i z_i) x_i + lam w,   dL/db = (1/N) sum_i -y_i sigma(-y_i z_i)

where z_i = x_i'w + b and sigma is the logistic function.

    python examples/lbfgs_logistic_regression.py
"""
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.datasets import load_breast_cancer

from fastopt import minimize_lbfgs


def load_data():
    """Standardized features and labels in {-1, +1}."""
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, np.where(y == 1, 1.0, -1.0)


def make_loss(X, y, lam):
    n_samples = X.shape[0]

    def loss_and_grad(params):
        w, b = params[:-1], params[-1]
        margins = y * (X @ w + b)
        loss = np.logaddexp(0.0, -margins).mean() + 0.5 * lam * (w @ w)
        weights = -y * expit(-margins) / n_samples
        grad = np.empty_like(params)
        grad[:-1] = X.T @ weights + lam * w
        grad[-1] = weights.sum()
        return loss, grad

    return loss_and_grad


def main(lam=1e-3, m=10, gtol=1e-6, verbose=True):
    """Fit with both solvers; returns {solver: dict(loss, nit, nfev, seconds, accuracy)}."""
    X, y = load_data()
    loss_and_grad = make_loss(X, y, lam)
    x0 = np.zeros(X.shape[1] + 1)
    results = {}
    for name, solve in [
        ("fastopt L-BFGS", lambda: minimize_lbfgs(loss_and_grad, x0, m=m, gtol=gtol)),
        ("SciPy L-BFGS-B", lambda: minimize(loss_and_grad, x0, jac=True, method="L-BFGS-B",
                                            options=dict(maxcor=m, gtol=gtol))),
    ]:
        start = time.perf_counter()
        result = solve()
        seconds = time.perf_counter() - start
        accuracy = float(np.mean(np.sign(X @ result.x[:-1] + result.x[-1]) == y))
        results[name] = dict(loss=float(result.fun), nit=int(result.nit), nfev=int(result.nfev),
                             seconds=seconds, accuracy=accuracy, success=bool(result.success))
    if verbose:
        print(f"L2-regularised logistic regression, breast cancer data "
              f"({X.shape[0]} samples, {X.shape[1]} features), lambda = {lam}")
        print(f"{'solver':16s} {'loss':>14s} {'iters':>6s} {'evals':>6s} {'time [ms]':>10s} "
              f"{'train acc':>9s}")
        for name, r in results.items():
            print(f"{name:16s} {r['loss']:14.10f} {r['nit']:6d} {r['nfev']:6d} "
                  f"{1e3 * r['seconds']:10.2f} {r['accuracy']:9.4f}")
    return results


if __name__ == "__main__":
    main()
