"""Arrays whose bytes are not in the machine's order, and torch gradients shaped unlike their param.

A big-endian NumPy array has the type number of a native one, so a check of the dtype alone lets
its bytes be read as native values (a float32 gradient of 1.0 read as 4.6e-41). Every entry point
that reads array memory refuses such an array with a TypeError naming it, before anything is
written (optimizer steps, clipping, finiteness, params), or converts it by value where it copies
anyway (the minimizers' ``x0`` and ``jac``, as SciPy does; a loaded state).

A torch gradient resized in place (``p.grad.resize_``) or swapped under ``p.grad.data`` keeps its
element count but not its param's shape; torch.optim raises RuntimeError for it, and so does
fastopt.torch, naming the param, with params and state untouched.

The optimizer cases are generated from the algorithm declarations (``fastopt.algorithms``): every
declared algorithm, with params of shapes its declared param rules accept.
"""
import copy
import re

import numpy as np
import pytest

import fastopt
from fastopt.algorithms import ALGORITHMS
from reference import CONFIGS, fingerprint

NAMES = [a.name for a in ALGORITHMS]
BY_NAME = {a.name: a for a in ALGORITHMS}
#: The algorithms that step half-precision params (one with a driver, whose reductions and matrix
#: products run in the param's dtype, steps float32 and float64 params only).
HALF_NAMES = [a.name for a in ALGORITHMS if a.driver is None]

#: Param shapes tried for each algorithm; those its param rules reject are left out. The first,
#: a 2-d non-square shape, must be accepted by every algorithm (Muon takes only matrices): it is
#: the one whose gradient is transposed or flattened.
CANDIDATE_SHAPES = [(4, 5), (6,), (3, 2, 2), ()]
MATRIX = CANDIDATE_SHAPES[0]


def config(name):
    """The fullest of the shared test configurations of ``name`` (momentum, amsgrad, ...: its
    states in use), or its defaults; a bitsandbytes class (``SGD8bit``) takes those of the class
    whose kernel it shares, with the arguments it has (its small params keep float32 states)."""
    if name in CONFIGS:
        return dict(CONFIGS[name][-1])
    kernel = BY_NAME[name].kernel
    parent = next((a.name for a in ALGORITHMS if a.kernel == kernel and a.name in CONFIGS), None)
    if parent is None:
        return {}
    pos, kw = BY_NAME[name].signature()
    return {k: v for k, v in CONFIGS[parent][-1].items() if k in pos + kw}


def make(name, params, **kwargs):
    return getattr(fastopt, name)(params, **config(name), **kwargs)


def shapes_for(name):
    rules = BY_NAME[name].param_rules
    shapes = [s for s in CANDIDATE_SHAPES if all(rule.test(s) for rule in rules)]
    assert shapes and shapes[0] == MATRIX, f"{name} must accept a {MATRIX} param"
    return shapes


def big_endian(a):
    """``a``'s values in a byte-swapped (non-native) array of the same dtype."""
    swapped = a.astype(a.dtype.newbyteorder("S"))
    assert not swapped.dtype.isnative and np.array_equal(swapped, a, equal_nan=True)
    return swapped


def native_params(name, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes_for(name)]


def grads_like(params, seed, dtype=None):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(dtype or p.dtype) for p in params]


# ----------------------------------------------------------------------------------------------
# NumPy front end: gradients and params
# ----------------------------------------------------------------------------------------------

