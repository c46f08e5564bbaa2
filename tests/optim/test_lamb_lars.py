"""fastopt.LAMB and fastopt.LARS (bitsandbytes' 32-bit LAMB and LARS, declared in
fastopt/algorithms/lamb.py and lars.py, run by the trust-ratio driver) against the independent
NumPy reference tests/_support/trust_ratio.py, and what the driver adds: bit-identical steps for
any thread count, arguments refused before anything is written, state dicts.
(tests/torch/test_lamb_lars_bnb.py compares both front ends with bitsandbytes itself.)"""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import assert_close, fingerprint, random_arrays
from trust_ratio import lamb_step, lars_step

# A vector, matrices, a 3-D param, a single element, and one of several work items (65536 each)
SHAPES = [(7,), (33, 5), (4, 3, 6), (1,), (70_001,)]
DTYPES = [np.float32, np.float64]

LAMB_CONFIGS = [
    dict(),                                                     # the defaults: max_unorm 1
    dict(lr=1e-2, weight_decay=0.1),                            # decay after the update
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, max_unorm=0.05, weight_decay=0.01),  # clip active
    dict(lr=1e-3, max_unorm=1e4),                               # clip never active
    dict(lr=1e-2, max_unorm=0.0, weight_decay=0.2),             # no trust ratio: one pass
    dict(lr=1e-2, maximize=True, weight_decay=0.05),
]
LARS_CONFIGS = [
    dict(lr=0.1, momentum=0.9),                                 # max_unorm 0.02: clip active
    dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
    dict(lr=1e-3, momentum=0.5, max_unorm=1e4),                 # clip never active
    dict(lr=0.05, momentum=0.9, max_unorm=0.0, weight_decay=0.1),   # no trust ratio: one pass
    dict(lr=0.1, momentum=0.99, maximize=True, max_unorm=0.5),
]


def _ids(configs):
    return [",".join(f"{k}={v}" for k, v in c.items()) or "defaults" for c in configs]


def _trajectory(name, cfg, dtype, steps, seed=0, shapes=SHAPES):
    """(fastopt's params, the reference's params, states) after ``steps`` steps of the same
    gradients, and the trust ratios the reference took (per step, per param)."""
    rng = np.random.default_rng(seed)
    params = random_arrays(rng, shapes, [dtype] * len(shapes))
    ref_params = [p.copy() for p in params]
    opt = getattr(fastopt, name)(params, **cfg)
    ref_step = lamb_step if name == "LAMB" else lars_step
    states = [{} for _ in params]
    scales = []
    for _ in range(steps):
        grads = random_arrays(rng, shapes, [dtype] * len(shapes))
        scales.append([ref_step(p, g, s, **cfg) for p, g, s in zip(ref_params, grads, states)])
        opt.step(grads)
    return opt, params, ref_params, states, scales


