"""torch's own optimizer test inputs through fastopt.torch.

``torch.testing._internal.common_optimizers.optim_db`` (shipped with torch) lists, per optimizer,
the configurations torch's test suite runs (``optim_inputs_func``) and the bad inputs it expects to
fail (``optim_error_inputs_func``, with the error type). For every algorithm fastopt.torch has:

* every CPU configuration runs for 30 steps on a small model with two param groups (the second with
  its own lr), a frozen param (``requires_grad=False``) and a param that never gets a gradient,
  against ``torch.optim.X(foreach=False)``, and the params and state must agree;
* every error input must raise torch's error type (or warn, where torch warns) with a message
  that torch's regex matches, as torch's own ``test_errors`` checks.

Configurations torch's suite runs with ``differentiable`` or ``capturable`` (not supported: CPU
fused kernels only) and with complex params (float32/float64 only) are skipped and counted.
"""
import inspect
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
common = pytest.importorskip("torch.testing._internal.common_optimizers")

import fastopt.torch as ft  # noqa: E402
from fastopt.algorithms import BY_NAME  # noqa: E402

pytestmark = pytest.mark.torch

STEPS = 30
# the declared algorithms (fastopt.torch.LBFGS runs optim_db's inputs in test_torch_lbfgs.py)
INFOS = {info.optim_cls.__name__: info for info in common.optim_db
         if info.optim_cls.__name__ in BY_NAME}
DTYPES = (torch.float32, torch.float64)
# per element: |fastopt - torch| <= RTOL * (|torch| + max |torch| of that tensor)
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _configs():
    out, skipped = [], {"capturable": 0, "differentiable": 0, "complex": 0}
    for name, info in INFOS.items():
        for dtype in DTYPES:
            for inp in info.optim_inputs_func(device="cpu", dtype=dtype):
                if inp.kwargs.get("capturable"):
                    skipped["capturable"] += 1
                elif inp.kwargs.get("differentiable"):
                    skipped["differentiable"] += 1
                else:
                    out.append((name, dtype, inp))
        if info.supports_complex:
            skipped["complex"] += 1   # torch runs each algorithm once more on complex params
    return out, skipped


CONFIGS, SKIPPED = _configs()
ERRORS = [(name, i, e) for name, info in INFOS.items()
          for i, e in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32))]


def test_every_algorithm_and_configuration_is_covered():
    """The algorithms fastopt.torch shares with optim_db are all here, and only the documented kinds
    of configuration are skipped."""
    shared = set(BY_NAME) & {info.optim_cls.__name__ for info in common.optim_db}
    assert set(INFOS) == shared
    assert {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax"} <= shared
    assert len(CONFIGS) >= 50
    print(f"\noptim_db: {len(CONFIGS)} CPU configurations run; skipped: {SKIPPED}")
    assert SKIPPED["capturable"] == SKIPPED["differentiable"] == 0   # no CPU input asks for them


def _model(dtype, seed=0, matrices_only=False):
    """Params of a small model; ``matrices_only`` (Muon): the same model with 2-D params only."""
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)   # noqa: E731
    if matrices_only:
        w, b, v = make(6, 3), make(1, 6), make(2, 6)
        frozen, unused = make(3, 1), make(5, 2)
    else:
        w, b, v = make(6, 3), make(6), make(2, 6)
        frozen, unused = make(3), make(5)
    x = make(16, 3)
    y = make(16, 2)
    return [w, b, frozen], [v, unused], x, y


def _params(tensors, requires):
    return [torch.nn.Parameter(t.clone(), requires_grad=r) for t, r in zip(tensors, requires)]


def _loss(group0, group1, x, y):
    w, b, frozen = group0
    v, _ = group1   # the second param of group 1 is never used: its grad stays None
    h = torch.tanh(x @ w.T + b + frozen.sum() * 0.1)
    return ((h @ v.T - y) ** 2).mean()


def _groups(group0, group1, kwargs):
    lr = kwargs.get("lr", None)
    second = {"params": group1}
    if lr is not None:
        second["lr"] = (float(lr) if isinstance(lr, torch.Tensor) else lr) * 0.5
    return [{"params": group0}, second]


def _close(ours, theirs, dtype, what, atol=0.0):
    ours = ours.detach().double()
    theirs = theirs.detach().double()
    if theirs.numel() == 0:
        return
    bound = RTOL[dtype] * (theirs.abs() + theirs.abs().max()) + atol
    bad = (ours - theirs).abs() > bound
    assert not bool(bad.any()), f"{what}: max difference {float((ours - theirs).abs().max())}"


@pytest.mark.parametrize("name,dtype,inp", CONFIGS,
                         ids=[f"{n}-{str(d).split('.')[1]}-{i.desc}" for n, d, i in CONFIGS])