def stepped_optimizer(name, dtype, groups, **kwargs):
    """An optimizer of ``name`` that has taken two steps (so it has state), and its params: in
    one group, or split over two (the step then checks every bucket before writing)."""
    params = native_params(name, dtype)
    if groups == 1:
        spec = params
    else:
        spec = [{"params": params[:1]}, {"params": params[1:]}] if len(params) > 1 \
            else [{"params": params}]
    opt = make(name, spec, **kwargs)
    for seed in (1, 2):
        opt.step(grads_like(params, seed))
    return opt, params


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("mode", ["step", "max_norm", "skip_nonfinite"])
def test_big_endian_grads_refused_before_any_write(name, dtype, groups, mode):
    kwargs = {"skip_nonfinite": True} if mode == "skip_nonfinite" else {}
    opt, params = stepped_optimizer(name, dtype, groups, **kwargs)
    before = fingerprint(opt, params)
    for k in range(len(params)):
        grads = grads_like(params, 3)
        if mode == "skip_nonfinite":
            grads[k][...] = np.nan        # skip_nonfinite must not read the swapped NaN as a number
        grads[k] = big_endian(grads[k])
        with pytest.raises(TypeError, match=rf"grads\[{k}\] has non-native byte order "
                                            rf"\({grads[k].dtype.str}\).*newbyteorder"):
            if mode == "max_norm":
                opt.step(grads, max_norm=1.0)
            else:
                opt.step(grads)
        assert fingerprint(opt, params) == before
    if mode == "skip_nonfinite":       # refused, not counted as a skipped step
        assert opt.skipped_steps == 0 and not opt.found_inf
    # the same gradients in native order are taken
    opt.step(grads_like(params, 3), **({"max_norm": 1.0} if mode == "max_norm" else {}))
    assert fingerprint(opt, params) != before


@pytest.mark.parametrize("name", HALF_NAMES)
def test_big_endian_float32_grad_of_half_param_refused(name):
    params = [p.astype(np.float16) for p in native_params(name, np.float32)]
    opt = make(name, params)
    opt.step(grads_like(params, 1, np.float32))
    before = fingerprint(opt, params)
    grads = grads_like(params, 2, np.float32)
    grads[0] = big_endian(grads[0])
    with pytest.raises(TypeError, match=r"grads\[0\] has non-native byte order"):
        opt.step(grads)
    assert fingerprint(opt, params) == before


@pytest.mark.parametrize("name, dtype", [
    (name, dtype) for name in NAMES
    for dtype in [np.float32, np.float64] + ([np.float16] if name in HALF_NAMES else [])])
