"""8-bit optimizer states (``optim_bits=8``; the bitsandbytes classes ``fastopt.AdamW8bit``, ...):
the compiled format against the exact NumPy emulation of bitsandbytes' blockwise format
(tests/_support/blockwise8.py), whole steps against an exact emulation of the update, thread-count
invariance, skipped non-finite steps, checkpoints and bad input."""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels

import blockwise8  # tests/_support (pytest's pythonpath)

MAPS = [pytest.param("signed", id="signed"), pytest.param("unsigned", id="unsigned")]


def state_like_values(kind, n=40_000, seed=0):
    """Values as optimizer states hold them: many decades, exact zeros, an all-zero block, a block
    whose values are all equal, a short last block."""
    rng = np.random.default_rng(seed)
    v = (rng.standard_normal(n) * rng.lognormal(0.0, 4.0, n)).astype(np.float32)
    if kind == "unsigned":
        v = np.abs(v)
    v[::97] = 0.0
    v[512:768] = 0.0
    v[1024:1280] = v[1024]
    v[2048:2304] *= np.float32(1e-30)          # tiny quotients and subnormal products
    return v


@pytest.mark.parametrize("kind", MAPS)
def test_the_compiled_quantizer_gives_the_emulations_codes_and_maxima(kind):
    qmap = blockwise8.dynamic_map(kind == "signed")
    for seed in range(3):
        v = state_like_values(kind, seed=seed)
        codes, absmax = kernels.module.quantize_blockwise(v, kind)
        ref_codes, ref_absmax = blockwise8.quantize(v, qmap, kind == "signed")
        np.testing.assert_array_equal(absmax, ref_absmax)
        np.testing.assert_array_equal(codes, ref_codes)
        back = kernels.module.dequantize_blockwise(codes, absmax, kind)
        np.testing.assert_array_equal(back, blockwise8.dequantize(ref_codes, ref_absmax, qmap))


