"""Overhead of fastopt's L-BFGS-B (bounds) against SciPy's L-BFGS-B.

As in :mod:`fastopt.benchmarks.lbfgs_vs_scipy`, the quantity compared is the time per iteration spent outside
the objective (wall time of a run minus the time inside ``fun``, over the iterations), with both
solvers given the same objective, start, memory, tolerances and iteration cap and BLAS pinned to
one thread. The problem is the chained Rosenbrock function in a box that cuts off its minimizer
(1, ..., 1): every third coordinate is bounded below by 1.05 (active at the solution), every
third is boxed loosely in [-5, 5] (inactive), the rest are free.
"""
import time

import numpy as np
from scipy.optimize import minimize

from ..minimize import minimize_lbfgs
from .lbfgs_vs_scipy import (_one_blas_thread, _TimedObjective, chained_rosenbrock,
                             chained_rosenbrock_start)

DEFAULT_SIZES = (100, 1_000, 10_000, 100_000)


def chained_rosenbrock_box(n):
    """``(lower, upper)`` cutting off the minimizer: x_i >= 1.05 for i = 0, 3, 6, ...,
    -5 <= x_i <= 5 for i = 1, 4, 7, ..., the rest free."""
    lower = np.full(n, -np.inf)
    upper = np.full(n, np.inf)
    lower[0::3] = 1.05
    lower[1::3] = -5.0
    upper[1::3] = 5.0
    return lower, upper


def _run(solver, x0, bounds, m, gtol, ftol, maxiter, timer):
    objective = _TimedObjective(chained_rosenbrock, timer)
    start = timer()
    if solver == "scipy":
        result = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                          options=dict(maxcor=m, gtol=gtol, ftol=ftol, maxiter=maxiter,
                                       maxfun=10 * maxiter))
    else:
        result = minimize_lbfgs(objective, x0, bounds=bounds, m=m, gtol=gtol, ftol=ftol,
                                maxiter=maxiter, maxfun=10 * maxiter)
    total = timer() - start
    return total, objective.inside, result


def compare_bounded_with_scipy(sizes=DEFAULT_SIZES, repeats=5, m=10, gtol=1e-5, ftol=2.2e-9,
                               maxiter=1000, timer=time.perf_counter):
    """Per-iteration overhead (outside ``fun``) of fastopt's and SciPy's L-BFGS-B on the boxed
    chained Rosenbrock problem (:func:`chained_rosenbrock_box`).

    The problem is solved in ~25 iterations, so a run's fixed costs (turning a list of n bound
    pairs into arrays: milliseconds at n = 1e5 for both solvers; setting up; the result) would
    weigh as much as the iterations. Each solver therefore also runs with ``maxiter=1``, and the
    per-iteration overhead is the difference of the two overheads over the difference of their
    iterations; the fixed part is reported separately. Runs alternate between the solvers,
    ``repeats`` times each, and the fastest of each kind is kept.

    Returns one dict per size: ``n``, ``scipy_us_per_iter``, ``fastopt_us_per_iter``, ``ratio``
    (fastopt / SciPy), ``scipy_setup_us``,
    ``fastopt_setup_us`` (overhead of a one-iteration run), ``active`` (coordinates at a bound in
    fastopt's solution), iterations, evaluations and final f of each solver.
    """
    rows = []
    for n in sizes:
        n = int(n)
        lower, upper = chained_rosenbrock_box(n)
        bounds = list(zip(lower, upper))
        x0 = np.clip(chained_rosenbrock_start(n), lower, upper)
        best = {}
        for _ in range(repeats):
            for solver in ("scipy", "fastopt"):
                for cap in (1, maxiter):
                    with _one_blas_thread():
                        total, inside, result = _run(solver, x0, bounds, m, gtol, ftol, cap,
                                                     timer)
                    key = (solver, cap)
                    if key not in best or total - inside < best[key][0]:
                        best[key] = (total - inside, result)
        row = {"n": n}
        for solver in ("scipy", "fastopt"):
            (one, first), (full, result) = best[solver, 1], best[solver, maxiter]
            row[f"{solver}_us_per_iter"] = 1e6 * (full - one) / max(result.nit - first.nit, 1)
            row[f"{solver}_setup_us"] = 1e6 * one
            row[f"{solver}_nit"] = int(result.nit)
            row[f"{solver}_nfev"] = int(result.nfev)
            row[f"{solver}_fun"] = float(result.fun)
        row["ratio"] = row["fastopt_us_per_iter"] / row["scipy_us_per_iter"]
        x = best["fastopt", maxiter][1].x
        row["active"] = int(np.sum((x == lower) | (x == upper)))
        rows.append(row)
    return rows


