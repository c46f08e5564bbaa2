"""Threads: separate optimizers run concurrently and give the serial results; the kernels release the
GIL; one optimizer used from two threads at once raises a clear RuntimeError and loses nothing."""
import hashlib
import os
import threading
import time

import numpy as np
import pytest

import fastopt


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


MAKERS = [
    lambda ps: fastopt.SGD(ps, lr=0.01, momentum=0.9, nesterov=True),
    lambda ps: fastopt.Adam(ps, lr=1e-3, amsgrad=True),
    lambda ps: fastopt.AdamW(ps, lr=1e-3, weight_decay=0.1),
    lambda ps: fastopt.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5),
    lambda ps: fastopt.Adagrad(ps, lr=0.1, lr_decay=0.01),
    lambda ps: fastopt.Adam(ps, lr=1e-3, skip_nonfinite=True),
]


def _problem(k, n=50_000):
    rng = np.random.default_rng(k)
    params = [rng.standard_normal(n).astype(np.float32), rng.standard_normal((n // 100, 10))]
    grads = [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(4)]
    return params, grads


def _train(k, steps=30):
    params, grads = _problem(k)
    opt = MAKERS[k % len(MAKERS)](params)
    for t in range(steps):
        opt.step(grads[t % len(grads)])
    return [p.tobytes() for p in params]


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_concurrent_optimizers_match_serial(kernel_threads):
    fastopt.set_num_threads(kernel_threads)
    try:
        serial = [_train(k) for k in range(len(MAKERS))]
        results = [None] * len(MAKERS)
        errors = []
        barrier = threading.Barrier(len(MAKERS))

        def worker(k):
            try:
                barrier.wait()
                results[k] = _train(k)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(MAKERS))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert results == serial
    finally:
        fastopt.set_num_threads(0)


def test_kernel_runs_without_the_gil():
    """While one thread is inside a long step, another thread keeps running Python code."""
    n = 1 << 21
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    opt = fastopt.RMSprop([p], centered=True, momentum=0.9)
    fastopt.set_num_threads(1)
    counts = []
    try:
        for _ in range(3):
            done = threading.Event()
            th = threading.Thread(target=lambda: (opt.step([g]), opt.step([g]), done.set()))
            th.start()
            spins = 0
            while not done.is_set():
                if opt._lock.locked():       # the other thread is inside step()
                    spins += 1
            th.join()
            counts.append(spins)
            if spins > 1000:
                break
    finally:
        fastopt.set_num_threads(0)
    print(f"python loop iterations while the other thread held the step: {counts}")
    assert max(counts) > 1000, counts


def _pair_ratio(first, second):
    """(wall time of first() and second() in two threads at once) / (wall time of first()), best of 3."""
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        first()
        single = time.perf_counter() - t0
        ths = [threading.Thread(target=fn) for fn in (first, second)]
        t0 = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        both = time.perf_counter() - t0
        ratio = both / single
        best = ratio if best is None else min(best, ratio)
    return best


@pytest.mark.skipif(_cores() < 2, reason="needs 2 cores to overlap")
def test_two_threads_overlap(record_property):
    """Two threads each stepping their own optimizer take clearly less than the serial sum (2x).

    A control workload that also releases the GIL (hashlib on 1 MB blocks) measures what the
    machine can overlap right now; when it is busy (control >= 1.6x) the test reports and skips.
    """
    n = 1 << 18

    def adam_work_fn(seed):
        p = np.zeros(n, np.float32)
        g = [np.random.default_rng(seed).standard_normal(n).astype(np.float32)]
        opt = fastopt.Adam([p], amsgrad=True)

        def work():
            for _ in range(60):
                opt.step(g)
        work()                          # warm up: state arenas allocated, pages touched
        return work

    blob = os.urandom(1 << 20)

    def control_work():
        for _ in range(40):
            hashlib.sha256(blob).digest()

    fastopt.set_num_threads(1)
    ratios, controls = [], []
    try:
        first, second = adam_work_fn(0), adam_work_fn(1)
        for _ in range(4):              # other processes may hold a core for a while: retry
            ratios.append(_pair_ratio(first, second))
            controls.append(_pair_ratio(control_work, control_work))
            if ratios[-1] < 1.9:
                break
    finally:
        fastopt.set_num_threads(0)
    ratio, control = min(ratios), min(controls)
    print(f"two-thread wall time / one-thread: fastopt {ratio:.2f}, hashlib control {control:.2f} (serial = 2.0)")
    record_property("overlap_ratio", round(ratio, 3))
    record_property("overlap_ratio_control", round(control, 3))
    if ratio >= 1.9 and control >= 1.6:
        pytest.skip(f"the machine is busy: even hashlib only reaches {control:.2f}x; fastopt {ratio:.2f}x")
    assert ratio < 1.9


class BlockingFloat(float):
    """A hyperparameter whose check blocks until released: holds a step inside the optimizer's lock."""

    def __new__(cls, value, entered, release):
        obj = super().__new__(cls, value)
        obj.entered, obj.release = entered, release
        return obj

    def __float__(self):
        self.entered.set()
        assert self.release.wait(30)
        return float.__float__(self)


def _held_step(opt, grads, group=0):
    """Start a step of ``opt`` in a thread and return once it holds the lock (deterministically)."""
    entered, release = threading.Event(), threading.Event()
    opt.param_groups[group]["lr"] = BlockingFloat(opt.param_groups[group]["lr"], entered, release)
    result = {}

    def run():
        try:
            result["value"] = opt.step(grads)
        except BaseException as exc:  # pragma: no cover - asserted below
            result["error"] = exc

    th = threading.Thread(target=run)
    th.start()
    assert entered.wait(30)
    assert opt._lock.locked()
    return th, release, result


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_same_optimizer_from_two_threads_raises(skip_nonfinite, tmp_path):
    from fastopt.checkpoint import load, save
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(1000), rng.standard_normal(10).astype(np.float32)]
    ref_params = [p.copy() for p in params]
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    opt = fastopt.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.01, skip_nonfinite=skip_nonfinite)
    ref = fastopt.Adam([{"params": ref_params[:1]}, {"params": ref_params[1:]}], lr=0.01)
    opt.step(grads)
    ref.step(grads)
    save(opt, tmp_path / "c.npz")

    th, release, result = _held_step(opt, grads)
    try:
        for call in (lambda: opt.step(grads),
                     lambda: opt.state_dict(),
                     lambda: opt.load_state_dict(ref.state_dict()),
                     lambda: opt.add_param_group({"params": [np.zeros(3)]}),
                     lambda: save(opt, tmp_path / "d.npz"),
                     lambda: load(opt, tmp_path / "c.npz")):
            with pytest.raises(RuntimeError, match="in another thread"):
                call()
    finally:
        release.set()
        th.join()
    assert result == {"value": True}
    assert not (tmp_path / "d.npz").exists()
    # the held step completed exactly once; nothing else got through
    ref.step(grads)
    assert [p.tobytes() for p in params] == [p.tobytes() for p in ref_params]
    assert len(opt.param_groups) == 2
    opt.step(grads)                      # and the optimizer is usable again
    assert not opt._lock.locked()


def test_same_optimizer_two_threads_large_steps():
    """The realistic race: a second thread calls step() while a large step runs; it gets the
    RuntimeError (never a crash or a corrupted state)."""
    n = 1 << 22
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    opt = fastopt.Adam([p], lr=0.1)
    fastopt.set_num_threads(1)
    seen = {"runtime": 0, "ok": 0}
    try:
        for _ in range(20):
            th = threading.Thread(target=opt.step, args=([g],))
            th.start()
            while th.is_alive() and not opt._lock.locked():
                pass
            try:
                opt.step([g])
                seen["ok"] += 1             # the first step had already finished: no overlap
            except RuntimeError as exc:
                assert "in another thread" in str(exc)
                seen["runtime"] += 1
            th.join()
            if seen["runtime"] >= 3:
                break
    finally:
        fastopt.set_num_threads(0)
    assert seen["runtime"] >= 1, seen
    rounds = seen["runtime"] + seen["ok"]          # one step per round in the thread, plus the ok ones
    assert opt.state_dict()["state"][0]["step"] == rounds + seen["ok"]
    # every applied step was a whole step: all elements agree
    assert np.all(p == p[0])
