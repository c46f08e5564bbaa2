"""fastopt's optimizers against the NumPy references (tests/_support/reference.py), plus state handling,
threads and skip_nonfinite."""
import copy
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt
from _strategies import accepts_shape, param_groups, param_shapes, require_reference
from fastopt._backend import kernels
from fastopt.algorithms import ALGORITHMS, BY_NAME
from reference import (ALL_CONFIGS, CONFIGS, REDUCING, RefOptimizer, assert_close, config_id,
                       make_fastopt, random_arrays)

NAMES = list(CONFIGS)
DTYPES = [np.float32, np.float64]
SHAPES = [(3, 5), (7,), (), (0,), (1,), (2, 0, 3), (2, 3, 4)]


def run_pair(name, cfg, shapes, dtypes, steps=20, seed=0, none_every=None):
    """Step fastopt and the reference side by side; compare params and state after every step."""
    rng = np.random.default_rng(seed)
    params = random_arrays(rng, shapes, dtypes)
    ref = RefOptimizer(name, [p.copy() for p in params], **cfg)
    opt = make_fastopt(name, params, **cfg)
    for step in range(steps):
        grads = random_arrays(rng, shapes, dtypes)
        if none_every:
            grads = [None if (step + i) % none_every == 0 else g for i, g in enumerate(grads)]
        assert opt.step(grads) is True
        ref.step(grads)
        for i, (p, q) in enumerate(zip(params, ref.params)):
            assert_close(p, q, what=f"param {i} after step {step + 1}")
    for i, ref_state in enumerate(ref.state):
        got = opt.state.get(i, {})
        for key, value in ref_state.items():
            if key == "step":
                assert got["step"] == value
            else:
                assert_close(got[key], value, what=f"state[{i}][{key!r}]")
        assert set(got) == set(ref_state), (i, set(got), set(ref_state))
    return opt, ref


#: The algorithms with a NumPy reference step here: every one but bitsandbytes' classes (AdamW8bit,
#: ...), whose exact oracle is the float32 run with quantized states (tests/optim/test_eight_bit.py)
#: and whose parity with bitsandbytes is tests/torch/test_bnb_eight_bit.py's.
TORCH_RULE_NAMES = [a.name for a in ALGORITHMS if a.bitsandbytes_states is None]


@pytest.mark.parametrize("name", TORCH_RULE_NAMES)
def test_every_algorithm_has_a_reference_and_configurations(name):
    """Each declared algorithm has a reference step, and, if it takes params of every shape the
    tests here use, configurations (one per option) in reference.CONFIGS for them."""
    require_reference(name)
    if all(accepts_shape(BY_NAME[name], shape) for shape in SHAPES) and name not in CONFIGS:
        pytest.fail(f"tests/_support/reference.py has no CONFIGS for {name}: add one configuration per "
                    "option", pytrace=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name_cfg", ALL_CONFIGS, ids=config_id)
def test_matches_reference(name_cfg, dtype):
    name, cfg = name_cfg
    run_pair(name, cfg, SHAPES, [dtype] * len(SHAPES))


@pytest.mark.parametrize("name_cfg", ALL_CONFIGS, ids=config_id)
def test_matches_reference_mixed_dtypes_and_none_grads(name_cfg):
    name, cfg = name_cfg
    shapes = [(4, 3), (5,), (), (6,)]
    run_pair(name, cfg, shapes, [np.float32, np.float64, np.float64, np.float32], steps=12, none_every=3)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_and_lr_change(name):
    rng = np.random.default_rng(1)
    cfg_a, cfg_b = CONFIGS[name][1], CONFIGS[name][-1]
    a = random_arrays(rng, [(5,), (2, 2)], [np.float64, np.float32])
    b = random_arrays(rng, [(3,)], [np.float32])
    groups = [dict(params=a, **cfg_a), dict(params=b, **cfg_b)]
    ref = RefOptimizer(name, [dict(g, params=[p.copy() for p in g["params"]]) for g in groups])
    opt = make_fastopt(name, groups)
    params = a + b
    for step in range(15):
        if step == 5:
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.5 * cfg_a["lr"]
        if step == 9:
            opt.param_groups[1]["lr"] = ref.param_groups[1]["lr"] = 0.0
        grads = random_arrays(rng, [p.shape for p in params], [p.dtype for p in params])
        opt.step(grads)
        ref.step(grads)
        for i, (p, q) in enumerate(zip(params, ref.params)):
            assert_close(p, q, what=f"param {i}, step {step + 1}")


# ----------------------------------------------------------------------------------------------
# Hypothesis: shapes, dtypes, hyperparameters
# ----------------------------------------------------------------------------------------------

dtype_st = st.sampled_from([np.float32, np.float64])


@pytest.mark.parametrize("name", TORCH_RULE_NAMES)
@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_matches_reference(name, data):
    """Every declared algorithm, with hyperparameters from its declared constraints."""
    require_reference(name)
    algorithm = BY_NAME[name]
    n = data.draw(st.integers(1, 4), label="n_params")
    shape_st = param_shapes(algorithm, max_rank=3, max_side=4)
    shapes = [data.draw(shape_st, label=f"shape{i}") for i in range(n)]
    dtypes = [data.draw(dtype_st, label=f"dtype{i}") for i in range(n)]
    cfg = data.draw(param_groups(algorithm), label="hyper")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    run_pair(name, cfg, shapes, dtypes, steps=5, seed=seed)


# ----------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------

def _make_problem(name, cfg, seed=3):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (5,), (), (0,)]
    dtypes = [np.float32, np.float64, np.float64, np.float32]
    params = random_arrays(rng, shapes, dtypes)
    grads = [random_arrays(rng, shapes, dtypes) for _ in range(12)]
    for k in range(0, 12, 4):           # some steps leave a param without a grad
        grads[k][1] = None
    groups = [dict(params=params[:2], **cfg), dict(params=params[2:], **dict(cfg, lr=cfg["lr"] * 0.5))]
    return params, groups, grads


