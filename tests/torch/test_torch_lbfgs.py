"""fastopt.torch.LBFGS against torch.optim.LBFGS: torch's own optim_db inputs for LBFGS (valid
ones: same trajectories; error ones: same errors), state_dict, argument checks, closures that
forget backward(), and memory over many steps. Checkpoints moving to and from torch.optim.LBFGS:
test_torch_lbfgs_checkpoint.py."""
import gc
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
common = pytest.importorskip("torch.testing._internal.common_optimizers")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from memory_growth import MB, growth  # noqa: E402  (RSS measured as for the NumPy optimizers)

pytestmark = pytest.mark.torch

LBFGS_INFO = next(info for info in common.optim_db if info.optim_cls is torch.optim.LBFGS)


def problem(dtype, seed=0):
    """A small model (linear layer, tanh, quartic penalty) as a function of two parameters."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 6, generator=g, dtype=dtype)
    y = torch.randn(40, 3, generator=g, dtype=dtype)
    weight0 = 0.3 * torch.randn(6, 3, generator=g, dtype=dtype)
    bias0 = 0.1 * torch.randn(3, generator=g, dtype=dtype)

    def make(optim_cls, kwargs):
        weight = torch.nn.Parameter(weight0.clone())
        bias = torch.nn.Parameter(bias0.clone())
        opt = optim_cls([weight, bias], **kwargs)

        def closure():
            opt.zero_grad()
            loss = ((torch.tanh(X @ weight + bias) - y) ** 2).mean() + 0.01 * (weight ** 4).sum()
            loss.backward()
            return loss
        return (weight, bias), opt, closure
    return make


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("optim_input", LBFGS_INFO.optim_inputs_func(device="cpu"),
                         ids=lambda o: o.desc)
def test_optim_db_inputs_follow_torch_trajectories(optim_input, dtype):
    make = problem(dtype)
    theirs, torch_opt, torch_closure = make(torch.optim.LBFGS, dict(optim_input.kwargs))
    ours, our_opt, our_closure = make(ft.LBFGS, dict(optim_input.kwargs))
    # float64: the same arithmetic up to summation order, for three steps of up to 20
    # iterations. float32: torch accumulates its inner products in float32, fastopt in double,
    # so after a few dozen iterations on this non-convex model the iterates drift apart at the
    # 1e-3 level; one step (up to 20 iterations) is compared.
    if dtype == torch.float64:
        steps, tol = 3, dict(rtol=1e-9, atol=1e-11)
    else:
        steps, tol = 1, dict(rtol=2e-3, atol=5e-4)
    for _ in range(steps):
        loss_theirs = torch_opt.step(torch_closure)
        loss_ours = our_opt.step(our_closure)
        assert float(loss_ours.detach()) == pytest.approx(float(loss_theirs.detach()),
                                                          rel=tol["rtol"],
                                                 abs=tol["atol"])
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **tol)
    torch_state = torch_opt.state[theirs[0]]
    our_state = our_opt.state[ours[0]]
    if dtype == torch.float64:
        assert our_state["func_evals"] == torch_state["func_evals"]
        assert our_state["n_iter"] == torch_state["n_iter"]


@pytest.mark.parametrize("error_input", LBFGS_INFO.optim_error_inputs_func(device="cpu",
                                                                           dtype=torch.float32),
                         ids=lambda e: e.optimizer_error_input.desc)
def test_optim_db_error_inputs_raise_torchs_errors(error_input):
    optim_input = error_input.optimizer_error_input
    params = optim_input.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3))]
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type, match=error_input.error_regex):
            ft.LBFGS(params, **optim_input.kwargs)
    else:
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            ft.LBFGS(params, **optim_input.kwargs)


def test_state_dict_round_trip_continues_the_same_trajectory():
    make = problem(torch.float64, seed=3)
    straight, straight_opt, straight_closure = make(ft.LBFGS, dict(history_size=5, max_iter=4))
    resumed, first_opt, first_closure = make(ft.LBFGS, dict(history_size=5, max_iter=4))
    for _ in range(2):
        straight_opt.step(straight_closure)
        first_opt.step(first_closure)
    buffer = io.BytesIO()
    torch.save(first_opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)   # weights_only: the state is tensors and numbers
    params = [torch.nn.Parameter(p.detach().clone()) for p in resumed]
    second_opt = ft.LBFGS(params, history_size=5, max_iter=4)
    second_opt.load_state_dict(saved)

    def second_closure():
        second_opt.zero_grad()
        with torch.no_grad():
            for p, q in zip(resumed, params):
                p.copy_(q)
        loss = first_closure()
        for p, q in zip(resumed, params):
            q.grad = p.grad.clone()
        return loss
    for _ in range(2):
        straight_opt.step(straight_closure)
        second_opt.step(second_closure)
    for p, q in zip(params, straight):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-12)


def test_rejects_what_it_cannot_view():
    with pytest.raises(ValueError, match="contiguous"):
        ft.LBFGS([torch.nn.Parameter(torch.randn(4, 3).t())])
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.LBFGS([torch.nn.Parameter(torch.randn(3).to(torch.bfloat16))])
    with pytest.raises(TypeError, match="same dtype"):
        ft.LBFGS([torch.nn.Parameter(torch.randn(3)),
                  torch.nn.Parameter(torch.randn(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="line_search_fn"):
        ft.LBFGS([torch.nn.Parameter(torch.randn(3))], line_search_fn="backtracking")
    with pytest.raises(ValueError, match="history_size"):
        ft.LBFGS([torch.nn.Parameter(torch.randn(3))], history_size=0)
    with pytest.raises(ValueError, match="learning rate"):
        ft.LBFGS([torch.nn.Parameter(torch.randn(3))], lr=-1.0)


def test_updates_land_in_the_parameters_and_autograd_sees_them():
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = ft.LBFGS([w], line_search_fn="strong_wolfe")
    version = w._version

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    assert w.detach().abs().max() < 1e-6
    assert w._version > version


def test_import_fastopt_does_not_import_torch(tmp_path):
    code = "import sys, fastopt; print('torch' in sys.modules)"
    # from an empty folder, so the installed package is imported, not the source tree
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip() == "False"


def test_per_iteration_vector_work_is_one_compiled_call():
    """Regression guard for the design, not a timing: 200 iterations on a 2e4-parameter model
    finish, and the pairs in the state (torch's lists) are views of one ring buffer."""
    w = torch.nn.Parameter(torch.zeros(20_000, dtype=torch.float64))
    target = torch.linspace(-1, 1, 20_000, dtype=torch.float64)
    opt = ft.LBFGS([w], max_iter=200, history_size=10, tolerance_grad=0, tolerance_change=0)

    def closure():
        opt.zero_grad()
        loss = ((w - target) ** 4).sum() + ((w - target) ** 2).sum()
        loss.backward()
        return loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure)
    state = opt.state[w]
    pairs = state["old_stps"] + state["old_dirs"]
    assert len(pairs) == 20 and all(v.shape == (20_000,) for v in pairs)
    assert len({v.untyped_storage().data_ptr() for v in pairs}) == 1
    np.testing.assert_allclose(w.detach().numpy(), target.numpy(), atol=1e-6)