def format_bounded_rows(rows):
    """Render :func:`compare_bounded_with_scipy` rows as a Markdown table."""
    lines = ["| n | at a bound | SciPy µs/iter | fastopt µs/iter | ratio | "
             "one-iteration run µs (SciPy / fastopt) | iters (SciPy / fastopt) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        scipy, fast = r["scipy_us_per_iter"], r["fastopt_us_per_iter"]
        # a marginal cost is a difference of two runs' times: below zero it is the machine's noise
        ratio = f"{r['ratio']:.3f}" if scipy > 0 and fast >= 0 else "noise"
        lines.append(f"| {r['n']:,} | {r['active']:,} | {_marginal(scipy)} | "
                     f"{_marginal(fast)} | {ratio} | "
                     f"{r['scipy_setup_us']:,.0f} / {r['fastopt_setup_us']:,.0f} | "
                     f"{r['scipy_nit']} / {r['fastopt_nit']} |")
    return "\n".join(lines)




def _marginal(us):
    """A marginal time per iteration in µs, or ``noise`` when the difference it is came out
    negative (a disturbed run)."""
    return f"{us:.1f}" if us >= 0 else "noise"


def compare_owlqn_with_saga(C=0.5, repeats=3, timer=time.perf_counter):
    """OWL-QN (``minimize_lbfgs(..., l1=...)``) against scikit-learn's L1 logistic regression
    (SAGA) on the breast-cancer data scikit-learn ships (standardized), same objective
    ``||w||_1 + C sum_i log(1 + exp(-t_i (a_i'w + b)))``.

    Returns a dict with the best wall time of each over ``repeats`` runs (``owlqn_s``,
    ``saga_s``), their objective values, the relative gap of OWL-QN's value to SAGA's
    (``rel_gap``, negative when OWL-QN is lower) and the number of zero coefficients of each.
    Needs scikit-learn (a test dependency, not a bench one): raises ImportError without it.
    """
    import warnings

    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    sign = np.where(y == 1, -1.0, 1.0)
    p = X.shape[1]

    def loss(wb):
        z = sign * (X @ wb[:-1] + wb[-1])
        dz = C * sign * 0.5 * (1.0 + np.tanh(0.5 * z))
        return C * np.logaddexp(0.0, z).sum(), np.concatenate([X.T @ dz, [dz.sum()]])

    def objective(wb):
        return loss(wb)[0] + np.abs(wb[:-1]).sum()

    weights = np.ones(p + 1)
    weights[-1] = 0.0
    best = {}
    for _ in range(repeats):
        start = timer()
        ours = minimize_lbfgs(loss, np.zeros(p + 1), l1=weights, gtol=1e-9, ftol=1e-15,
                              maxiter=10_000).x
        best["owlqn"] = min(best.get("owlqn", np.inf), timer() - start)
        start = timer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = LogisticRegression(l1_ratio=1.0, C=C, solver="saga", tol=1e-10,
                                           max_iter=100_000).fit(X, y)
            except (TypeError, ValueError):  # scikit-learn < 1.8
                model = LogisticRegression(penalty="l1", C=C, solver="saga", tol=1e-10,
                                           max_iter=100_000).fit(X, y)
        best["saga"] = min(best.get("saga", np.inf), timer() - start)
    theirs = np.concatenate([model.coef_.ravel(), model.intercept_])
    f_ours, f_theirs = objective(ours), objective(theirs)
    return {"owlqn_s": best["owlqn"], "saga_s": best["saga"], "owlqn_f": float(f_ours),
            "saga_f": float(f_theirs), "rel_gap": float((f_ours - f_theirs) / f_theirs),
            "owlqn_zeros": int(np.sum(ours[:-1] == 0.0)),
            "saga_zeros": int(np.sum(theirs[:-1] == 0.0))}


def main(sizes=DEFAULT_SIZES, repeats=5):  # pragma: no cover - command-line use
    print(format_bounded_rows(compare_bounded_with_scipy(sizes, repeats)))
    try:
        owlqn = compare_owlqn_with_saga()
    except ImportError:
        return
    print(f"OWL-QN {owlqn['owlqn_s'] * 1e3:.1f} ms vs scikit-learn SAGA {owlqn['saga_s'] * 1e3:.1f}"
          f" ms; objective {owlqn['owlqn_f']:.12g} vs {owlqn['saga_f']:.12g} (relative gap "
          f"{owlqn['rel_gap']:.1e}); zero coefficients {owlqn['owlqn_zeros']} / "
          f"{owlqn['saga_zeros']}")


if __name__ == "__main__":  # pragma: no cover
    main()
