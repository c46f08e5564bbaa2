"""Waking the pool's helpers ahead of a step (prewake): no effect on results, harmless when no job
follows, safe across fork, and the thread decision counts helpers being woken as awake.

An optimizer step wakes the helpers as it starts when its work may be worth them, so that their
wake-up overlaps the step's own checks. These tests check what that must never change (the bits of
a step, the threads the process holds, a forked child's pool) and the decisions it feeds; how
fast it is, is for the benchmark's targets (bench/targets.json), not for unit tests.
"""
import math
import multiprocessing
import time

import numpy as np
import pytest

import fastopt
import fastopt.optimizer as optimizer_module
from fastopt._backend import kernels
from fastopt._core import _fastopt_threads as threads

pytestmark = pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")

#: AWAKE_MIN_NS of _fastopt_threads.pyx: with helpers awake, a job this long on one thread is shared.
AWAKE_MIN_NS = 4000


@pytest.fixture
def two_threads():
    before = kernels.get_parallel_min_size()
    fastopt.set_num_threads(2)
    kernels.set_parallel_min_size(-1)
    threads._wake_helpers()            # the helpers exist from here on
    yield
    kernels.set_parallel_min_size(before)
    fastopt.set_num_threads(0)


def _thread_count():
    """The OS threads of this process (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc/self/status")


def _wait_until_asleep(limit_s=10.0):
    """Wait until a helper sleeps (they spin 100 us after a job or a wake-up, then sleep)."""
    end = time.monotonic() + limit_s
    while threads.calibration()["helpers_awake"]:
        assert time.monotonic() < end, "the pool's helpers did not go back to sleep"
        time.sleep(0.001)


def _adam_bits(shapes, steps, seed, before_step=None, **step_kwargs):
    """Final params of Adam (two param groups when there are several arrays) as bytes."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    groups = ([{"params": params[:1]}, {"params": params[1:], "lr": 2e-3}] if len(params) > 1
              else params)
    opt = fastopt.Adam(groups, lr=1e-3, weight_decay=0.01)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    for i, g in enumerate(grads):
        if before_step is not None:
            before_step(i)
        opt.step(g, **step_kwargs)
    return b"".join(p.tobytes() for p in params)


ONE_ARRAY = ((300_000,),)
MANY_ARRAYS = ((256, 256),) * 2 + ((512,),) * 20 + ((4096,),) * 20


def _pause_or_wake(i):
    # alternate: helpers asleep at the step (a pause longer than their spin), and woken by hand
    # just before it on top of the step's own wake-up
    if i % 2:
        time.sleep(0.002)
    else:
        threads._wake_helpers()


@pytest.mark.parametrize("shapes", [ONE_ARRAY, MANY_ARRAYS], ids=["one array", "two groups"])
@pytest.mark.parametrize("step_kwargs", [{}, {"max_norm": 1.0}], ids=["step", "clipped step"])
def test_waking_the_helpers_ahead_changes_no_bit(two_threads, shapes, step_kwargs):
    fastopt.set_num_threads(1)
    reference = _adam_bits(shapes, 6, seed=3, **step_kwargs)
    fastopt.set_num_threads(2)
    assert _adam_bits(shapes, 6, seed=3, **step_kwargs) == reference     # the measured decision
    assert _adam_bits(shapes, 6, seed=3, before_step=_pause_or_wake, **step_kwargs) == reference
    kernels.set_parallel_min_size(0)        # every step wakes the helpers and shares its jobs
    assert _adam_bits(shapes, 6, seed=3, before_step=_pause_or_wake, **step_kwargs) == reference


def test_a_wake_with_no_job_after_it_is_harmless(two_threads):
    """Woken helpers that get no job spin for a while and go back to sleep: again and again, with
    no thread started or lost, and the pool still runs jobs afterwards."""
    _wait_until_asleep()
    count = _thread_count()
    for _ in range(30):
        assert threads._wake_helpers() is True          # they slept: this woke them
        assert threads.calibration()["helpers_awake"]   # counted awake at once
        assert threads._wake_helpers() is False         # nothing more to do
        _wait_until_asleep()
    assert _thread_count() == count
    fastopt.set_num_threads(1)
    reference = _adam_bits(ONE_ARRAY, 3, seed=5)
    fastopt.set_num_threads(2)
    kernels.set_parallel_min_size(0)
    assert _adam_bits(ONE_ARRAY, 3, seed=5) == reference


def test_prewake_never_wakes_for_small_steps_or_one_thread(two_threads):
    _wait_until_asleep()
    assert threads.prewake(threads.PREWAKE_MIN - 1) is False
    assert threads.prewake(0) is False
    fastopt.set_num_threads(1)
    assert threads.prewake(10**9) is False
    assert threads.prewake(10**9) is False              # (back to back: the same)
    fastopt.set_num_threads(2)
    assert not threads.calibration()["helpers_awake"]   # still asleep