# -- memory: a step keeps no object of the previous one -------------------------------------------
def _minibatch_problem(steps_seed=0, n=100):
    """A 100-element least-squares fit whose target changes with every evaluation (minibatches),
    so every step iterates and stores pairs; small history, so the ring wraps."""
    w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    base = torch.linspace(-1, 1, n, dtype=torch.float64)
    noise = torch.Generator().manual_seed(steps_seed)
    opt = ft.LBFGS([w], lr=0.5, max_iter=2, history_size=5, tolerance_grad=0,
                   tolerance_change=0)

    def closure():
        opt.zero_grad()
        target = base + 0.01 * torch.randn(n, generator=noise, dtype=torch.float64)
        loss = ((w - target) ** 2).sum() + 0.1 * (w ** 4).sum()
        loss.backward()
        return loss

    def run(steps):
        for _ in range(steps):
            opt.step(closure)
    return run


def _live_tensors():
    gc.collect()
    # type(), not isinstance: isinstance on every gc object trips torch's deprecated-module shims
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def test_steps_keep_no_tensors_alive():
    """Deterministic leak check: the number of live tensors is the same after 20 and after 220
    steps (each step used to wrap the previous step's state arrays again: 4 tensors a step)."""
    run = _minibatch_problem()
    run(20)
    before = _live_tensors()
    run(200)
    assert _live_tensors() - before == 0