def test_optim_db_configuration_matches_torch(name, dtype, inp):
    g0, g1, x, y = _model(dtype, matrices_only=bool(getattr(ft, name)._fastopt_cls.algorithm.param_rules))
    requires0 = [True, True, False]
    ours0, ours1 = _params(g0, requires0), _params(g1, [True, True])
    theirs0, theirs1 = _params(g0, requires0), _params(g1, [True, True])
    kwargs = dict(inp.kwargs)
    opt = getattr(ft, name)(_groups(ours0, ours1, kwargs), **kwargs)
    torch_cls = getattr(torch.optim, name)
    single = {"foreach": False} if "foreach" in inspect.signature(torch_cls).parameters else {}   # not Muon
    topt = torch_cls(_groups(theirs0, theirs1, kwargs), **single, **kwargs)
    for _ in range(STEPS):
        for o, p0, p1 in ((opt, ours0, ours1), (topt, theirs0, theirs1)):
            o.zero_grad()
            _loss(p0, p1, x, y).backward()
            o.step()
    # Muon orthogonalizes in bfloat16 (torch too): where a float32 sum inside a matrix product lands
    # next to a bfloat16 rounding boundary, BLAS and torch's kernels round it apart, and an element
    # of the update X (|X| <= ~1) moves by a few bfloat16 ulps. Each step then agrees to within
    # lr * s * 2**-5 (s = sqrt(max(1, rows / cols)) <= sqrt(2) here).
    atol = 0.0
    if name == "Muon":
        lr = float(kwargs.get("lr", 1e-3))
        atol = STEPS * lr * math.sqrt(2.0) * 2.0 ** -5
    for i, (a, b) in enumerate(zip(ours0 + ours1, theirs0 + theirs1)):
        _close(a, b, dtype, f"param {i}", atol)
    assert torch.equal(ours0[2], theirs0[2]) and torch.equal(ours1[1], theirs1[1])   # never stepped
    for a, b in zip(ours0 + ours1, theirs0 + theirs1):
        ours_state, theirs_state = opt.state.get(a, {}), topt.state.get(b, {})
        theirs_state = {k: v for k, v in theirs_state.items() if v is not None}
        assert set(ours_state) == set(theirs_state), (set(ours_state), set(theirs_state))
        for key, value in theirs_state.items():
            if key == "step":
                assert float(ours_state[key]) == float(value)
            else:   # (for Muon: the gradients differ as much as the params, times ~the curvature)
                _close(ours_state[key], value, dtype, f"state {key!r}", 10 * atol)


@pytest.mark.parametrize("name,index,error", ERRORS,
                         ids=[f"{n}-{e.optimizer_error_input.desc}" for n, _, e in ERRORS])
def test_optim_db_error_input_raises_torchs_error(name, index, error):
    """As torch's own ``TestOptimRenewed.test_errors``: torch's error type (or warning), with a
    message its regex finds (``re.search``, as ``assertRaisesRegex``), so a test suite written
    against torch.optim's messages passes against fastopt.torch."""
    inp = error.optimizer_error_input
    cls = getattr(ft, name)
    expect = pytest.warns if issubclass(error.error_type, Warning) else pytest.raises

    def build():
        return cls(inp.params, **inp.kwargs)

    if error.error_on == common.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect(error.error_type, match=error.error_regex):
            build()
    elif error.error_on == common.OptimizerErrorEnum.STEP_ERROR:
        opt = build()
        with expect(error.error_type, match=error.error_regex):
            opt.step()
    else:
        raise NotImplementedError(f"unknown error_on {error.error_on}")


# ----------------------------------------------------------------------------------------------
# What optim_db's inputs exercised and fastopt.torch once got wrong
# ----------------------------------------------------------------------------------------------

def test_hyperparameters_are_checked_before_params():
    with pytest.raises(ValueError, match="betas"):
        ft.Adam(None, betas=(1.0, 0.0))
    with pytest.raises(ValueError, match="lr"):
        ft.NAdam(None, lr=torch.tensor([1e-3, 1e-3]))


def test_duplicate_param_warns_and_steps_twice_as_torch_does():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    q = torch.nn.Parameter(p.detach().clone())
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ours = ft.Adam([p, p], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        theirs = torch.optim.Adam([q, q], lr=0.1, foreach=False)
    for _ in range(3):
        for o, t in ((ours, p), (theirs, q)):
            o.zero_grad()
            (t ** 2).sum().backward()
            o.step()
    torch.testing.assert_close(p, q)
    assert int(ours.state[p]["step"]) == int(theirs.state[q]["step"]) == 6


@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam", "RAdam", "SGD", "RMSprop", "Adagrad", "Adamax",
                                  "Adadelta", "Rprop", "ASGD"])
def test_old_checkpoint_without_newer_group_keys_loads(name):
    """A state dict from an older torch lacks keys such as maximize, foreach or
    decoupled_weight_decay; torch fills their defaults on load, and so does fastopt.torch."""
    # float32: torch casts loaded state to the param's dtype, NAdam's float32 mu_product included
    p = torch.nn.Parameter(torch.randn(4, dtype=torch.float32))
    q = torch.nn.Parameter(p.detach().clone())
    theirs = getattr(torch.optim, name)([q], foreach=False)
    q.grad = torch.ones_like(q)
    theirs.step()
    sd = theirs.state_dict()
    for group in sd["param_groups"]:
        for key in ("maximize", "foreach", "decoupled_weight_decay", "differentiable", "capturable", "fused"):
            group.pop(key, None)
    ours = getattr(ft, name)([p])
    ours.load_state_dict(sd)
    theirs.load_state_dict(sd)
    for key, value in theirs.param_groups[0].items():
        if key not in ("params",):
            assert ours.param_groups[0][key] == value, key
    p.grad = torch.ones_like(p)
    q.grad = torch.ones_like(q)
    with torch.no_grad():
        p.copy_(q)
    ours.step()
    theirs.step()
    torch.testing.assert_close(p, q, rtol=2e-7, atol=1e-7)


def test_no_torch_algorithm_is_left_out():
    """Every algorithm fastopt declares with a torch twin is an optim_db entry run above."""
    from fastopt.algorithms import ALGORITHMS
    twins = {a.torch_name for a in ALGORITHMS if a.torch_name}
    assert twins <= set(INFOS), twins - set(INFOS)
