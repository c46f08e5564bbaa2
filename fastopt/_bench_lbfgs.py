"""Overhead of fastopt's L-BFGS against SciPy's L-BFGS-B.

The quantity compared is the time per iteration spent *outside* the objective: the wall time of a
run minus the time measured inside ``fun`` (``fun`` is wrapped by a timer), divided by the number
of iterations. Both solvers get the same objective (chained Rosenbrock), start point, memory ``m``,
tolerances and iteration cap, with BLAS pinned to one thread.
"""
import functools
import time

import numpy as np
from scipy.optimize import minimize

from .lbfgs import minimize_lbfgs

DEFAULT_SIZES = (100, 1_000, 10_000, 100_000)


def chained_rosenbrock(x):
    """f(x) = sum_{i<n-1} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 and its gradient."""
    head, tail = x[:-1], x[1:]
    r = tail - head * head
    e = 1.0 - head
    f = 100.0 * float(r @ r) + float(e @ e)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * head * r - 2.0 * e
    g[1:] += 200.0 * r
    return f, g


def chained_rosenbrock_start(n):
    """The classical start point (-1.2, 1, -1.2, 1, ...)."""
    x0 = np.ones(n)
    x0[0::2] = -1.2
    return x0


class _TimedObjective:
    """Wraps ``fun`` and accumulates the time spent inside it."""

    def __init__(self, fun, timer):
        self.fun = fun
        self.timer = timer
        self.inside = 0.0

    def __call__(self, x):
        start = self.timer()
        value = self.fun(x)
        self.inside += self.timer() - start
        return value


def _run_scipy(x0, m, gtol, ftol, maxiter, timer):
    objective = _TimedObjective(chained_rosenbrock, timer)
    start = timer()
    result = minimize(objective, x0, jac=True, method="L-BFGS-B",
                      options=dict(maxcor=m, gtol=gtol, ftol=ftol, maxiter=maxiter,
                                   maxfun=10 * maxiter))
    total = timer() - start
    return total, objective.inside, result


def _run_fastopt(x0, m, gtol, ftol, maxiter, timer):
    objective = _TimedObjective(chained_rosenbrock, timer)
    start = timer()
    result = minimize_lbfgs(objective, x0, m=m, gtol=gtol, ftol=ftol, maxiter=maxiter,
                            maxfun=10 * maxiter)
    total = timer() - start
    return total, objective.inside, result


def compare_with_scipy(sizes=DEFAULT_SIZES, repeats=3, m=10, gtol=1e-5, ftol=2.2e-9,
                       maxiter=None, timer=time.perf_counter):
    """Measure per-iteration overhead (outside ``fun``) of fastopt's L-BFGS and SciPy's L-BFGS-B.

    Parameters
    ----------
    sizes : iterable of int
        Problem sizes n of the chained Rosenbrock function.
    repeats : int
        Runs per solver and size; the fastest (least disturbed) run is reported.
    m, gtol, ftol : L-BFGS parameters shared by both solvers.
    maxiter : int, optional
        Iteration cap; by default 300 for n <= 1e4 and 100 above, so the largest size runs in
        about a second.
    timer : callable
        Clock for both the run and the time inside ``fun``. ``time.process_time`` (CPU time of
        the process) is steadier on a loaded machine, but each reading is a system call (~0.5 µs)
        that lands in the overhead of both solvers.

    Returns
    -------
    list of dict
        One row per size: ``n``, ``scipy_us_per_iter``, ``fastopt_us_per_iter``, ``ratio``
        (fastopt / SciPy overhead), iterations, evaluations and final f of each solver.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a bench dependency
        threadpool_limits = None
    fastopt_runner = functools.partial(_run_fastopt, timer=timer)
    scipy_runner = functools.partial(_run_scipy, timer=timer)
    rows = []
    for n in sizes:
        n = int(n)
        cap = maxiter if maxiter is not None else (300 if n <= 10_000 else 100)
        x0 = chained_rosenbrock_start(n)
        best = {}
        for _ in range(repeats):
            for name, runner in (("scipy", scipy_runner), ("fastopt", fastopt_runner)):
                if threadpool_limits is not None:
                    with threadpool_limits(limits=1):
                        total, inside, result = runner(x0, m, gtol, ftol, cap)
                else:
                    total, inside, result = runner(x0, m, gtol, ftol, cap)
                per_iter = (total - inside) / max(result.nit, 1)
                if name not in best or per_iter < best[name][0]:
                    best[name] = (per_iter, result)
        scipy_overhead, scipy_result = best["scipy"]
        fast_overhead, fast_result = best["fastopt"]
        rows.append({
            "n": n,
            "scipy_us_per_iter": scipy_overhead * 1e6,
            "fastopt_us_per_iter": fast_overhead * 1e6,
            "ratio": fast_overhead / scipy_overhead,
            "scipy_nit": int(scipy_result.nit),
            "fastopt_nit": int(fast_result.nit),
            "scipy_nfev": int(scipy_result.nfev),
            "fastopt_nfev": int(fast_result.nfev),
            "scipy_fun": float(scipy_result.fun),
            "fastopt_fun": float(fast_result.fun),
        })
    return rows


def format_rows(rows):
    """Render :func:`compare_with_scipy` rows as a Markdown table."""
    lines = ["| n | SciPy L-BFGS-B µs/iter | fastopt µs/iter | ratio | iters (SciPy / fastopt) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['scipy_us_per_iter']:.1f} | {r['fastopt_us_per_iter']:.1f}"
                     f" | {r['ratio']:.3f} | {r['scipy_nit']} / {r['fastopt_nit']} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_rows(compare_with_scipy()))
