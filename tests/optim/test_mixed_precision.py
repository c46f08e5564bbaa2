"""bfloat16/float16 params: torch's fused-kernel semantics, float32 master copies, bfloat16 states,
stochastic rounding.

The references are the float32 NumPy references of tests/_support/reference.py run on float32 copies of
every value (loading bfloat16/float16 into float32 is exact), with each stored value rounded once to
its storage dtype (nearest, ties to even): that is the definition of each mode, so the comparisons
are bit for bit.
"""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels
from reference import CONFIGS, STEP_FUNCTIONS, make_fastopt

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = [BF16, F16]
# Algorithms with a compiled driver (Adafactor: reductions in the param's dtype) take float32 and
# float64 params only: test_driver_algorithms_refuse_half_precision.
NAMES = [n for n in CONFIGS if getattr(fastopt, n).algorithm.driver is None]


def _scalar_states(name):
    """Names of the algorithm's scalar states: float32 whatever the param's dtype, as torch."""
    return {s.name for s in getattr(fastopt, name).algorithm.scalar_state}
SHAPES = [(3,), (17, 5), (1001,), (1,)]   # odd lengths: vector bodies and their tails


def _cfg(name):
    return dict(CONFIGS[name][-1])


def _reference_run(name, cfg, params, grads_per_step, store, master=False):
    """The float32 reference, each stored value rounded by ``store`` (a dtype for params and
    states); with ``master`` the params are float32 masters and only their copies are rounded."""
    fn = STEP_FUNCTIONS[name]
    hyper = dict(cfg)
    hyper.setdefault("maximize", False)
    defaults = dict(__import__("reference").DEFAULTS[name])
    defaults.update(hyper)
    if name in ("Adam", "AdamW"):
        defaults["decoupled_weight_decay"] = name == "AdamW"
    work = [p.astype(np.float32) for p in params]
    states = [dict() for _ in params]
    if name == "Adagrad":   # its accumulator exists from the start, stored like any state
        for p, st in zip(work, states):
            __import__("reference").adagrad_init(p, st, defaults["initial_accumulator_value"])
            if not master or store != np.float32:
                st["sum"] = st["sum"].astype(store).astype(np.float32)
    out = []
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(work, grads)):
            fn(p, np.asarray(g).astype(np.float32), states[i], **defaults)
            if not master:
                p[...] = p.astype(store).astype(np.float32)
            for key, value in states[i].items():
                if isinstance(value, np.ndarray) and value.shape == p.shape \
                        and key not in _scalar_states(name):
                    states[i][key] = value.astype(store).astype(np.float32)
        out.append([p.astype(store) for p in work] if not master else [p.copy() for p in work])
    return out[-1], states


def _grads(rng, dtype, steps, scale=1.0):
    return [[(rng.standard_normal(s) * scale).astype(dtype) for s in SHAPES] for _ in range(steps)]


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", NAMES)
def test_default_mode_is_float32_math_rounded_once(name, dtype):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = _grads(rng, dtype, 4)
    cfg = _cfg(name)
    if dtype == F16 and name in ("Adagrad", "RMSprop"):
        cfg["eps"] = max(cfg.get("eps", 1e-8), 1e-3)   # float16's smallest normal is 6e-5
    expected, _ = _reference_run(name, cfg, params, grads, dtype)
    opt = make_fastopt(name, params, **cfg)
    for g in grads:
        opt.step(g)
    for p, e in zip(params, expected):
        assert p.dtype == dtype
        np.testing.assert_array_equal(p.view(np.uint16), e.view(np.uint16))
    for entry in opt.state.values():
        for key, value in entry.items():
            if isinstance(value, np.ndarray) and key not in _scalar_states(name):
                assert value.dtype == dtype, key     # states in the param's dtype, as torch keeps them


