"""fastopt's thread pool: helpers claim chunks, so an unscheduled helper never stalls a step.

The pool's test hook delays every helper after it wakes for a job (as if the OS had not scheduled
it); a step must then finish on the calling thread alone, at about its one-thread cost, with the
same bits. Also: a forked child gets a working pool, concurrent steps from several Python threads
run correctly, and the thread decision's calibration is exposed.
"""
import multiprocessing
import threading
import time

import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels

pytestmark = pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")


@pytest.fixture
def two_threads():
    before = kernels.get_parallel_min_size()
    fastopt.set_num_threads(2)
    kernels.set_parallel_min_size(0)     # always offer the job to the helper
    yield
    kernels._set_helper_delay_us(0)
    kernels.set_parallel_min_size(before)
    fastopt.set_num_threads(0)


def _adam_run(n, steps, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    opt = fastopt.Adam([p], lr=1e-3, weight_decay=0.01)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(steps)]
    times = []
    for g in grads:
        start = time.perf_counter()
        opt.step([g])
        times.append(time.perf_counter() - start)
    return p, times


def test_a_helper_that_is_not_scheduled_does_not_stall_the_step(two_threads):
    """With every helper held back 0.5 s after it wakes, 2-thread steps still take about the
    one-thread time: the caller claims and runs every chunk itself."""
    reference, _ = _adam_run(1_000_000, 5)
    kernels._set_helper_delay_us(500_000)
    delayed, times = _adam_run(1_000_000, 5)
    assert delayed.tobytes() == reference.tobytes()
    # one thread takes ~1-2 ms here (0.1 s even on a loaded machine); waiting for the delayed
    # helper would take 500 ms per step
    assert max(times) < 0.25, times


def test_clipping_reductions_do_not_wait_for_a_delayed_helper(two_threads):
    g = [np.ones(2_000_000, dtype=np.float32)]
    expected = fastopt.clip_grad_norm_([g[0].copy()], 1.0)
    kernels._set_helper_delay_us(500_000)
    start = time.perf_counter()
    norm = fastopt.clip_grad_norm_(g, 1.0)
    assert time.perf_counter() - start < 0.4
    assert norm == expected


def _child_steps(queue):
    fastopt.set_num_threads(2)
    kernels.set_parallel_min_size(0)
    p, _ = _adam_run(300_000, 3, seed=1)
    queue.put(p.tobytes())


def test_a_forked_child_gets_a_working_pool(two_threads):
    _adam_run(300_000, 2)     # the parent's helpers exist before the fork
    expected, _ = _adam_run(300_000, 3, seed=1)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_steps, args=(queue,))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert got == expected.tobytes()


def test_concurrent_steps_from_python_threads(two_threads):
    """The pool runs one job at a time; a step that finds it busy runs on its own thread."""
    expected = [_adam_run(400_000, 4, seed=s)[0].tobytes() for s in range(4)]
    results = [None] * 4

    def work(s):
        results[s] = _adam_run(400_000, 4, seed=s)[0].tobytes()

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_thread_decision_is_measured():
    """The wake-up cost is measured (helpers asleep until a job's first chunk runs on one), and the
    cost of a unit of work follows the single-threaded jobs that ran."""
    kernels.set_parallel_min_size(-1)
    fastopt.set_num_threads(1)
    try:
        before = kernels.calibration()["unit_ns"]
        _adam_run(200_000, 20)
        cal = kernels.recalibrate()
        assert 0 < cal["wake_ns"] < 1e8
        assert 0.01 < cal["unit_ns"] < 100 and cal["unit_ns"] != before
    finally:
        fastopt.set_num_threads(0)