@pytest.mark.parametrize("kind", MAPS)
def test_every_code_boundary_and_value_of_the_map(kind):
    """The quotients where the code changes (the float32 midpoints of neighbouring codes and the
    floats next to them) and every value of the map, in blocks whose absmax is 1."""
    qmap = blockwise8.dynamic_map(kind == "signed")
    mids = ((qmap[1:] + qmap[:-1]) * np.float32(0.5)).astype(np.float32)
    x = np.concatenate([qmap, mids, np.nextafter(mids, np.float32(2)),
                        np.nextafter(mids, np.float32(-2)), np.float32([0.0, -0.0])])
    x = x[np.abs(x) <= 1]
    if kind == "unsigned":
        x = x[x >= 0]
    blocks = np.ones(((x.size + 254) // 255, 256), np.float32)   # each block's first value: 1
    flat = blocks[:, 1:].reshape(-1)
    flat[:x.size] = x
    blocks[:, 1:] = flat.reshape(blocks.shape[0], 255)
    v = blocks.reshape(-1)
    codes, absmax = kernels.module.quantize_blockwise(v, kind)
    np.testing.assert_array_equal(absmax, 1.0)
    np.testing.assert_array_equal(codes, blockwise8.search_codes(v, qmap, kind == "signed"))


def test_non_finite_values_quantize_as_the_emulation():
    v = state_like_values("signed", n=2048)
    v[3] = np.nan
    v[600] = np.inf
    v[1500] = -np.inf
    codes, absmax = kernels.module.quantize_blockwise(v, "signed")
    ref_codes, ref_absmax = blockwise8.quantize(v, blockwise8.dynamic_map(True), True)
    np.testing.assert_array_equal(absmax, ref_absmax)     # NaN where the block holds one
    np.testing.assert_array_equal(codes, ref_codes)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("n", [4096, 70_001])
def test_adamw8bit_steps_are_the_exact_emulation(n, weight_decay):
    """20 steps of AdamW8bit: params bit for bit, and the codes and maxima of both moments equal
    the emulation's (nearest codes of the emulated float32 moments) for every element."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal(n).astype(np.float32)
    opt = fastopt.AdamW8bit([p], lr=1e-2, weight_decay=weight_decay)
    ref = blockwise8.AdamState8bit(n, lr=1e-2, weight_decay=weight_decay)
    expected = p.copy()
    for _ in range(20):
        g = (rng.standard_normal(n) * rng.lognormal(0, 2, n)).astype(np.float32)
        opt.step([g])
        expected = ref.step(expected, g)
        np.testing.assert_array_equal(p, expected)
    state = opt.state[0]
    np.testing.assert_array_equal(state["exp_avg"], ref.m_codes)
    np.testing.assert_array_equal(state["exp_avg_absmax"], ref.m_absmax)
    np.testing.assert_array_equal(state["exp_avg_sq"], ref.v_codes)
    np.testing.assert_array_equal(state["exp_avg_sq_absmax"], ref.v_absmax)
    assert state["exp_avg"].dtype == np.uint8 and state["exp_avg"].shape == p.shape
    assert state["exp_avg_absmax"].shape == (-(-n // 256),)


def test_optim_bits_8_on_the_torch_named_class_is_the_same_storage():
    """``fastopt.Adam(optim_bits=8)`` keeps its moments in the same format (torch's update rule:
    here without weight decay, where the two rules agree)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal(5000).astype(np.float32)
    b = a.copy()
    one = fastopt.Adam([a], lr=1e-2, optim_bits=8)
    two = fastopt.Adam8bit([b], lr=1e-2)
    for _ in range(5):
        g = rng.standard_normal(5000).astype(np.float32)
        one.step([g])
        two.step([g])
    np.testing.assert_array_equal(a, b)
    for name in ("exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax"):
        np.testing.assert_array_equal(one.state[0][name], two.state[0][name])


ELEMENTWISE_8BIT = ["Adam8bit", "AdamW8bit", "Lion8bit", "SGD8bit", "RMSprop8bit", "Adagrad8bit",
                    "AdEMAMix8bit", "LAMB8bit", "LARS8bit"]


def _kwargs(name):
    return {"SGD8bit": {"lr": 1e-2, "momentum": 0.9},
            "LARS8bit": {"lr": 1e-2, "momentum": 0.9}}.get(name, {})


#: Each class with every option that adds a state or a branch.
FULL = {"Adam8bit": dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
        "AdamW8bit": dict(lr=1e-2, weight_decay=0.1, maximize=True),
        "Lion8bit": dict(lr=1e-3, weight_decay=0.5),
        "SGD8bit": dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01),
        "RMSprop8bit": dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=0.01),
        "Adagrad8bit": dict(lr=5e-2, lr_decay=0.01, initial_accumulator_value=0.1),
        "AdEMAMix8bit": dict(lr=1e-2, t_alpha=4.0, t_beta3=4.0, weight_decay=0.1),
        "LAMB8bit": dict(lr=1e-2, weight_decay=0.1),
        "LARS8bit": dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01)}


@pytest.mark.parametrize("name", ELEMENTWISE_8BIT)
def test_every_8bit_class_is_its_float32_run_with_quantized_states(name):
    """The exact oracle of every class: each 8-bit step is the float32 step (the same class with
    optim_bits=32) from the dequantized states, bit for bit, and its codes and maxima are the
    emulation's quantization of the float32 step's new states."""
    cls = getattr(fastopt, name)
    maps = {s.name: s.code_map for s in cls.algorithm.elementwise_state}
    rng = np.random.default_rng(7)
    n = 9000                                           # two whole blocks... and a short one
    p8 = rng.standard_normal(n).astype(np.float32)
    p32 = p8.copy()
    eight = cls([p8], **FULL[name])
    twin = cls([p32], optim_bits=32, **FULL[name])
    for t in range(6):
        if t:
            entry = {"step": int(eight.state[0]["step"])}
            for state, kind in maps.items():
                if state in eight.state[0]:
                    entry[state] = blockwise8.dequantize(
                        eight.state[0][state], eight.state[0][state + "_absmax"],
                        blockwise8.dynamic_map(kind == "signed"))
            twin.load_state_dict({"state": {0: entry},
                                  "param_groups": twin.state_dict()["param_groups"]})
        g = (rng.standard_normal(n) * rng.lognormal(0, 2, n)).astype(np.float32)
        eight.step([g])
        twin.step([g])
        np.testing.assert_array_equal(p8, p32, err_msg=f"step {t + 1}")
        for state, kind in maps.items():
            if state not in twin.state[0]:
                continue
            codes, absmax = blockwise8.quantize(twin.state[0][state],
                                                blockwise8.dynamic_map(kind == "signed"),
                                                kind == "signed")
            np.testing.assert_array_equal(eight.state[0][state], codes, err_msg=state)
            np.testing.assert_array_equal(eight.state[0][state + "_absmax"], absmax, err_msg=state)