def test_big_endian_param_refused_at_construction(name, dtype):
    good = native_params(name, dtype)[0]
    bad = big_endian(good)
    with pytest.raises(TypeError, match=r"params\[1\] has non-native byte order .*newbyteorder"):
        make(name, [good.copy(), bad])
    opt = make(name, [good])
    with pytest.raises(TypeError, match=r"params\[1\] has non-native byte order"):
        opt.add_param_group({"params": [bad]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_big_endian_bfloat16_param_refused_at_construction(name):
    # bfloat16 is told apart by its dtype's name, which a byte-swapped bfloat16 dtype keeps
    ml_dtypes = pytest.importorskip("ml_dtypes")
    good = native_params(name, np.float32)[0].astype(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=r"params\[0\] has non-native byte order"):
        make(name, [big_endian(good)])


# ----------------------------------------------------------------------------------------------
# Clipping and finiteness
# ----------------------------------------------------------------------------------------------

HALF_AND_FULL = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", HALF_AND_FULL)
def test_clip_grad_norm_refuses_big_endian_and_changes_nothing(dtype):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((4, 5)).astype(dtype), rng.standard_normal(7).astype(dtype)]
    grads[1] = big_endian(grads[1])
    before = [g.copy() for g in grads]
    with pytest.raises(TypeError, match=r"grads\[1\] has non-native byte order"):
        fastopt.clip_grad_norm_(grads, 1.0)
    with pytest.raises(TypeError, match=r"grads\[0\] has non-native byte order"):
        fastopt.clip_grad_norm_(grads[1], 0.5, norm_type="inf")
    for g, b in zip(grads, before):
        assert g.tobytes() == b.tobytes() and g.dtype == b.dtype


@pytest.mark.parametrize("dtype", HALF_AND_FULL)
def test_clip_grad_value_refuses_big_endian_and_changes_nothing(dtype):
    g = big_endian(np.linspace(-3, 3, 12).astype(dtype))
    before = g.copy()
    with pytest.raises(TypeError, match=r"grads\[0\] has non-native byte order"):
        fastopt.clip_grad_value_([g], 1.0)
    assert g.tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype", HALF_AND_FULL)
def test_grads_finite_refuses_big_endian(dtype):
    nan = big_endian(np.array([1.0, np.nan], dtype=dtype))
    with pytest.raises(TypeError, match=r"grads\[1\] has non-native byte order"):
        fastopt.grads_finite([np.ones(3, dtype=dtype), nan])
    with pytest.raises(TypeError, match=r"grads\[0\] has non-native byte order"):
        fastopt.grads_finite(big_endian(np.ones(3, dtype=dtype)))


# ----------------------------------------------------------------------------------------------
# Minimizers: x0 and the objective's gradient are converted by value (as SciPy converts them)
# ----------------------------------------------------------------------------------------------

_A = np.diag(np.arange(1.0, 7.0)) + 0.1
_B = np.linspace(-1.0, 1.0, 6)


def quadratic(x):
    x64 = x.astype(np.float64)
    g = _A @ x64 - _B
    return 0.5 * x64 @ _A @ x64 - _B @ x64, g.astype(x.dtype)


def quadratic_big_endian_gradient(x):
    f, g = quadratic(x)
    return f, big_endian(g)


def assert_same_result(ours, reference):
    assert ours.x.dtype == reference.x.dtype
    assert np.array_equal(ours.x, reference.x)
    assert ours.fun == reference.fun
    assert np.array_equal(ours.jac, reference.jac)
    assert (ours.nit, ours.nfev, ours.status) == (reference.nit, reference.nfev, reference.status)


@pytest.mark.parametrize("options", [{}, {"bounds": [(-0.5, 0.5)] * 6}, {"l1": 0.05}],
                         ids=["lbfgs", "lbfgsb", "owlqn"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_minimize_lbfgs_big_endian_x0_and_gradient(options, dtype):
    x0 = np.full(6, 0.3, dtype=dtype)
    reference = fastopt.minimize_lbfgs(quadratic, x0, **options)
    assert reference.nit > 2
    # big-endian start point, native gradient; native start point, big-endian gradient; both
    for fun, start in [(quadratic, big_endian(x0)), (quadratic_big_endian_gradient, x0),
                       (quadratic_big_endian_gradient, big_endian(x0))]:
        assert_same_result(fastopt.minimize_lbfgs(fun, start, **options), reference)
    # a separate jac callable returning a big-endian array
    separate = fastopt.minimize_lbfgs(lambda x: quadratic(x)[0], x0, **options,
                                      jac=lambda x: big_endian(quadratic(x)[1]))
    assert_same_result(separate, reference)


def test_second_order_minimizers_big_endian_x0_and_gradient():
    hess = lambda x: _A  # noqa: E731
    for dtype in (np.float64, np.float32):
        x0 = np.full(6, 0.3, dtype=dtype)
        reference = fastopt.minimize_bfgs(quadratic, x0)
        assert reference.x.dtype == dtype
        assert_same_result(fastopt.minimize_bfgs(quadratic_big_endian_gradient, big_endian(x0)),
                           reference)
    x0 = np.full(6, 0.3)
    reference = fastopt.newton(quadratic, x0, jac=True, hess=hess)
    assert_same_result(fastopt.newton(quadratic_big_endian_gradient, big_endian(x0), jac=True,
                                      hess=lambda x: big_endian(_A)), reference)


# ----------------------------------------------------------------------------------------------
# load_state_dict: a byte-swapped saved state is converted by value
# ----------------------------------------------------------------------------------------------

def swapped_state_dict(state_dict):
    """``state_dict`` with every state array byte-swapped (as saved on a big-endian machine)."""
    out = copy.deepcopy(state_dict)
    for entry in out["state"].values():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                entry[key] = big_endian(value)
    return out


def assert_loads_big_endian_state(stepped):
    """An optimizer loading the byte-swapped state of another holds the same state (native) and
    steps exactly as one loading the native state."""
    source, params = stepped()
    saved = source.state_dict()
    swapped = swapped_state_dict(saved)
    assert any(not v.dtype.isnative for e in swapped["state"].values() for v in e.values()
               if isinstance(v, np.ndarray))
    from_native, native_params_ = stepped()
    from_native.load_state_dict(saved)
    from_swapped, swapped_params = stepped()
    from_swapped.load_state_dict(swapped)
    loaded = from_swapped.state_dict()
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                got = loaded["state"][index][key]
                assert got.dtype.isnative and got.dtype == value.dtype, (index, key)
                assert got.tobytes() == value.tobytes(), (index, key)
    assert fingerprint(from_swapped, swapped_params) == fingerprint(from_native, native_params_)
    grad_dtype = np.float32 if params[0].dtype.itemsize == 2 else None
    from_native.step(grads_like(native_params_, 9, grad_dtype))
    from_swapped.step(grads_like(swapped_params, 9, grad_dtype))
    assert fingerprint(from_swapped, swapped_params) == fingerprint(from_native, native_params_)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_state_dict_big_endian_state(name, dtype):
    def stepped():
        params = native_params(name, dtype)
        opt = make(name, params)
        for seed in (1, 2):
            opt.step(grads_like(params, seed))
        return opt, params
    assert_loads_big_endian_state(stepped)


@pytest.mark.parametrize("name", HALF_NAMES)
def test_load_state_dict_big_endian_master_weights(name):
    def stepped():
        params = [p.astype(np.float16) for p in native_params(name, np.float32)]
        opt = make(name, params, master_weights=True)
        for seed in (1, 2):
            opt.step(grads_like(params, seed, np.float32))
        return opt, params
    assert_loads_big_endian_state(stepped)


# ----------------------------------------------------------------------------------------------
# fastopt.torch: a gradient whose shape differs from its param's (same element count)
# ----------------------------------------------------------------------------------------------

SHAPE_CHANGES = ["resize_transposed", "resize_1d", "grad.data_transposed"]


def change_grad_shape(p, how, torch):
    """Give ``p.grad`` another shape with ``p``'s element count, in place."""
    if how == "resize_transposed":
        p.grad.resize_(*reversed(p.shape))
    elif how == "resize_1d":
        p.grad.resize_(p.numel())
    else:
        p.grad.data = torch.randn(*reversed(p.shape), dtype=p.dtype)
    assert p.grad.numel() == p.numel() and p.grad.shape != p.shape


def torch_state(opt, torch):
    """Every state value of ``opt`` (tensors cloned) by param index and name."""
    out = {}
    for index, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            # (bitsandbytes' classes keep their quantization tensors in a nested dict)
            for sub, item in (value.items() if isinstance(value, dict) else [(None, value)]):
                out[index, key, sub] = item.clone() if isinstance(item, torch.Tensor) else item
    return out


def assert_same_state(a, b, torch):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.torch
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", SHAPE_CHANGES)
@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_torch_grad_shape_change_refused(name, how, max_norm):
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes_for(name)]
    opt = getattr(ft, name)(params, **config(name))
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    values = [p.detach().clone() for p in params]
    state = torch_state(opt, torch)
    change_grad_shape(params[0], how, torch)
    expected = f".grad of param 0 (shape {MATRIX}) has shape {tuple(params[0].grad.shape)}, " \
               f"but its param has shape {MATRIX}"
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        opt.step(max_norm=max_norm)
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    assert_same_state(torch_state(opt, torch), state, torch)
    # with the shape restored the step goes through
    params[0].grad = torch.randn_like(params[0])
    opt.step(max_norm=max_norm)
    assert not torch.equal(params[0].detach(), values[0])


@pytest.mark.torch
@pytest.mark.parametrize("how", SHAPE_CHANGES)
def test_torch_optim_raises_runtime_error_too(how):
    # the error type fastopt.torch mirrors
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    for cls in (torch.optim.Adam, ft.Adam):
        p = torch.nn.Parameter(torch.randn(*MATRIX))
        opt = cls([p], lr=0.1)
        p.grad = torch.randn_like(p)
        change_grad_shape(p, how, torch)
        with pytest.raises(RuntimeError):
            opt.step()
