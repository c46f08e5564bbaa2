"""bfloat16/float16 params against torch itself: torch.optim's fused CPU kernels on the same
half-precision params, and fastopt.torch on torch.bfloat16/float16 tensors (zero-copy, with master
weights, bfloat16 moments and stochastic rounding, state_dict round trips).

torch's fused CPU step computes in float32 and rounds each stored value once, as fastopt's default
mode does; the two differ only in float32 operation order, so a value may land one half-precision
spacing away where the float32 results straddle a rounding boundary. (SGD is compared with torch's
for-loop step instead: torch 2.13's fused CPU SGD with momentum on bfloat16/float16 params gets the
momentum buffer wrong -- after two steps 0.09 where 0.9 g1 + g2 = -0.435 -- on arrays long enough
for its vector path, and its for-loop step rounds the buffer twice per step, whose errors grow over
steps. torch 2.13's fused CPU Adagrad on half params agrees with its float32 step rounded once on
arrays too short for its vector path, but its vector path rounds intermediate values to the param's
dtype: after one step from the same values, params a dozen bfloat16 spacings apart. The SGD and
Adagrad reference is torch's float32 step on the upcast half values,
rounded once per stored value after each step: the semantics of torch's fused kernels.)
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = {"bf16": (torch.bfloat16, np.dtype(ml_dtypes.bfloat16)), "f16": (torch.float16, np.dtype(np.float16))}
SHAPES = [(3,), (17, 5), (1001,), (1,)]
#: torch.optim classes with a fused CPU step, and configurations of each; the torch step each is
#: compared with
FUSED = {
    "Adam": [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1, amsgrad=True), dict(lr=3e-3, maximize=True)],
    "AdamW": [dict(lr=1e-2, weight_decay=0.1)],
    "SGD": [dict(lr=1e-2, momentum=0.9), dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01)],
    "Adagrad": [dict(lr=1e-1, lr_decay=0.01)],
}
REFERENCE = {"Adam": dict(fused=True), "AdamW": dict(fused=True)}
CASES = [(name, i) for name, configs in FUSED.items() for i in range(len(configs))]
STEPS = 6


def _ordered(t):
    """A half-precision tensor's bits as integers ordered as the values (so that the difference of
    two is their distance in representable values)."""
    bits = t.contiguous().view(torch.int16).int()
    magnitude = bits & 0x7FFF
    return torch.where(bits < 0, -magnitude, magnitude)


def _ulps(a, b, torch_dtype):
    """The largest distance between two half-precision tensors, in representable values."""
    assert a.dtype == b.dtype == torch_dtype
    return (_ordered(a) - _ordered(b)).abs().max().item()


def _data(torch_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(torch_dtype) for s in SHAPES]
    grads = [[(torch.randn(s, generator=g) * 0.1).to(torch_dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def _run_torch(cls, params, grads, **cfg):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = cls(ps, **cfg)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g.clone()
        opt.step()
    return ps, opt


def _step_together(opt_a, params_a, opt_b, params_b, grads):
    """Step two optimizers over twin params with the same gradients (copies for each)."""
    for step in grads:
        for pa, pb, g in zip(params_a, params_b, step):
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()


def _run_torch_rounded_once(cls, params, grads, **cfg):
    """torch's float32 step on half params and states: every step starts from the stored half
    values upcast to float32 and stores each result rounded once to the half dtype."""
    half = params[0].dtype
    ps = [torch.nn.Parameter(p.float()) for p in params]
    opt = cls(ps, foreach=False, **cfg)
    stored = [p.clone() for p in params]
    for step in grads:
        for p, value, g in zip(ps, stored, step):
            p.data.copy_(value.float())
            p.grad = g.float()
            for key, buffer in opt.state[p].items():
                if key != "step":
                    buffer.copy_(buffer.to(half).float())
        opt.step()
        stored = [p.detach().to(half) for p in ps]
    return [torch.nn.Parameter(p) for p in stored], opt


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name,index", CASES)
def test_fastopt_torch_matches_torch_fused_on_half_params(name, index, dtype):
    torch_dtype, _ = DTYPES[dtype]
    cfg = FUSED[name][index]
    params, grads = _data(torch_dtype, seed=index + 10 * len(name))
    if name in REFERENCE:
        expected, ref = _run_torch(getattr(torch.optim, name), params, grads, **REFERENCE[name], **cfg)
    else:
        expected, ref = _run_torch_rounded_once(getattr(torch.optim, name), params, grads, **cfg)
    got, opt = _run_torch(getattr(ft, name), params, grads, **cfg)
    for e, x in zip(expected, got):
        assert x.dtype == torch_dtype
        assert _ulps(e.detach(), x.detach(), torch_dtype) <= 1
        # nearly all elements are the same bits
        assert (e.detach().view(torch.int16) == x.detach().view(torch.int16)).float().mean() >= 0.95
    # the states are kept in the param's dtype, as torch keeps them
    for p_ref, p in zip(ref.param_groups[0]["params"], opt.param_groups[0]["params"]):
        for key, value in ref.state[p_ref].items():
            if key != "step":
                assert opt.state[p][key].dtype == (value.dtype if name in REFERENCE else torch_dtype), key


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_numpy_api_matches_torch_fused_on_half_params(dtype):
    torch_dtype, np_dtype = DTYPES[dtype]
    params, grads = _data(torch_dtype, seed=5)
    expected, _ = _run_torch(torch.optim.Adam, params, grads, fused=True, lr=1e-2, weight_decay=0.01)
    arrays = [p.view(torch.int16).numpy().copy().view(np_dtype) for p in params]
    opt = fastopt.Adam(arrays, lr=1e-2, weight_decay=0.01)
    for step in grads:
        opt.step([g.view(torch.int16).numpy().view(np_dtype) for g in step])
    for e, a in zip(expected, arrays):
        got = torch.from_numpy(a.view(np.int16)).view(torch_dtype)
        assert _ulps(e.detach(), got, torch_dtype) <= 1


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_master_weights_in_fastopt_torch_follow_float32_torch(dtype):
    """With master_weights the float32 master follows torch's float32 Adam on the same values,
    and the half param is the master rounded to nearest."""
    torch_dtype, _ = DTYPES[dtype]
    params, grads = _data(torch_dtype, seed=3)
    ref, _ = _run_torch(torch.optim.Adam, [p.float() for p in params],
                        [[g.float() for g in step] for step in grads], lr=1e-2, foreach=False)
    got, opt = _run_torch(ft.Adam, params, grads, lr=1e-2, master_weights=True)
    for r, p in zip(ref, got):
        master = opt.state[p]["master"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, r.detach(), rtol=2e-6, atol=1e-7)
        assert torch.equal(p.detach(), master.to(torch_dtype))


def test_fastopt_torch_state_dict_round_trip_with_master_bf16_moments_and_seed():
    params, grads = _data(torch.bfloat16, seed=8)
    a, opt = _run_torch(ft.Adam, params, grads[:3], lr=1e-2, master_weights=True,
                        state_dtype="bfloat16")
    sd = opt.state_dict()
    first = sd["state"][0]
    assert first["master"].dtype == torch.float32 and first["exp_avg"].dtype == torch.bfloat16
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    other = ft.Adam(b, lr=1e-2, master_weights=True, state_dtype="bfloat16")
    other.load_state_dict(sd)
    _step_together(opt, a, other, b, grads[3:])
    for pa, pb in zip(a, b):
        assert torch.equal(pa.view(torch.int16), pb.view(torch.int16))

    # stochastic rounding: the seed travels in the state dict, so a resumed run rounds the same
    c, sr = _run_torch(ft.Adam, params, grads[:3], lr=1e-3, stochastic_rounding=True, seed=11)
    sd = sr.state_dict()
    assert sd["stochastic_rounding_seed"] == 11
    d = [torch.nn.Parameter(p.detach().clone()) for p in c]
    resumed = ft.Adam(d, lr=1e-3, stochastic_rounding=True)        # another seed, replaced
    resumed.load_state_dict(sd)
    _step_together(sr, c, resumed, d, grads[3:])
    for pc, pd in zip(c, d):
        assert torch.equal(pc.view(torch.int16), pd.view(torch.int16))


def test_torch_adam_loads_a_fastopt_half_precision_checkpoint():
    """The default mode's state is torch's: torch.optim.Adam(fused=True) resumes from it."""
    params, grads = _data(torch.bfloat16, seed=9)
    a, opt = _run_torch(ft.Adam, params, grads[:3], lr=1e-2)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    theirs = torch.optim.Adam(b, lr=1e-2, fused=True)
    theirs.load_state_dict(opt.state_dict())
    # torch's load_state_dict takes every group option from the checkpoint, `fused` included
    theirs.param_groups[0]["fused"] = True
    _step_together(opt, a, theirs, b, grads[3:])
    for pa, pb in zip(a, b):
        assert _ulps(pa.detach(), pb.detach(), torch.bfloat16) <= 1
