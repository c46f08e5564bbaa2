"""pytest-benchmark timings of fastopt's L-BFGS against SciPy's L-BFGS-B (not in the default run).

    python -m pytest bench/test_bench_lbfgs.py --benchmark-group-by=param:n

Each benchmark is a full solve of the chained Rosenbrock function with the same memory,
tolerances and iteration cap, with BLAS pinned to one thread. ``test_overhead_ratio`` records the
per-iteration time spent outside the objective (see ``fastopt.benchmarks.lbfgs_vs_scipy``) in ``extra_info``.
"""
import pytest
from scipy.optimize import minimize

from fastopt.benchmarks.lbfgs_vs_scipy import (chained_rosenbrock, chained_rosenbrock_start,
                                  compare_with_scipy)
from fastopt import minimize_lbfgs

threadpoolctl = pytest.importorskip("threadpoolctl")

SIZES = [100, 1_000, 10_000, 100_000]


def _maxiter(n):
    return 300 if n <= 10_000 else 100


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpoolctl.threadpool_limits(limits=1):
        yield


@pytest.mark.parametrize("n", SIZES)
def test_fastopt_lbfgs(benchmark, n):
    x0 = chained_rosenbrock_start(n)
    result = benchmark(minimize_lbfgs, chained_rosenbrock, x0, m=10, maxiter=_maxiter(n),
                       maxfun=10 * _maxiter(n))
    benchmark.extra_info.update(nit=int(result.nit), nfev=int(result.nfev))


@pytest.mark.parametrize("n", SIZES)
def test_scipy_lbfgsb(benchmark, n):
    x0 = chained_rosenbrock_start(n)
    result = benchmark(minimize, chained_rosenbrock, x0, jac=True, method="L-BFGS-B",
                       options=dict(maxcor=10, maxiter=_maxiter(n), maxfun=10 * _maxiter(n)))
    benchmark.extra_info.update(nit=int(result.nit), nfev=int(result.nfev))


@pytest.mark.parametrize("n", SIZES)
def test_overhead_ratio(benchmark, n):
    rows = benchmark.pedantic(compare_with_scipy, kwargs=dict(sizes=[n], repeats=3),
                              rounds=1, iterations=1)
    benchmark.extra_info.update(rows[0])
    assert rows[0]["fastopt_nit"] > 0 and rows[0]["scipy_nit"] > 0