@pytest.mark.parametrize("name", ELEMENTWISE_8BIT)
def test_with_optim_bits_32_the_class_follows_the_rule_of_its_torch_named_parent(name):
    """With float32 states, a bitsandbytes class steps as the fastopt class it varies (Lion8bit as
    Lion, ...); Adam's and AdEMAMix's decay the param after the update, as bitsandbytes' CUDA
    kernels do: ``(p + s u)(1 - lr wd)``, computed as ``p (1 - lr wd) + (s (1 - lr wd)) u``."""
    cls = getattr(fastopt, name)
    parent = {"Adam8bit": "AdamW", "AdamW8bit": "AdamW", "LAMB8bit": "AdamW",
              "LARS8bit": "SGD"}.get(name, name.replace("8bit", ""))
    kwargs = {k: v for k, v in FULL[name].items() if k != "maximize"}
    rng = np.random.default_rng(8)
    a = rng.standard_normal(5000).astype(np.float32)
    b = a.copy()
    ours = cls([a], optim_bits=32, **kwargs)
    decays_after = "decay_after_update" in cls.algorithm.constant_values
    theirs = getattr(fastopt, parent)([b], **dict(kwargs, weight_decay=0.0) if decays_after
                                      else kwargs)
    lr, wd = kwargs.get("lr"), kwargs.get("weight_decay", 0.0)
    for _ in range(3):
        g = rng.standard_normal(5000).astype(np.float32)
        before = b.copy()
        ours.step([g])
        theirs.step([g])
        if decays_after and wd:
            # the parent without decay took the update u = b - before; decay it after
            update = (b - before).astype(np.float64)
            expected = (before.astype(np.float64) + update) * (1 - lr * wd)
            np.testing.assert_allclose(a, expected, rtol=2e-6, atol=1e-7)
            b[...] = a          # continue both from the same param
        else:
            np.testing.assert_array_equal(a, b)
    assert cls.algorithm.constant_values.get("decay_after_update", False) == decays_after