@pytest.mark.slow
def test_20k_lbfgs_steps_do_not_grow_rss():
    run = _minibatch_problem()
    grew = growth(lambda: run(20_000), lambda: run(2_000))
    print(f"RSS growth over 20,000 fastopt.torch.LBFGS steps: {grew / 1024:.0f} KiB")
    assert grew < MB, f"{grew / 1024:.0f} KiB"


# -- lr: both front ends take torch's rule ---------------------------------------------------------
def _three_lbfgs(lr):
    """torch.optim.LBFGS, fastopt.torch.LBFGS and the NumPy fastopt.LBFGS built with ``lr``."""
    yield torch.optim.LBFGS, lambda: torch.optim.LBFGS([torch.nn.Parameter(torch.ones(3))], lr=lr)
    yield ft.LBFGS, lambda: ft.LBFGS([torch.nn.Parameter(torch.ones(3))], lr=lr)
    yield fastopt.LBFGS, lambda: fastopt.LBFGS([np.ones(3)], lr=lr)


@pytest.mark.parametrize("lr", [-1, -0.5, float("nan")])
def test_negative_lr_raises_torchs_error_in_both_front_ends(lr):
    messages = {}
    for cls, build in _three_lbfgs(lr):
        with pytest.raises(ValueError) as info:
            build()
        messages[cls] = str(info.value)
    assert messages[ft.LBFGS] == messages[fastopt.LBFGS] == messages[torch.optim.LBFGS] \
        == f"Invalid learning rate: {lr}"


def test_lr_zero_is_accepted_by_both_front_ends_and_moves_nothing():
    for _, build in _three_lbfgs(0.0):
        build()
    w = np.array([3.0, -4.0])
    opt = fastopt.LBFGS([w], lr=0)
    opt.step(lambda: (float(w @ w), [2 * w]))
    np.testing.assert_array_equal(w, [3.0, -4.0])
    p = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    torch_opt = ft.LBFGS([p], lr=0)

    def closure():
        torch_opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss
    torch_opt.step(closure)
    np.testing.assert_array_equal(p.detach().numpy(), [3.0, -4.0])


# -- closures that do not produce gradients ------------------------------------------------------
def test_closure_without_backward_gets_a_hint():
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = ft.LBFGS([w])

    def closure():   # forgot loss.backward()
        opt.zero_grad()
        return (w ** 2).sum()
    with pytest.warns(UserWarning, match=r"no parameter has a gradient.*call loss\.backward\(\)") \
            as caught:
        loss = opt.step(closure)
    assert float(loss.detach()) == 25.0
    np.testing.assert_array_equal(w.detach().numpy(), [3.0, -4.0])   # torch's no-op, kept
    assert caught[0].filename == __file__   # points at the user's step() call


def test_params_without_requires_grad_step_silently_as_in_torch():
    """torch's test_step_is_noop_when_params_have_no_grad: no gradient and none wanted is a
    silent no-op, not the forgotten-backward hint."""
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old = [p.clone() for p in params]
    opt = ft.LBFGS(params, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(lambda: torch.tensor([1.0]))
    for p, q in zip(params, old):
        assert torch.equal(p, q)


def test_closure_returning_none_is_named():
    w = torch.nn.Parameter(torch.ones(2))
    opt = ft.LBFGS([w])

    def closure():   # forgot to return the loss
        opt.zero_grad()
        (w ** 2).sum().backward()
    with pytest.raises(TypeError, match=r"closure\(\) returned None.*return loss"):
        opt.step(closure)