@pytest.mark.parametrize("grad_dtype", ["same", "f32"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("name", NAMES)
def test_master_weights_follow_a_float32_run_bit_for_bit(name, dtype, grad_dtype):
    rng = np.random.default_rng(1)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = _grads(rng, dtype if grad_dtype == "same" else np.float32, 5)
    cfg = _cfg(name)
    half = [p.copy() for p in start]
    f32 = [p.astype(np.float32) for p in start]
    opt = make_fastopt(name, half, master_weights=True, **cfg)
    ref = make_fastopt(name, f32, **cfg)
    for g in grads:
        opt.step(g)
        ref.step([x.astype(np.float32) for x in g])
        for i, (p, q) in enumerate(zip(half, f32)):
            master = opt.state[i]["master"]
            assert master.tobytes() == q.tobytes()                 # the float32 trajectory
            assert p.view(np.uint16).tobytes() == q.astype(dtype).view(np.uint16).tobytes()
    for i in range(len(start)):
        for key, value in ref.state[i].items():
            if key != "step":
                assert np.asarray(opt.state[i][key]).tobytes() == np.asarray(value).tobytes(), key


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Lion", "NAdam"])
def test_bfloat16_moments_with_master_weights(name):
    rng = np.random.default_rng(2)
    start = [rng.standard_normal(s).astype(BF16) for s in SHAPES]
    grads = _grads(rng, BF16, 4)
    cfg = _cfg(name)
    params = [p.copy() for p in start]
    opt = make_fastopt(name, params, master_weights=True, state_dtype="bfloat16", **cfg)
    for g in grads:
        opt.step(g)
    masters, states = _reference_run(name, cfg, start, grads, BF16, master=True)
    for i, (p, m) in enumerate(zip(params, masters)):
        assert opt.state[i]["master"].tobytes() == m.tobytes()
        assert p.view(np.uint16).tobytes() == m.astype(BF16).view(np.uint16).tobytes()
        for key, value in opt.state[i].items():
            if isinstance(value, np.ndarray) and value.shape == p.shape and key != "master":
                assert value.dtype == BF16, key
                assert value.view(np.uint16).tobytes() == states[i][key].astype(BF16).view(np.uint16).tobytes()


def test_stochastic_rounding_is_reproducible_for_any_thread_count_and_unbiased():
    before = kernels.get_parallel_min_size()
    runs = {}
    try:
        for threads, seed in ((1, 7), (2, 7), (2, 8)):
            fastopt.set_num_threads(threads)
            kernels.set_parallel_min_size(0)
            p = np.ones(100_003, dtype=BF16)
            opt = fastopt.SGD([p], lr=1e-3, stochastic_rounding=True, seed=seed)
            g = np.ones_like(p)
            for _ in range(100):
                opt.step([g])
            runs[(threads, seed)] = p.copy()
    finally:
        fastopt.set_num_threads(0)
        kernels.set_parallel_min_size(before)
    assert runs[(1, 7)].tobytes() == runs[(2, 7)].tobytes()
    assert runs[(2, 7)].tobytes() != runs[(2, 8)].tobytes()
    # 100 steps of -1e-3 from 1.0: round to nearest never leaves 1.0 (bfloat16's spacing below 1 is
    # 2**-8); stochastic rounding reaches 0.9 on average
    mean = runs[(2, 7)].astype(np.float64).mean()
    assert abs(mean - 0.9) < 0.002
    nearest = np.ones(5, dtype=BF16)
    opt = fastopt.SGD([nearest], lr=1e-3)
    for _ in range(100):
        opt.step([np.ones_like(nearest)])
    assert np.all(nearest.astype(np.float32) == 1.0)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
def test_thread_count_and_unaligned_starts_change_no_bit(dtype):
    before = kernels.get_parallel_min_size()
    results = []
    try:
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            kernels.set_parallel_min_size(0)
            rng = np.random.default_rng(3)
            base = rng.standard_normal(200_003).astype(dtype)
            params = [base[1:100_002], base[100_002:]]     # odd offsets: unaligned starts
            opt = fastopt.Adam(params, lr=1e-2, weight_decay=0.1, master_weights=True)
            for _ in range(3):
                opt.step([rng.standard_normal(p.shape).astype(np.float32) for p in params],
                         max_norm=5.0)
            results.append(base.view(np.uint16).tobytes() + opt.state[0]["master"].tobytes())
    finally:
        fastopt.set_num_threads(0)
        kernels.set_parallel_min_size(before)
    assert results[0] == results[1]


def test_clip_and_finiteness_of_half_precision_gradients():
    g = [np.full(10, 3.0, dtype=BF16), np.full(6, 4.0, dtype=F16)]
    norm = fastopt.clip_grad_norm_(g, 1.0)
    assert norm == pytest.approx(np.sqrt(10 * 9 + 6 * 16))
    assert np.all(g[0].astype(np.float32) == np.float32(3.0 * (1.0 / (norm + 1e-6))).astype(BF16).astype(np.float32))
    assert fastopt.grads_finite(g)
    g[1][2] = np.inf
    assert not fastopt.grads_finite(g)
    p = [np.zeros(10, dtype=BF16)]
    opt = fastopt.Adam(p, skip_nonfinite=True)
    bad = np.ones(10, dtype=BF16)
    bad[3] = np.nan
    assert opt.step([bad]) is False and opt.skipped_steps == 1 and not p[0].astype(np.float32).any()


def test_state_dict_round_trip_with_master_and_bfloat16_states():
    rng = np.random.default_rng(4)
    start = [rng.standard_normal(s).astype(BF16) for s in SHAPES]
    a = [p.copy() for p in start]
    opt = fastopt.Adam(a, lr=1e-2, master_weights=True, state_dtype="bfloat16")
    for g in _grads(rng, BF16, 3):
        opt.step(g)
    sd = opt.state_dict()
    assert sd["state"][0]["master"].dtype == np.float32
    assert sd["state"][0]["exp_avg"].dtype == BF16
    b = [p.copy() for p in a]
    other = fastopt.Adam(b, lr=1e-2, master_weights=True, state_dtype="bfloat16")
    other.load_state_dict(sd)
    more = _grads(rng, BF16, 2)
    for g in more:
        opt.step(g)
        other.step(g)
    for x, y in zip(a, b):
        assert x.view(np.uint16).tobytes() == y.view(np.uint16).tobytes()
    wrong = opt.state_dict()
    wrong["state"][0]["exp_avg"] = wrong["state"][0]["exp_avg"].astype(np.float32)
    with pytest.raises(TypeError, match="exp_avg.*dtype"):
        other.load_state_dict(wrong)


def test_bad_precision_options():
    p = [np.zeros(3, dtype=BF16)]
    with pytest.raises(ValueError, match="state_dtype"):
        fastopt.Adam(p, state_dtype="bfloat16")              # needs master_weights
    with pytest.raises(ValueError, match="state_dtype"):
        fastopt.Adam(p, master_weights=True, state_dtype="float16")
    with pytest.raises(ValueError, match="stochastic_rounding"):
        fastopt.Adam(p, master_weights=True, stochastic_rounding=True)
    with pytest.raises(TypeError, match="master_weights"):
        fastopt.Adam(p, master_weights=1)
    with pytest.raises(TypeError, match="seed"):
        fastopt.SGD(p, stochastic_rounding=True, seed=1.5)
    opt = fastopt.Adam(p)
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.zeros(3)])                             # float64 for a bfloat16 param
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.zeros(3, dtype=F16)])


@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
def test_driver_algorithms_refuse_half_precision(name, dtype):
    """Adafactor's and Muon's drivers reduce and multiply in the param's dtype: a clear error at
    construction, before anything is kept."""
    with pytest.raises(TypeError, match=rf"{name} supports float32 and float64 params.*params\[1\]"):
        getattr(fastopt, name)([np.zeros((2, 2), np.float32), np.zeros((2, 2), dtype)])
    opt = getattr(fastopt, name)([np.zeros((2, 2), np.float32)])
    with pytest.raises(TypeError, match="float32 and float64"):
        opt.add_param_group({"params": [np.zeros((3, 2), dtype)]})
    assert len(opt.param_groups) == 1
