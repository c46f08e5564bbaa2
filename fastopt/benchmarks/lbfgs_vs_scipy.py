"""Overhead of fastopt's L-BFGS against SciPy's L-BFGS-B.

The quantity compared is the time per iteration spent *outside* the objective: the wall time of a
run minus the time measured inside ``fun`` (``fun`` is wrapped by a timer), divided by the number
of iterations. Both solvers get the same objective (chained Rosenbrock), start point, memory ``m``,
tolerances and iteration cap, with BLAS pinned to one thread.
"""
import contextlib
import functools
import time

import numpy as np
from scipy.optimize import minimize

from ..minimize import minimize_lbfgs

DEFAULT_SIZES = (100, 1_000, 10_000, 100_000)
FLOOR_MIN_N = 10_000


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


def _one_blas_thread():
    """A context that limits BLAS (and OpenMP) to one thread; a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a bench dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def history_pass_floor(n, m=10, timer=time.perf_counter, budget=0.05):
    """Seconds for the two passes over the history that any L-BFGS iteration makes, done by
    OpenBLAS: ``H @ g`` (the inner products with the new gradient) and ``c @ H`` (the direction
    as a combination of the rows), H of shape (2 m, n) in float64. Call with BLAS limited to
    one thread to compare with one-threaded solvers. Fastest of repeated timings."""
    rng = np.random.default_rng(0)
    history = rng.standard_normal((2 * m, n))
    g = rng.standard_normal(n)
    coef = rng.standard_normal(2 * m)
    reps = max(1, int(2e6 // (m * n)))
    best = np.inf
    deadline = timer() + budget
    while True:
        start = timer()
        for _ in range(reps):
            history @ g
            coef @ history
        best = min(best, (timer() - start) / reps)
        if timer() > deadline:
            return best


def compare_with_scipy(sizes=DEFAULT_SIZES, repeats=5, m=10, gtol=1e-5, ftol=2.2e-9,
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
        the process) is steadier on a loaded machine, but each reading is a system call (~0.5 µs
        on an AMD EPYC, 2 cores, 2026) that lands in the overhead of both solvers.

    Returns
    -------
    list of dict
        One row per size: ``n``, ``scipy_us_per_iter``, ``fastopt_us_per_iter``, ``ratio``
        (fastopt / SciPy overhead), ``floor_us_per_iter`` (:func:`history_pass_floor`, the two
        passes over the history an iteration cannot do without, by one-threaded OpenBLAS) and
        ``floor_ratio`` (floor / SciPy overhead; both None below n = 1e4, where NumPy's call
        overhead would dominate), iterations, evaluations and final f of each
        solver.
    """
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
                with _one_blas_thread():
                    total, inside, result = runner(x0, m, gtol, ftol, cap)
                per_iter = (total - inside) / max(result.nit, 1)
                if name not in best or per_iter < best[name][0]:
                    best[name] = (per_iter, result)
        scipy_overhead, scipy_result = best["scipy"]
        fast_overhead, fast_result = best["fastopt"]
        # Below ~1e4 elements NumPy's call overhead (~1 us a call, AMD EPYC, 2 cores, 2026) would dominate the "floor".
        floor = None
        if n >= FLOOR_MIN_N:
            with _one_blas_thread():
                floor = history_pass_floor(n, m, timer)
        rows.append({
            "n": n,
            "scipy_us_per_iter": scipy_overhead * 1e6,
            "fastopt_us_per_iter": fast_overhead * 1e6,
            "ratio": fast_overhead / scipy_overhead,
            "floor_us_per_iter": None if floor is None else floor * 1e6,
            "floor_ratio": None if floor is None else floor / scipy_overhead,
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
    lines = ["| n | SciPy L-BFGS-B µs/iter | fastopt µs/iter | ratio | history floor µs | "
             "floor / SciPy | iters (SciPy / fastopt) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        floor, floor_ratio = "–", "–"
        if r["floor_us_per_iter"] is not None:
            floor, floor_ratio = f"{r['floor_us_per_iter']:.1f}", f"{r['floor_ratio']:.3f}"
        lines.append(f"| {r['n']:,} | {r['scipy_us_per_iter']:.1f} | {r['fastopt_us_per_iter']:.1f}"
                     f" | {r['ratio']:.3f} | {floor} | {floor_ratio}"
                     f" | {r['scipy_nit']} / {r['fastopt_nit']} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_rows(compare_with_scipy()))
