"""Non-finite gradients.

With ``skip_nonfinite=True`` a step whose gradients hold a NaN/+Inf/-Inf anywhere (first, middle,
last element; first or last of many arrays; float32 or float64 bucket) is skipped atomically:
params and state stay bit-identical, ``found_inf`` is set and ``skipped_steps`` counted, on 1 and
on 2 threads (the parallel path forced with a small ``set_parallel_min_size``). The next finite step
continues exactly as if the bad step had never been offered. With the default ``False`` a NaN
propagates elementwise as in torch.optim: only the poisoned element goes non-finite.
"""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import fingerprint

OPTIMIZERS = {
    "sgd": lambda ps, **kw: fastopt.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, **kw),
    "sgd_plain": lambda ps, **kw: fastopt.SGD(ps, lr=0.1, **kw),
    "adam": lambda ps, **kw: fastopt.Adam(ps, lr=0.01, weight_decay=0.1, **kw),
    "adamw_amsgrad": lambda ps, **kw: fastopt.AdamW(ps, lr=0.01, amsgrad=True, **kw),
    "rmsprop": lambda ps, **kw: fastopt.RMSprop(ps, lr=0.01, momentum=0.5, centered=True, **kw),
    "adagrad": lambda ps, **kw: fastopt.Adagrad(ps, lr=0.1, lr_decay=0.01, **kw),
}

# Many arrays of both dtypes; the last is big enough to be split between threads.
SHAPES = [((7,), np.float64), ((3, 5), np.float32), ((1,), np.float64), ((33,), np.float32),
          ((4, 1000), np.float64)]
BAD_VALUES = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old_min = kernels.get_parallel_min_size()
    fastopt.set_num_threads(request.param)
    # 2048: the 4000-element bucket and the 4099-element array below are split between the threads,
    # while the tiny buckets stay serial (each parallel region costs a wake-up on a busy machine).
    kernels.set_parallel_min_size(2048 if request.param > 1 else old_min)
    yield request.param
    fastopt.set_num_threads(0)
    kernels.set_parallel_min_size(old_min)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]


def make_grads(rng):
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]


def groups(params):
    """Two param groups (the second with its own lr), so every bucket path is used."""
    return [{"params": params[:3]}, {"params": params[3:], "lr": 0.003}]


def positions(shape):
    n = int(np.prod(shape))
    return sorted({0, n // 2, n - 1})


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skip_nonfinite_is_atomic(name, threads):
    make = OPTIMIZERS[name]
    params, ref_params = make_params(), make_params()
    opt = make(groups(params), skip_nonfinite=True)
    ref = make(groups(ref_params))
    rng = np.random.default_rng(1)
    for _ in range(2):                               # build up state first
        g = make_grads(rng)
        assert opt.step(g) is True and ref.step([x.copy() for x in g]) is True
    assert fingerprint(opt, params) == fingerprint(ref, ref_params)
    skipped = 0
    for which in (0, len(SHAPES) - 1, 3):            # first, last and a middle array
        for pos in positions(SHAPES[which][0]):
            for label, bad in BAD_VALUES.items():
                g = make_grads(rng)
                g[which].reshape(-1)[pos] = bad
                if which == 0:
                    g[2] = None                      # a None grad in the same step changes nothing
                before = fingerprint(opt, params)
                assert opt.step(g) is False, (which, pos, label)
                skipped += 1
                assert opt.found_inf is True and opt.skipped_steps == skipped
                assert fingerprint(opt, params) == before, (which, pos, label)
        # a finite step goes on exactly like the optimizer that never saw the bad ones
        g = make_grads(rng)
        assert opt.step(g) is True and opt.found_inf is False
        ref.step([x.copy() for x in g])
        assert fingerprint(opt, params) == fingerprint(ref, ref_params)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skip_nonfinite_every_element_of_a_split_array(name, threads):
    """A single bad element anywhere in an array split between threads is found (cut points too)."""
    params = [np.random.default_rng(2).standard_normal(4099).astype(np.float32)]
    opt = OPTIMIZERS[name](params, skip_nonfinite=True)
    g = np.random.default_rng(3).standard_normal(4099).astype(np.float32)
    opt.step([g])
    before = fingerprint(opt, params)
    # around the 2-thread cut (2048), the 4096-element reduction block edge and both ends
    cuts = [0, 1, 15, 16, 2047, 2048, 2049, 4080, 4095, 4096, 4097, 4098]
    for pos in cuts:
        bad = g.copy()
        bad[pos] = np.nan if pos % 2 else np.inf
        assert opt.step([bad]) is False, pos
    assert fingerprint(opt, params) == before
    assert opt.skipped_steps == len(cuts)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_default_propagates_nonfinite_elementwise(name, threads):
    """skip_nonfinite=False (default): the step is applied; only the poisoned element goes
    non-finite, every other element is bit-identical to a step with a finite value there."""
    make = OPTIMIZERS[name]
    for label, bad in BAD_VALUES.items():
        params, ref_params = make_params(), make_params()
        opt, ref = make(groups(params)), make(groups(ref_params))
        rng = np.random.default_rng(4)
        g = make_grads(rng)
        opt.step(g)
        ref.step([x.copy() for x in g])
        g = make_grads(rng)
        which, pos = len(SHAPES) - 1, 2001
        poisoned = [x.copy() for x in g]
        poisoned[which].reshape(-1)[pos] = bad
        g[which].reshape(-1)[pos] = 0.0
        assert opt.step(poisoned) is True and opt.found_inf is False and opt.skipped_steps == 0
        ref.step(g)
        for i, (p, q) in enumerate(zip(params, ref_params)):
            if i != which:
                assert p.tobytes() == q.tobytes()
                continue
            p, q = p.reshape(-1), q.reshape(-1)
            assert not np.isfinite(p[pos]), (label, p[pos])
            mask = np.arange(p.size) != pos
            assert p[mask].tobytes() == q[mask].tobytes()
        if label == "nan":
            assert np.isnan(params[which].reshape(-1)[pos])


def test_grads_finite_helper_matches_numpy(threads):
    rng = np.random.default_rng(5)
    gs = make_grads(rng)
    assert fastopt.grads_finite(gs)
    for bad in BAD_VALUES.values():
        for which in range(len(gs)):
            hs = [x.copy() for x in gs]
            hs[which].reshape(-1)[-1] = bad
            assert not fastopt.grads_finite(hs)


def test_subnormal_and_huge_finite_grads_are_not_skipped(threads):
    """Finite extremes (subnormals, float max) are not mistaken for non-finite values."""
    p = [np.zeros(8, np.float32), np.zeros(8)]
    opt = fastopt.SGD(p, lr=0.0, skip_nonfinite=True)
    g = [np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny / 4,
                   0.0, -0.0, 1.0, -1.0, 1e-45], np.float32),
         np.array([np.finfo(np.float64).max, -np.finfo(np.float64).max, 5e-324, 0, -0.0, 1, -1, 2.0])]
    assert opt.step(g) is True and not opt.found_inf
