"""pytest-benchmark suite: fastopt's kernels against the in-place NumPy references of
fastopt.benchmarks.numpy_reference.

Run with ``pytest bench/ --benchmark-only`` (not part of the default test run: pyproject's
``testpaths`` is ``tests``). Each group ``{optimizer}-{dtype}-{n}`` holds the two contenders.
Both sides run on one thread by default (NumPy's ufuncs are single-threaded; BLAS, used by the NumPy
clip's dot products, is limited to one thread too): a kernel-for-kernel comparison that a busy shared
machine disturbs least. ``FASTOPT_BENCH_THREADS=n`` gives fastopt (and BLAS) n threads.
"""
import os

import pytest

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import contextlib

    import fastopt
    n = int(os.environ.get("FASTOPT_BENCH_THREADS", "1"))
    before = fastopt.get_num_threads()
    fastopt.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        limits = contextlib.nullcontext()
    with limits:
        yield
    fastopt.set_num_threads(before)