def _check(opt, params, ref_params, states, what):
    for i, (p, q) in enumerate(zip(params, ref_params)):
        assert_close(p, q, rtol=1e-6 if p.dtype == np.float32 else 1e-10, what=f"{what} param {i}")
        for key, value in states[i].items():
            if key == "step":
                assert opt.state[i]["step"] == value
            else:
                assert_close(opt.state[i][key], value, rtol=1e-6 if p.dtype == np.float32 else 1e-10,
                             what=f"{what} {key} {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("steps", [1, 25])
@pytest.mark.parametrize("cfg", LAMB_CONFIGS, ids=_ids(LAMB_CONFIGS))
def test_lamb_follows_the_reference(cfg, steps, dtype):
    _check(*_trajectory("LAMB", cfg, dtype, steps)[:4], f"LAMB {cfg} step {steps}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("steps", [1, 25])
@pytest.mark.parametrize("cfg", LARS_CONFIGS, ids=_ids(LARS_CONFIGS))
def test_lars_follows_the_reference(cfg, steps, dtype):
    _check(*_trajectory("LARS", cfg, dtype, steps)[:4], f"LARS {cfg} step {steps}")


@pytest.mark.parametrize("name, clipped, unclipped", [
    ("LAMB", LAMB_CONFIGS[2], LAMB_CONFIGS[3]), ("LARS", LARS_CONFIGS[0], LARS_CONFIGS[2])])
def test_the_configurations_take_the_trust_ratio_both_ways(name, clipped, unclipped):
    """The configurations above do exercise the ratio: below 1 on every step of one, 1 on every
    step of the other (so the parity tests cover the clip and its absence)."""
    scales = np.array(_trajectory(name, clipped, np.float32, 5)[4])
    assert np.all(scales < 0.999), scales
    scales = np.array(_trajectory(name, unclipped, np.float32, 5)[4])
    assert np.all(scales == 1.0), scales


def test_lamb_weight_decay_comes_after_the_update():
    """bitsandbytes' CUDA kernel: p <- (p + step) (1 - lr wd); its CPU path decays first. fastopt
    follows the CUDA kernel: its step matches the decay-after reference to the float32 rounding,
    and the decay-first one only to about lr^2 wd times the update."""
    cfg = dict(lr=0.1, weight_decay=0.5, max_unorm=0.0)
    p = np.full(64, 1.0, np.float32)
    g = np.linspace(-1, 1, 64).astype(np.float32)
    after, first = p.copy(), p.copy()
    lamb_step(after, g, {}, **cfg)
    lamb_step(first, g, {}, **cfg, decay_first=True)
    fastopt.LAMB([p], **cfg).step([g])
    np.testing.assert_array_equal(p, after)
    assert np.abs(after - first).max() > 1e-3       # lr^2 wd |u| = 0.005 |u|


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
@pytest.mark.parametrize("name, cfg", [("LAMB", dict(weight_decay=0.1, max_unorm=0.05)),
                                       ("LAMB", dict(max_unorm=0.0)),
                                       ("LARS", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                       ("LARS", dict(lr=0.1, momentum=0.9, max_unorm=0.0))])
def test_bit_identical_for_any_thread_count(name, cfg, thread_settings):
    """Params of several work items and of one: the norms' partial sums are combined in an order
    that depends on the shapes alone, so 1, 2 and 3 threads give the same bits."""
    shapes = [(150_001,), (300, 700), (5,), (64, 64)]
    dtypes = [np.float32, np.float64, np.float32, np.float32]
    kernels.set_parallel_min_size(0)
    results = []
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        rng = np.random.default_rng(1)
        params = random_arrays(rng, shapes, dtypes)
        opt = getattr(fastopt, name)(params, **cfg)
        for _ in range(3):
            opt.step(random_arrays(rng, shapes, dtypes))
        results.append(fingerprint(opt, params))
    assert results[0] == results[1] == results[2]


def test_a_param_without_gradient_is_left_alone_and_the_others_are_not_affected():
    rng = np.random.default_rng(3)
    params = random_arrays(rng, [(40,), (9, 9)], [np.float32] * 2)
    alone = [params[1].copy()]
    before = params[0].copy()
    opt = fastopt.LAMB(params, max_unorm=0.1)
    ref = fastopt.LAMB(alone, max_unorm=0.1)
    for _ in range(3):
        g = random_arrays(rng, [(9, 9)], [np.float32])[0]
        opt.step([None, g])
        ref.step([g])
    np.testing.assert_array_equal(params[0], before)
    np.testing.assert_array_equal(params[1], alone[0])


@pytest.mark.parametrize("name, cfg", [("LAMB", {}), ("LARS", dict(lr=0.1, momentum=0.9))])
def test_empty_params_are_counted_and_left_alone(name, cfg):
    params = [np.zeros((0, 4), np.float32), np.ones(5, np.float32)]
    ref = [np.ones(5, np.float32)]
    opt = getattr(fastopt, name)(params, **cfg)
    state = {}
    for _ in range(2):
        g = np.full(5, 0.5, np.float32)
        opt.step([np.zeros((0, 4), np.float32), g])
        (lamb_step if name == "LAMB" else lars_step)(ref[0], g, state, **cfg)
    assert opt.state[0]["step"] == 2
    assert_close(params[1], ref[0])


# -- arguments -----------------------------------------------------------------------------------

LAMB_REFUSED = [("bias_correction", False), ("amsgrad", True), ("adam_w_mode", False),
                ("max_unorm", -0.5), ("eps", -1.0), ("weight_decay", -0.1), ("betas", (0.9, 1.0))]
LARS_REFUSED = [("momentum", 0.0), ("momentum", -0.9), ("dampening", 0.1), ("nesterov", True),
                ("max_unorm", -0.02), ("weight_decay", -1.0), ("lr", -0.1)]


@pytest.mark.parametrize("name, key, value",
                         [("LAMB", k, v) for k, v in LAMB_REFUSED] + [("LARS", k, v) for k, v in LARS_REFUSED])
def test_refused_arguments_name_themselves_before_anything_is_written(name, key, value):
    base = {} if name == "LAMB" else dict(lr=0.1, momentum=0.9)
    params = [np.ones(6, np.float32)]
    with pytest.raises(ValueError, match=key):
        getattr(fastopt, name)(params, **dict(base, **{key: value}))
    # the same value put into a param group of a working optimizer: refused at the step, with
    # the params and the state untouched
    opt = getattr(fastopt, name)(params, **base)
    grads = [np.full(6, 0.25, np.float32)]
    opt.step(grads)
    before = fingerprint(opt, params)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=key):
        opt.step(grads)
    assert fingerprint(opt, params)[:-1] == before[:-1]     # (the last entry: the groups' values)


def test_the_accepted_values_may_be_numpy_scalars():
    """The one value an ignored argument takes, as a NumPy scalar too (a value read from an array
    or a saved config), not only as a Python bool or float."""
    p = [np.ones(3, np.float32)]
    fastopt.LAMB(p, bias_correction=np.bool_(True), amsgrad=np.bool_(False), adam_w_mode=np.True_)
    fastopt.LARS(p, lr=0.1, momentum=0.9, dampening=np.float64(0), nesterov=np.False_)
    fastopt.LARS(p, lr=0.1, momentum=0.9, dampening=0)
    with pytest.raises(ValueError, match="nesterov"):
        fastopt.LARS(p, lr=0.1, momentum=0.9, nesterov=np.True_)
    with pytest.raises(ValueError, match="dampening"):
        fastopt.LARS(p, lr=0.1, momentum=0.9, dampening=np.float32(0.5))


def test_lars_requires_lr_and_momentum_as_bitsandbytes():
    """No default lr (torch.optim's old ``required``): the constructor or every group gives one;
    the default momentum=0 is refused, as bitsandbytes refuses it."""
    with pytest.raises(TypeError, match="lr is required"):
        fastopt.LARS([np.ones(3, np.float32)], momentum=0.9)
    with pytest.raises(TypeError, match="lr is required"):
        fastopt.LARS([{"params": [np.ones(3, np.float32)], "lr": 0.1},
                      {"params": [np.ones(2, np.float32)]}], momentum=0.9)
    p, q = np.ones(3, np.float32), np.ones(3, np.float32)
    fastopt.LARS([{"params": [p], "lr": 0.1}], momentum=0.9).step([np.ones(3, np.float32)])
    fastopt.LARS([q], 0.1, 0.9).step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="momentum"):
        fastopt.LARS([np.ones(3, np.float32)], lr=0.1)      # the default momentum=0
    assert "lr : float\n" in fastopt.LARS.__doc__            # (no default in the docs)


@pytest.mark.parametrize("name, cfg", [("LAMB", {}), ("LARS", dict(lr=0.1, momentum=0.9))])
def test_half_precision_params_are_refused(name, cfg):
    with pytest.raises(TypeError, match="float32 and float64"):
        getattr(fastopt, name)([np.ones(3, np.float16)], **cfg)


@pytest.mark.parametrize("name, cfg, states", [
    ("LAMB", dict(weight_decay=0.1, max_unorm=0.1), ["exp_avg", "exp_avg_sq"]),
    ("LARS", dict(lr=0.1, momentum=0.9, weight_decay=0.01), ["momentum_buffer"])])
def test_state_dict_round_trip_continues_bit_identically(name, cfg, states):
    rng = np.random.default_rng(5)
    shapes = [(12, 7), (30,)]
    params = random_arrays(rng, shapes, [np.float32] * 2)
    opt = getattr(fastopt, name)(params, **cfg)
    for _ in range(3):
        opt.step(random_arrays(rng, shapes, [np.float32] * 2))
    saved = opt.state_dict()
    assert sorted(saved["state"][0]) == sorted(["step"] + states)
    assert saved["state"][0]["step"] == 3
    copies = [p.copy() for p in params]
    resumed = getattr(fastopt, name)(copies, **cfg)
    resumed.load_state_dict(saved)
    for _ in range(3):
        grads = random_arrays(rng, shapes, [np.float32] * 2)
        opt.step(grads)
        resumed.step(grads)
    assert fingerprint(opt, params) == fingerprint(resumed, copies)
