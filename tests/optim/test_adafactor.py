"""What Adafactor's driver adds beyond the generic tests (reference.CONFIGS covers the reference,
torch parity, state dicts and bad input for it as for every algorithm): its work items, its u cache,
its factored state and what torch cannot do (empty params)."""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import RefOptimizer, assert_close, fingerprint, random_arrays


def _run(params, steps=4, seed=0, **cfg):
    rng = np.random.default_rng(seed)
    opt = fastopt.Adafactor(params, **cfg)
    for _ in range(steps):
        opt.step(random_arrays(rng, [p.shape for p in params], [p.dtype for p in params]))
    return opt


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
def test_bit_identical_for_any_thread_count_with_many_items(thread_settings):
    """Matrices of several work items (65536 elements each: the column sums are combined over
    items) and a vector of several items: the same bits for 1, 2 and 3 threads."""
    shapes = [(700, 300), (3, 40, 2000), (150_001,), (5, 5)]
    dtypes = [np.float32, np.float64, np.float32, np.float64]
    kernels.set_parallel_min_size(0)
    results = []
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        params = random_arrays(np.random.default_rng(1), shapes, dtypes)
        opt = _run(params, weight_decay=0.1)
        results.append(fingerprint(opt, params))
    assert results[0] == results[1] == results[2]


def test_u_kept_between_passes_or_recomputed_gives_the_same_bits():
    """A bucket of at most 2**22 elements keeps u from pass B for pass C; a bigger one recomputes
    it. A small param's trajectory is the same either way."""
    rng = np.random.default_rng(2)
    small = random_arrays(rng, [(64, 33), (17,)], [np.float32] * 2)
    alone = [p.copy() for p in small]
    with_big = [p.copy() for p in small] + [np.zeros(1 << 22, np.float32)]   # > 2**22 in all
    a = fastopt.Adafactor(alone, weight_decay=0.1)
    b = fastopt.Adafactor(with_big, weight_decay=0.1)
    for _ in range(3):
        grads = random_arrays(rng, [p.shape for p in small], [np.float32] * 2)
        a.step(grads)
        b.step(grads + [None])
    for p, q in zip(alone, with_big):
        assert p.tobytes() == q.tobytes()


@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0), (2, 0, 5)])
def test_empty_params_are_counted_and_left_alone(shape):
    """torch raises ZeroDivisionError (it divides by the param's size); fastopt counts the step,
    keeps the (empty or zero) statistics, and updates the other params as the reference does."""
    p = [np.zeros(shape, np.float32), np.ones((3, 2), np.float32)]
    ref = RefOptimizer("Adafactor", [x.copy() for x in p])
    opt = fastopt.Adafactor(p)
    for _ in range(2):
        grads = [np.ones(shape, np.float32), np.full((3, 2), 0.5, np.float32)]
        opt.step(grads)
        ref.step(grads)
    assert opt.state[0]["step"] == 2
    for key, value in opt.state[0].items():
        if key != "step":
            assert not np.any(value), key
    assert_close(p[1], ref.params[1])


def test_machine_epsilon_follows_each_params_dtype():
    """eps=(None, ...) floors the estimate at the param's dtype's machine epsilon squared: a
    gradient of zeros then gives u = 0 for both dtypes, and tiny gradients show the two floors."""
    for dtype, eps in ((np.float32, np.finfo(np.float32).eps), (np.float64, np.finfo(np.float64).eps)):
        p = [np.ones(4, dtype)]
        opt = fastopt.Adafactor(p, lr=1e-2, beta2_decay=-1.0)     # step 1: v = g^2 exactly
        g = np.full(4, eps / 4, dtype)                             # below eps: u = g / eps
        opt.step([g])
        ref = RefOptimizer("Adafactor", [np.ones(4, dtype)], lr=1e-2, beta2_decay=-1.0)
        ref.step([g])
        np.testing.assert_array_equal(p[0], ref.params[0])


def test_factored_state_shapes_and_checks():
    p = [np.ones((2, 3, 4)), np.ones(5)]
    opt = _run(p, steps=1)
    assert opt.state[0]["row_var"].shape == (2, 3, 1)
    assert opt.state[0]["col_var"].shape == (2, 1, 4)
    assert set(opt.state[0]) == {"step", "row_var", "col_var"}
    assert set(opt.state[1]) == {"step", "variance"}
    sd = opt.state_dict()
    sd["state"][0]["variance"] = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"\[0\]\['variance'\]: a param of shape \(2, 3, 4\) has no"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["state"][0]["col_var"] = np.zeros((2, 3, 1))
    with pytest.raises(ValueError, match=r"\['col_var'\] has shape \(2, 3, 1\); .* must have shape \(2, 1, 4\)"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    del sd["state"][0]["row_var"]
    with pytest.raises(ValueError, match=r"\[0\] has no 'row_var'"):
        opt.load_state_dict(sd)


def test_checkpoint_file_round_trip(tmp_path):
    p = [np.ones((4, 3), np.float32), np.ones(3)]
    opt = _run(p, steps=2)
    fastopt.save(opt, tmp_path / "af.npz")
    q = [x.copy() for x in p]
    other = fastopt.Adafactor(q)
    fastopt.load(other, tmp_path / "af.npz")
    assert fingerprint(other, q) == fingerprint(opt, p)


@pytest.mark.torch
def test_torch_checkpoints_load_both_ways():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    start = [torch.randn(5, 4), torch.randn(4)]
    ours_p = [torch.nn.Parameter(t.clone()) for t in start]
    theirs_p = [torch.nn.Parameter(t.clone()) for t in start]
    ours, theirs = ft.Adafactor(ours_p, weight_decay=0.1), torch.optim.Adafactor(theirs_p, weight_decay=0.1)
    for _ in range(3):
        for group in (ours_p, theirs_p):
            for p in group:
                p.grad = torch.ones_like(p) * 0.3
        ours.step()
        theirs.step()
    into_torch = torch.optim.Adafactor([torch.nn.Parameter(t.clone()) for t in start])
    into_torch.load_state_dict(ours.state_dict())
    into_ours = ft.Adafactor([torch.nn.Parameter(t.clone()) for t in start])
    into_ours.load_state_dict(theirs.state_dict())
    for loaded, source in ((into_torch, ours), (into_ours, theirs)):
        for a, b in zip(loaded.state.values(), source.state.values()):
            assert set(a) == set(b)
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