def test_prewake_with_a_fixed_threshold_wakes_from_it(two_threads):
    kernels.set_parallel_min_size(10**6)
    _wait_until_asleep()
    assert threads.prewake(10**6 - 1) is False
    assert not threads.calibration()["helpers_awake"]
    assert threads.prewake(10**6) is True
    assert threads.calibration()["helpers_awake"]
    assert threads.prewake(10**6) is False              # awake already


def test_prewake_of_back_to_back_steps_wakes_the_helpers(two_threads):
    """Steps closer together than the helpers' spin keep them awake once woken: a step that helpers
    awake would share wakes them, though it is worth less than the wake-ups a step after a pause
    needs (which would otherwise keep them asleep for good)."""
    cal = threads.calibration() if threads.calibration()["wake_ns"] > 0 else threads.recalibrate()
    work = max(threads.PREWAKE_MIN, math.ceil(1.5 * cal["wake_ns"] / cal["unit_ns"]),
               math.ceil(2 * AWAKE_MIN_NS / cal["unit_ns"]))
    estimate = work * threads.calibration()["unit_ns"]
    _wait_until_asleep()
    time.sleep(0.01)          # a pause: the next step is not back to back with any before it
    woke_after_pause = threads.prewake(work)
    if estimate < 2.5 * cal["wake_ns"]:
        assert woke_after_pause is False    # (worth less than COLD_WAKES = 4 wake-ups)
        assert threads.calibration()["helpers_awake"] is False
    woke_back_to_back = threads.prewake(work)   # right after: back to back
    assert (woke_after_pause, woke_back_to_back) in [(False, True), (True, False)]
    assert threads.calibration()["helpers_awake"]


def test_helpers_being_woken_count_as_awake_in_the_thread_decision(two_threads):
    """A job between AWAKE_MIN_NS and the asleep rule's threshold runs on one thread while the
    helpers sleep, and is shared once they are being woken, before the OS has run them."""
    cal = threads.calibration() if threads.calibration()["wake_ns"] > 0 else threads.recalibrate()
    work = math.ceil(1.5 * AWAKE_MIN_NS / cal["unit_ns"])
    assert work * cal["unit_ns"] < 3 * cal["wake_ns"], cal      # the asleep rule says one thread
    decisions = []
    for _ in range(20):       # (a check preempted for over 100 us may find them asleep again)
        _wait_until_asleep()
        asleep = threads._decide_threads(work)
        assert threads._wake_helpers() is True
        decisions.append((asleep, threads._decide_threads(work)))
        if decisions[-1] == (1, 2):
            break
    assert decisions[-1] == (1, 2), decisions


def _child_steps(queue, wake_first):
    try:
        if wake_first:
            threads._wake_helpers()       # the child has no helpers yet: this starts them
        fastopt.set_num_threads(2)
        kernels.set_parallel_min_size(0)
        queue.put(_adam_bits(ONE_ARRAY, 3, seed=1, before_step=_pause_or_wake))
    except BaseException as exc:          # report it instead of leaving the parent waiting
        queue.put(repr(exc))


@pytest.mark.parametrize("wake_first", [False, True], ids=["step first", "wake first"])
def test_fork_while_the_helpers_are_being_woken(two_threads, wake_first):
    fastopt.set_num_threads(1)
    expected = _adam_bits(ONE_ARRAY, 3, seed=1)
    fastopt.set_num_threads(2)
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        _wait_until_asleep()
        threads._wake_helpers()           # the parent's helpers are waking as the child forks
        queue = ctx.Queue()
        child = ctx.Process(target=_child_steps, args=(queue, wake_first))
        child.start()
        got = queue.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert got == expected


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, work):
        self.calls.append(work)
        return False


def test_a_step_wakes_the_helpers_with_its_work_as_it_starts(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(optimizer_module, "_prewake_helpers", recorder)
    n = 100_000
    opt = fastopt.Adam([np.zeros(n, np.float32), np.zeros((10, 100), np.float32)])
    grads = [np.ones(n, np.float32), np.ones((10, 100), np.float32)]
    opt.step(grads)                          # the fast path
    opt.step(grads, max_norm=1.0)            # the general path
    with pytest.raises(ValueError):
        opt.step(grads[:1])                  # woken before the checks, which then refuse
    assert recorder.calls == [3 * (n + 1000)] * 3      # Adam's weight is 3
    recorder.calls.clear()
    fastopt.SGD([np.zeros(1000, np.float32)], lr=0.1).step([np.ones(1000, np.float32)])
    assert recorder.calls == []              # far too small to be worth helpers
    sgd = fastopt.SGD([np.zeros(threads.PREWAKE_MIN, np.float32)], lr=0.1)
    sgd.step([np.ones(threads.PREWAKE_MIN, np.float32)])
    assert recorder.calls == [threads.PREWAKE_MIN]     # SGD's weight is 1