def _assert_state_equal(s1, s2):
    assert set(s1) == set(s2)
    for k in s1:
        assert set(s1[k]) == set(s2[k]), k
        for key in s1[k]:
            a, b = s1[k][key], s2[k][key]
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)
            else:
                assert a == b


@pytest.mark.parametrize("name_cfg", [(n, CONFIGS[n][-1]) for n in NAMES] + [("SGD", CONFIGS["SGD"][0])],
                         ids=config_id)
def test_state_dict_round_trip_and_resume(name_cfg):
    name, cfg = name_cfg
    params, groups, grads = _make_problem(name, cfg)
    start = [p.copy() for p in params]
    full = make_fastopt(name, groups)
    for g in grads:
        full.step(g)
    final = [p.copy() for p in params]

    for p, s in zip(params, start):
        p[...] = s
    first = make_fastopt(name, groups)
    for g in grads[:6]:
        first.step(g)
    sd = first.state_dict()
    sd_copy = copy.deepcopy(sd)
    # Bit-identical round trip into a fresh optimizer.
    resumed = make_fastopt(name, groups)
    resumed.load_state_dict(sd)
    _assert_state_equal(resumed.state_dict()["state"], sd_copy["state"])
    assert resumed.state_dict()["param_groups"] == sd_copy["param_groups"]
    # The saved copy does not alias the optimizer's memory.
    for g in grads[6:]:
        resumed.step(g)
    _assert_state_equal(sd["state"], sd_copy["state"])
    for p, f in zip(params, final):
        np.testing.assert_array_equal(p, f)
    _assert_state_equal(resumed.state_dict()["state"], full.state_dict()["state"])