@pytest.mark.parametrize("name", ELEMENTWISE_8BIT)
def test_any_thread_count_gives_the_same_bits(name):
    sizes = (300_001, 5000, 100)        # (a short last block; a param below min_8bit_size)
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(4)]
    results = []
    saved = fastopt.get_num_threads(), kernels.get_parallel_min_size()
    try:
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            kernels.set_parallel_min_size(1)
            params = [p.copy() for p in start]
            opt = getattr(fastopt, name)(params, **_kwargs(name))
            for g in grads:
                opt.step(g)
            results.append((params, opt.state_dict()["state"]))
    finally:
        fastopt.set_num_threads(saved[0])
        kernels.set_parallel_min_size(saved[1])
    (p1, s1), (p2, s2) = results
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)
    for i in s1:
        for key in s1[i]:
            np.testing.assert_array_equal(s1[i][key], s2[i][key])
    assert s1[0][next(k for k in s1[0] if k.endswith("_absmax"))].size == -(-300_001 // 256)
    assert not any(k.endswith("_absmax") for k in s1[2])        # 100 elements: float32 states


@pytest.mark.parametrize("name", ELEMENTWISE_8BIT)
def test_a_non_finite_gradient_leaves_params_codes_and_maxima_untouched(name):
    rng = np.random.default_rng(4)
    p = rng.standard_normal(10_000).astype(np.float32)
    opt = getattr(fastopt, name)([p], skip_nonfinite=True, **_kwargs(name))
    opt.step([rng.standard_normal(10_000).astype(np.float32)])
    before_p, before = p.copy(), opt.state_dict()["state"]
    g = rng.standard_normal(10_000).astype(np.float32)
    g[1234] = np.nan
    opt.step([g])
    assert opt.found_inf
    np.testing.assert_array_equal(p, before_p)
    after = opt.state_dict()["state"]
    for key in before[0]:
        np.testing.assert_array_equal(after[0][key], before[0][key])


@pytest.mark.parametrize("name", ELEMENTWISE_8BIT)
def test_state_dict_round_trip_and_fastopt_save(name, tmp_path):
    rng = np.random.default_rng(5)
    sizes = (9000, 300)
    a = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    b = [x.copy() for x in a]
    one = getattr(fastopt, name)(a, **_kwargs(name))
    two = getattr(fastopt, name)(b, **_kwargs(name))
    for _ in range(3):
        one.step([rng.standard_normal(n).astype(np.float32) for n in sizes])
    fastopt.save(one, tmp_path / "opt.npz")
    fastopt.load(two, tmp_path / "opt.npz")
    for x, y in zip(a, b):
        y[...] = x
    for _ in range(3):
        g = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        one.step(g)
        two.step(g)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_state_memory_is_one_byte_and_an_absmax_per_block():
    p = np.zeros(1 << 20, np.float32)
    opt = fastopt.AdamW8bit([p])
    opt.step([np.ones_like(p)])
    state = opt.state[0]
    total = sum(v.nbytes for k, v in state.items() if k != "step")
    assert total == 2 * (p.size + 4 * p.size // 256)          # 2.03 bytes per param


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_params_with_8bit_states(dtype):
    """Half-precision params keep their dtype; the moments are the 8-bit ones of the float32 run
    on the same (rounded) params: with a master copy, bit for bit the float32 run's states."""
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        half = np.dtype(ml_dtypes.bfloat16)
    else:
        half = np.dtype(np.float16)
    rng = np.random.default_rng(6)
    start = rng.standard_normal(8192).astype(np.float32).astype(half)
    master = start.copy()
    reference = start.astype(np.float32)
    a = fastopt.AdamW8bit([master], lr=1e-2, master_weights=True)
    b = fastopt.AdamW8bit([reference], lr=1e-2)
    plain = start.copy()
    c = fastopt.AdamW8bit([plain], lr=1e-2)
    for _ in range(5):
        g = rng.standard_normal(8192).astype(np.float32)
        a.step([g.astype(half)])
        b.step([g.astype(half).astype(np.float32)])
        c.step([g.astype(half)])
    np.testing.assert_array_equal(a.state[0]["master"], reference)
    np.testing.assert_array_equal(master, reference.astype(half))
    np.testing.assert_array_equal(a.state[0]["exp_avg"], b.state[0]["exp_avg"])
    assert plain.dtype == half and c.state[0]["exp_avg"].dtype == np.uint8
    assert np.max(np.abs(plain.astype(np.float32) - reference)) < 0.05


# -- bad input --------------------------------------------------------------------------------

def test_optim_bits_other_than_8_or_32_is_refused():
    p = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="optim_bits must be 8 or 32"):
        fastopt.AdamW8bit([p], optim_bits=16)
    with pytest.raises(TypeError, match="optim_bits"):
        fastopt.Adam([p], optim_bits="8")
    with pytest.raises(ValueError, match="min_8bit_size"):
        fastopt.Adam([p], optim_bits=8, min_8bit_size=-1)


def test_8bit_states_are_refused_where_they_cannot_be_kept():
    with pytest.raises(TypeError, match="float64"):
        fastopt.AdamW8bit([np.zeros(5000, np.float64)])
    with pytest.raises(ValueError, match="Adafactor keeps no 8-bit states"):
        fastopt.Adafactor([np.zeros((64, 64), np.float32)], optim_bits=8)
    with pytest.raises(ValueError, match="stochastic_rounding.*params has none"):
        fastopt.AdamW8bit([np.zeros(100, np.float32)], stochastic_rounding=True)   # (float32 states)
    with pytest.raises(ValueError, match="float16"):
        fastopt.AdamW8bit([np.zeros(5000, np.float16)], stochastic_rounding=True)
    fastopt.AdamW8bit([np.zeros(100, np.float64)])     # below min_8bit_size: float64 states


def _stepped(n=5000):
    p = np.ones(n, np.float32)
    opt = fastopt.AdamW8bit([p])
    opt.step([np.ones(n, np.float32)])
    return opt


@pytest.mark.parametrize("edit, error, match", [
    (lambda e: e.update(exp_avg_absmax=np.ones(3, np.float32)), ValueError, "20 blocks of 256"),
    (lambda e: e.update(exp_avg=e["exp_avg"].astype(np.float32)), TypeError, "keeps it as uint8"),
    (lambda e: e.pop("exp_avg_sq_absmax"), ValueError, "without 'exp_avg_sq_absmax'"),
    (lambda e: e.update(exp_avg_absmax=np.ones(20, np.float64)), TypeError, "an absmax is float32"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_changes(edit, error, match):
    opt = _stepped()
    before = opt.state_dict()
    bad = opt.state_dict()
    edit(bad["state"][0])
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for key in before["state"][0]:
        np.testing.assert_array_equal(after["state"][0][key], before["state"][0][key])


def test_absmax_for_a_param_that_keeps_float32_states_is_refused():
    p = np.ones(100, np.float32)
    opt = fastopt.AdamW8bit([p])
    opt.step([np.ones(100, np.float32)])
    bad = opt.state_dict()
    bad["state"][0]["exp_avg_absmax"] = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="fewer than min_8bit_size=4096"):
        opt.load_state_dict(bad)


def test_clipping_inside_the_step_is_clipping_then_stepping():
    rng = np.random.default_rng(9)
    sizes = (6000, 300)
    a = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    b = [x.copy() for x in a]
    one = fastopt.AdamW8bit(a, lr=1e-2)
    two = fastopt.AdamW8bit(b, lr=1e-2)
    for _ in range(3):
        g = [rng.standard_normal(n).astype(np.float32) * 10 for n in sizes]
        one.step([x.copy() for x in g], max_norm=1.0)
        clipped = [x.copy() for x in g]
        fastopt.clip_grad_norm_(clipped, 1.0)
        two.step(clipped)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


# -- stochastic rounding of codes --------------------------------------------------------------

def _mix64(x):
    """splitmix64's finalizer (the bucket's), on uint64 arrays or scalars."""
    x = np.uint64(x)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _random_bits(key, index):
    """simd.h's fo_random_bits(key, index) for an array of indices."""
    key, index = np.uint64(key), np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (index.astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (index >> np.uint64(32)).astype(np.uint32) \
            ^ np.uint32(key & np.uint64(0xFFFFFFFF))
        x = x + np.uint32(key >> np.uint64(32))
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x85EBCA6B)
        x ^= x >> np.uint32(13)
        x *= np.uint32(0xC2B2AE35)
        x ^= x >> np.uint32(16)
    return x


def _stochastic_codes(values, kind, key):
    """The emulation of the loops' stochastic rounding of codes (q8.h's fo_q8_store_block_sr)."""
    qmap = blockwise8.dynamic_map(kind == "signed")
    nearest, absmax = blockwise8.quantize(values, qmap, kind == "signed")
    x = (values / np.repeat(absmax, 256)[:values.size]).astype(np.float32)
    at = qmap[nearest]
    other = np.clip(np.where(x > at, nearest.astype(np.int64) + 1,
                             np.where(x < at, nearest.astype(np.int64) - 1, nearest)), 0, 255)
    spacing = qmap[other] - at
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(spacing != 0, (x - at) / spacing, np.float32(0)).astype(np.float32)
    u = (_random_bits(key, np.arange(values.size)) >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
    return np.where(u < p, other, nearest).astype(np.uint8), absmax


def test_stochastic_codes_are_the_emulations():
    """One step from zero states with stochastic_rounding: the codes are the emulation's for the
    random bits keyed by the seed, the param's index, the step and the state (the param's own
    stream is the key itself, each state's the key plus its salt)."""
    seed, n = 1234, 9000
    rng = np.random.default_rng(10)
    p8 = rng.standard_normal(n).astype(np.float32)
    p32 = p8.copy()
    eight = fastopt.AdamW8bit([p8], lr=1e-2, stochastic_rounding=True, seed=seed)
    twin = fastopt.AdamW8bit([p32], lr=1e-2, optim_bits=32)
    g = rng.standard_normal(n).astype(np.float32)
    eight.step([g])
    twin.step([g])
    np.testing.assert_array_equal(p8, p32)
    key = int(_mix64(np.uint64(seed) ^ _mix64(np.uint64(0) * np.uint64(0x9E3779B97F4A7C15)
                                              + np.uint64(1))))
    for j, (state, kind) in enumerate((("exp_avg", "signed"), ("exp_avg_sq", "unsigned"))):
        salt = 0x51ED27 * (j + 1)
        codes, absmax = _stochastic_codes(twin.state[0][state], kind, (key + salt) % 2 ** 64)
        np.testing.assert_array_equal(eight.state[0][state + "_absmax"], absmax)
        np.testing.assert_array_equal(eight.state[0][state], codes)
        nearest, _ = blockwise8.quantize(twin.state[0][state], blockwise8.dynamic_map(kind == "signed"),
                                         kind == "signed")
        assert 0.05 < np.mean(codes != nearest) < 0.45     # (it does round some the other way)


def test_stochastic_codes_are_unbiased_where_nearest_codes_are_not():
    """The mean of a value's dequantized codes over many seeds is the value; the nearest code's
    error is systematic."""
    rng = np.random.default_rng(11)
    block = (rng.standard_normal(256) * 0.3).astype(np.float32)
    block[0] = 1.0                                   # the block's absmax is 1: codes are the values
    qmap = blockwise8.dynamic_map(True)
    means = np.zeros(256)
    seeds = 400
    for seed in range(seeds):
        p = np.zeros(256 * 20, np.float32)           # 20 blocks, the same values, other random bits
        opt = fastopt.SGD8bit([p], lr=1.0, momentum=0.5, stochastic_rounding=True, seed=seed,
                              min_8bit_size=0)
        opt.step([np.tile(block, 20)])               # the momentum buffer is the gradient: block
        buf = opt.state[0]["momentum_buffer"].reshape(20, 256)
        means += qmap[buf].mean(axis=0)
    means /= seeds
    nearest_error = np.abs(qmap[blockwise8.search_codes(block, qmap, True)] - block)
    spread = 0.01 * np.maximum(nearest_error.max(), 1e-3)
    worst = nearest_error.argmax()
    assert abs(means[worst] - block[worst]) < nearest_error[worst] / 4
    assert np.max(np.abs(means - block)) < 0.003 + spread


@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit", "RMSprop8bit"])
def test_stochastic_codes_do_not_depend_on_the_thread_count_and_follow_the_seed(name):
    rng = np.random.default_rng(12)
    start = rng.standard_normal(300_001).astype(np.float32)
    grads = [rng.standard_normal(300_001).astype(np.float32) for _ in range(3)]
    runs = []
    saved = fastopt.get_num_threads(), kernels.get_parallel_min_size()
    try:
        for threads, seed in ((1, 5), (2, 5), (1, 6)):
            fastopt.set_num_threads(threads)
            kernels.set_parallel_min_size(1)
            p = start.copy()
            opt = getattr(fastopt, name)([p], stochastic_rounding=True, seed=seed)
            for g in grads:
                opt.step([g])
            runs.append(opt.state_dict())
    finally:
        fastopt.set_num_threads(saved[0])
        kernels.set_parallel_min_size(saved[1])
    first, same_seed, other_seed = (r["state"][0] for r in runs)
    for key in first:
        np.testing.assert_array_equal(first[key], same_seed[key])
    assert any(not np.array_equal(first[k], other_seed[k]) for k in first if k != "step")
    assert runs[0]["stochastic_rounding_seed"] == 5
