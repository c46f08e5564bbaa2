"""Memory: long runs do not grow the process, and optimizers do not leak when dropped.

RSS is read from /proc/self/statm (Linux; elsewhere ``resource``'s peak RSS is a weaker stand-in).
Every measurement warms up first (arenas, caches, interned objects) and then allows < 1 MB growth.
"""
import gc
import sys
import weakref

import numpy as np
import pytest

import fastopt
from fastopt.checkpoint import load, save
from memory_growth import MB, growth

MAKERS = {
    "sgd_momentum": lambda ps, **kw: fastopt.SGD(ps, lr=1e-3, momentum=0.9, **kw),
    "adam_amsgrad": lambda ps, **kw: fastopt.Adam(ps, lr=1e-3, amsgrad=True, **kw),
    "adamw": lambda ps, **kw: fastopt.AdamW(ps, lr=1e-3, **kw),
    "rmsprop_centered": lambda ps, **kw: fastopt.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5, **kw),
    "adagrad": lambda ps, **kw: fastopt.Adagrad(ps, lr=1e-3, lr_decay=1e-4, **kw),
}


def _stepper(name, steps, **kw):
    p = [np.zeros(16), np.zeros(8, np.float32)]
    g = [np.full(16, 1e-3), np.full(8, 1e-3, np.float32)]
    opt = MAKERS[name](p, **kw)
    step = opt.step

    def run(n=steps):
        for _ in range(n):
            step(g)
    return run


def test_million_sgd_steps_do_not_grow_rss():
    run = _stepper("sgd_momentum", 1_000_000)
    grew = growth(run, lambda: run(20_000))
    print(f"RSS growth over 1,000,000 SGD steps: {grew / 1024:.0f} KiB")
    assert grew < MB


@pytest.mark.parametrize("skip_nonfinite", [False, True], ids=["plain", "skip_nonfinite"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_100k_steps_do_not_grow_rss(name, skip_nonfinite):
    run = _stepper(name, 100_000, skip_nonfinite=skip_nonfinite)
    grew = growth(run, lambda: run(5_000))
    assert grew < MB, f"{grew / 1024:.0f} KiB"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_million_steps_every_optimizer(name):
    run = _stepper(name, 1_000_000, skip_nonfinite=True)
    grew = growth(run, lambda: run(20_000))
    assert grew < MB, f"{grew / 1024:.0f} KiB"


def test_skipped_steps_and_rejected_calls_do_not_grow_rss():
    """The error paths (rejected grads, skipped non-finite steps) free what they allocate."""
    p = [np.zeros(16), np.zeros(8, np.float32)]
    opt = fastopt.Adam(p, skip_nonfinite=True)
    good = [np.ones(16), np.ones(8, np.float32)]
    nan = [np.full(16, np.nan), np.ones(8, np.float32)]
    wrong = [np.ones(16), np.ones(8)]          # second grad has the wrong dtype

    def run(n=30_000):
        for _ in range(n):
            opt.step(good)
            opt.step(nan)
            try:
                opt.step(wrong)
            except TypeError:
                pass
            try:
                fastopt.clip_grad_norm_(good, -1.0)
            except ValueError:
                pass
    grew = growth(run, lambda: run(2_000))
    assert grew < MB, f"{grew / 1024:.0f} KiB"
    assert opt.skipped_steps == 32_000


def test_clipping_does_not_grow_rss():
    gs = [np.ones(100), np.ones(50, np.float32)]

    def run(n=100_000):
        for _ in range(n):
            fastopt.clip_grad_norm_(gs, 1e3)
            fastopt.clip_grad_value_(gs, 1e3)
            fastopt.grads_finite(gs)
    grew = growth(run, lambda: run(5_000))
    assert grew < MB, f"{grew / 1024:.0f} KiB"


def test_creating_and_dropping_optimizers_does_not_leak():
    """Each optimizer (and its ParamBucket arenas) is freed by reference counting alone (no cycles),
    and building thousands of them leaves RSS where it was."""
    params = [np.zeros(1000), np.zeros((10, 10), np.float32)]
    grads = [np.ones(1000), np.ones((10, 10), np.float32)]

    base_refs = [sys.getrefcount(p) for p in params]
    gc.disable()
    try:
        for name, make in MAKERS.items():
            opt = make([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}])
            opt.step(grads)
            state = opt.state_dict()
            opt.load_state_dict(state)
            # ParamBucket takes no weak references: its arenas (which it alone holds) stand in for it
            arenas = [weakref.ref(a) for group in opt._buckets for b in group for a in b.arenas.values()]
            ref = weakref.ref(opt)
            del opt
            assert ref() is None, f"{name}: the optimizer is kept alive by a reference cycle"
            assert arenas and all(a() is None for a in arenas), f"{name}: a state arena outlived its optimizer"
            assert [sys.getrefcount(p) for p in params] == base_refs, f"{name}: a param reference leaked"
    finally:
        gc.enable()

    def run(n=3_000):
        for i in range(n):
            make = MAKERS[sorted(MAKERS)[i % len(MAKERS)]]
            opt = make([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}])
            opt.step(grads)
            opt.load_state_dict(opt.state_dict())
    grew = growth(run, lambda: run(300))
    print(f"RSS growth over 3,000 optimizers built, stepped and dropped: {grew / 1024:.0f} KiB")
    assert grew < MB


def test_checkpoint_round_trips_do_not_grow_rss(tmp_path):
    params = [np.zeros(1000), np.zeros((10, 10), np.float32)]
    opt = fastopt.Adam(params, amsgrad=True)
    opt.step([np.ones(1000), np.ones((10, 10), np.float32)])
    path = tmp_path / "m.npz"

    def run(n=300):
        for _ in range(n):
            save(opt, path, params=True)
            load(opt, path)
    grew = growth(run, lambda: run(30))
    assert grew < MB, f"{grew / 1024:.0f} KiB"