def test_load_state_dict_restores_lr_and_rechecks():
    p = np.zeros(3)
    opt = fastopt.SGD([p], lr=0.1)
    sd = opt.state_dict()
    opt.param_groups[0]["lr"] = 0.7
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1
    opt.step([np.ones(3)])
    np.testing.assert_array_equal(p, -0.1 * np.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_state_views_are_live(name):
    cfg = CONFIGS[name][-1]
    p = np.linspace(-1, 1, 6).reshape(2, 3)
    opt = make_fastopt(name, [p], **cfg)
    opt.step([np.full((2, 3), 0.5)])
    st0 = opt.state[0]
    arrays = {k: v for k, v in st0.items() if isinstance(v, np.ndarray)}
    assert arrays, st0
    # NAdam's mu_product: a float32 scalar, as torch keeps it; Adafactor's row_var: (2, 1)
    declared = {s.name: s for s in opt.algorithm.state}
    for k, v in arrays.items():
        assert v.shape == declared[k].shape_for(p.shape), k
        assert v.dtype == (np.float32 if declared[k].shape == "scalar" else p.dtype), k
    before = {k: v.copy() for k, v in arrays.items()}
    opt.step([np.full((2, 3), -0.25)])
    # A view taken before the step sees the step's update.
    changed = [k for k in arrays if not np.array_equal(arrays[k], before[k])]
    assert changed
    for k in changed:
        np.testing.assert_array_equal(arrays[k], opt.state[0][k])


def test_state_keys_and_steps():
    p = np.zeros(4)
    q = np.zeros(2, dtype=np.float32)
    opt = fastopt.Adam([p, q], amsgrad=True)
    assert opt.state == {}
    opt.step([np.ones(4), None])
    assert list(opt.state) == [0]
    assert opt.state[0]["step"] == 1
    assert set(opt.state[0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    opt.step([np.ones(4), np.ones(2, dtype=np.float32)])
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1
    sgd = fastopt.SGD([np.zeros(3)], lr=0.1)
    sgd.step([np.ones(3)])
    assert sgd.state == {}     # no momentum: no state, as torch
    sgdm = fastopt.SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    sgdm.step([np.ones(3)])
    assert set(sgdm.state[0]) == {"momentum_buffer"}
    rms = fastopt.RMSprop([np.zeros(3)], momentum=0.5, centered=True)
    rms.step([np.ones(3)])
    assert set(rms.state[0]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}


def test_adagrad_state_from_construction():
    p = np.zeros((2, 2), dtype=np.float32)
    q = np.zeros(3)
    opt = fastopt.Adagrad([p], initial_accumulator_value=0.5)
    assert opt.state[0]["step"] == 0
    np.testing.assert_array_equal(opt.state[0]["sum"], np.full((2, 2), 0.5, dtype=np.float32))
    assert opt.state[0]["sum"].dtype == np.float32
    opt2 = fastopt.Adagrad([{"params": [p]}, {"params": [q], "initial_accumulator_value": 0.25}])
    np.testing.assert_array_equal(opt2.state[0]["sum"], np.zeros((2, 2), dtype=np.float32))
    np.testing.assert_array_equal(opt2.state[1]["sum"], np.full(3, 0.25))
    assert opt2.state_dict()["state"][1]["step"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_edge_shapes(name):
    cfg = CONFIGS[name][-1]
    for shape in [(0,), (1,), (), (0, 3), (2, 1, 3)]:
        for dtype in DTYPES:
            run_pair(name, cfg, [shape], [dtype], steps=4)


def test_single_array_grad_accepted():
    p = np.zeros(3)
    opt = fastopt.SGD([p], lr=0.5)
    opt.step(np.ones(3))
    np.testing.assert_array_equal(p, np.full(3, -0.5))


@pytest.mark.parametrize("name", NAMES)
def test_torch_numpy_params_updated_zero_copy(name):
    torch = pytest.importorskip("torch")
    cfg = CONFIGS[name][-1]
    t32 = torch.linspace(-1, 1, 12, dtype=torch.float32).reshape(3, 4)
    t64 = torch.arange(5, dtype=torch.float64)
    before = [t32.clone().numpy(), t64.clone().numpy()]
    ref = RefOptimizer(name, [b.copy() for b in before], **cfg)
    opt = make_fastopt(name, [t32.numpy(), t64.numpy()], **cfg)
    for _ in range(3):
        grads = [np.full((3, 4), 0.3, dtype=np.float32), np.linspace(0, 1, 5)]
        opt.step(grads)
        ref.step(grads)
    assert not np.array_equal(t32.numpy(), before[0])
    assert_close(t32.numpy(), ref.params[0])
    assert_close(t64.numpy(), ref.params[1])
    # Gradients may be tensors' numpy views as well.
    g = torch.ones(5, dtype=torch.float64)
    opt2 = fastopt.SGD([t64.numpy()], lr=1.0)
    old = t64.clone()
    opt2.step([g.numpy()])
    assert torch.equal(t64, old - 1)


# ----------------------------------------------------------------------------------------------
# Threads: bit-identical for any thread count
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def restore_threads():
    n0 = kernels.get_num_threads()
    m0 = kernels.get_parallel_min_size()
    yield
    fastopt.set_num_threads(0)
    kernels.set_parallel_min_size(m0)
    assert kernels.get_num_threads() == n0


def _run_threads(name, cfg, shapes, dtypes, threads, steps=3):
    fastopt.set_num_threads(threads)
    assert fastopt.get_num_threads() == threads
    rng = np.random.default_rng(7)
    params = random_arrays(rng, shapes, dtypes)
    opt = make_fastopt(name, params, **cfg)
    for _ in range(steps):
        opt.step(random_arrays(rng, shapes, dtypes))
    return params, opt.state_dict()["state"]


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
@pytest.mark.parametrize("name_cfg", [(n, CONFIGS[n][-1]) for n in NAMES], ids=config_id)
def test_threads_bit_identical_large(name_cfg, restore_threads):
    name, cfg = name_cfg
    shapes = [(150_001,), (37, 1001), (3,), (70_003,)]
    dtypes = [np.float32, np.float32, np.float64, np.float64]
    assert sum(math.prod(s) for s in shapes[:2]) >= 2 * kernels.get_parallel_min_size()
    p1, s1 = _run_threads(name, cfg, shapes, dtypes, 1)
    p2, s2 = _run_threads(name, cfg, shapes, dtypes, 2)
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)
    _assert_state_equal(s1, s2)


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
@pytest.mark.parametrize("name_cfg", [(n, CONFIGS[n][-1]) for n in NAMES], ids=config_id)
def test_threads_forced_parallel_small(name_cfg, restore_threads):
    name, cfg = name_cfg
    kernels.set_parallel_min_size(0)
    shapes = [(33,), (5, 7), (), (0,), (17,)]
    dtypes = [np.float32, np.float64, np.float32, np.float64, np.float32]
    p1, _ = _run_threads(name, cfg, shapes, dtypes, 1, steps=5)
    p2, s2 = _run_threads(name, cfg, shapes, dtypes, 2, steps=5)
    p3, _ = _run_threads(name, cfg, shapes, dtypes, 3, steps=5)
    for a, b, c in zip(p1, p2, p3):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # and still equal to the reference
    rng = np.random.default_rng(7)
    params = random_arrays(rng, shapes, dtypes)
    ref = RefOptimizer(name, params, **cfg)
    for _ in range(5):
        ref.step(random_arrays(rng, shapes, dtypes))
    for a, b in zip(p2, ref.params):
        assert_close(a, b)


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
def test_clip_threads_bit_identical(norm_type, restore_threads):
    rng = np.random.default_rng(11)
    shapes = [(120_001,), (300, 301), (7,)]
    dtypes = [np.float32, np.float64, np.float32]
    base = random_arrays(rng, shapes, dtypes)
    results = []
    for threads in (1, 2):
        fastopt.set_num_threads(threads)
        assert fastopt.get_num_threads() == threads
        grads = [g.copy() for g in base]
        total = fastopt.clip_grad_norm_(grads, 1.0, norm_type)
        results.append((total, grads))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][1][0], base[0])   # it did clip


# ----------------------------------------------------------------------------------------------
# skip_nonfinite
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name_cfg", [(n, CONFIGS[n][-1]) for n in NAMES], ids=config_id)
def test_skip_nonfinite(name_cfg, bad):
    name, cfg = name_cfg
    rng = np.random.default_rng(5)
    shapes = [(4,), (2, 3)]
    dtypes = [np.float64, np.float32]
    params = random_arrays(rng, shapes, dtypes)
    ref = RefOptimizer(name, [p.copy() for p in params], **cfg)
    opt = make_fastopt(name, params, skip_nonfinite=True, **cfg)
    assert opt.skipped_steps == 0 and opt.found_inf is False
    good = random_arrays(rng, shapes, dtypes)
    assert opt.step(good) is True
    ref.step(good)
    snap_p = [p.copy() for p in params]
    snap_s = opt.state_dict()["state"]
    badg = random_arrays(rng, shapes, dtypes)
    badg[1][1, 2] = bad
    assert opt.step(badg) is False
    assert opt.found_inf is True and opt.skipped_steps == 1
    for p, s in zip(params, snap_p):
        np.testing.assert_array_equal(p, s)
    _assert_state_equal(opt.state_dict()["state"], snap_s)
    # A None grad next to a bad one: still skipped.
    assert opt.step([None, badg[1]]) is False
    assert opt.skipped_steps == 2
    good2 = random_arrays(rng, shapes, dtypes)
    assert opt.step(good2) is True
    assert opt.found_inf is False and opt.skipped_steps == 2
    ref.step(good2)
    for p, q in zip(params, ref.params):
        assert_close(p, q)


def test_nonfinite_propagates_by_default():
    p = np.zeros(3)
    opt = fastopt.SGD([p], lr=0.1)
    assert opt.step([np.array([1.0, np.nan, np.inf])]) is True
    assert p[0] == -0.1 and np.isnan(p[1]) and p[2] == -np.inf
    assert fastopt.grads_finite([np.ones(3), np.zeros(0)]) is True
    assert fastopt.grads_finite([np.ones(3), np.array([np.inf], dtype=np.float32)]) is False


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name_cfg", ALL_CONFIGS, ids=config_id)
def test_bit_identical_to_reference(name_cfg, dtype):
    """setup.py promises results bit-identical to a NumPy reference doing torch's operations in the
    param's dtype (-ffp-contract=off); hold the kernels to it (elementwise algorithms: those that
    reduce sum in their own order, see reference.REDUCING)."""
    name, cfg = name_cfg
    if name in REDUCING:
        pytest.skip("sums in its own order: compared to a few ulp by test_matches_reference")
    rng = np.random.default_rng(2)
    shapes = [(64,), (3, 3)]
    params = random_arrays(rng, shapes, [dtype] * 2)
    ref = RefOptimizer(name, [p.copy() for p in params], **cfg)
    opt = make_fastopt(name, params, **cfg)
    for step in range(10):
        grads = random_arrays(rng, shapes, [dtype] * 2)
        opt.step(grads)
        ref.step(grads)
        for p, q in zip(params, ref.params):
            np.testing.assert_array_equal(p, q, err_msg=f"step {step + 1}")


def test_grads_as_tuple_or_generator():
    results = []
    for wrap in (list, tuple, iter):
        p = [np.ones(3), np.ones(2, dtype=np.float32)]
        opt = fastopt.Adam(p, lr=0.1)
        for _ in range(2):
            opt.step(wrap([np.full(3, 0.5), np.full(2, -0.5, dtype=np.float32)]))
        results.append(p)
    for p in results[1:]:
        for a, b in zip(results[0], p):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_later(name):
    cfg = CONFIGS[name][-1]
    rng = np.random.default_rng(9)
    a = random_arrays(rng, [(4,)], [np.float64])
    b = random_arrays(rng, [(3,)], [np.float32])
    ref = RefOptimizer(name, [dict(params=[a[0].copy()], **cfg), dict(params=[b[0].copy()], **cfg)])
    opt = make_fastopt(name, a, **cfg)
    g0 = random_arrays(rng, [(4,)], [np.float64])
    opt.step(g0)
    ref.step(g0 + [None])
    opt.add_param_group({"params": b})
    for _ in range(3):
        g = random_arrays(rng, [(4,), (3,)], [np.float64, np.float32])
        opt.step(g)
        ref.step(g)
    for p, q in zip(a + b, ref.params):
        assert_close(p, q)


def test_thread_settings_bad_values():
    with pytest.raises(ValueError, match="num_threads"):
        fastopt.set_num_threads(-1)
    with pytest.raises(ValueError, match="parallel_min_size"):
        kernels.set_parallel_min_size(-2)     # -1 is the default: decide by measurement


def test_buffer_protocol_params_updated_in_place():
    import array
    a = array.array("d", [1.0, 2.0, 3.0])
    m = memoryview(bytearray(12)).cast("f")
    opt = fastopt.SGD([a, m], lr=0.5)
    opt.step([np.ones(3), np.full(3, 2.0, dtype=np.float32)])
    assert list(a) == [0.5, 1.5, 2.5]
    assert m.tolist() == [-1.0, -1.0, -1.0]


@pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")
@pytest.mark.parametrize("pos", [0, 17, 4095, 100_000, 199_999])
def test_finiteness_check_threads(pos, restore_threads):
    g = [np.ones(150_000, dtype=np.float32), np.ones(50_000)]
    where = (0, pos) if pos < 150_000 else (1, pos - 150_000)
    for threads in (1, 2):
        fastopt.set_num_threads(threads)
        assert fastopt.grads_finite(g) is True
        g[where[0]][where[1]] = np.nan
        assert fastopt.grads_finite(g) is False
        p = [np.zeros(150_000, dtype=np.float32), np.zeros(50_000)]
        opt = fastopt.Adam(p, skip_nonfinite=True)
        assert opt.step(g) is False and opt.skipped_steps == 1
        assert not p[0].any() and not p[1].any() and opt.state == {}
        g[where[0]][where[1]] = 1.0
