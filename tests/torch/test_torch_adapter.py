"""fastopt.torch: torch.optim.Optimizer subclasses running fastopt's kernels."""
import copy
import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

pytestmark = pytest.mark.torch

# (name, kwargs): each runs with fastopt.torch.<name> and torch.optim.<name>(foreach=False).
CONFIGS = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=1e-2, maximize=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, amsgrad=True)),
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=1e-2)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1)),
    ("Adadelta", dict(lr=1.0, rho=0.8, weight_decay=1e-2)),
    ("Rprop", dict(lr=1e-2, etas=(0.4, 1.3), step_sizes=(1e-5, 1.0))),
    ("ASGD", dict(lr=1e-2, lambd=1e-3, t0=3, weight_decay=1e-2)),
    ("Adafactor", dict(lr=1e-2)),
    ("Adafactor", dict(lr=1e-2, beta2_decay=-0.5, eps=(1e-20, 1e-2), d=1.5, weight_decay=1e-2)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}


def make_model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def make_data(dtype, n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def train(model, opt, x, y, steps, sched=None, batch=16):
    for t in range(steps):
        i = (t * batch) % len(x)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[i:i + batch]), y[i:i + batch])
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return model


def pair(name, kwargs, dtype):
    ref_model = make_model(dtype)
    our_model = copy.deepcopy(ref_model)
    ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **kwargs)
    ours = getattr(ft, name)(our_model.parameters(), **kwargs)
    return ref_model, ref, our_model, ours


def assert_same_params(a, b, dtype):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **TOL[dtype])


def _fastopt_path():
    here = pathlib.Path(fastopt.__file__).resolve().parent.parent
    return os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])


def test_import_fastopt_does_not_import_torch(tmp_path):
    code = "import sys, fastopt; assert 'torch' not in sys.modules, 'fastopt imported torch'"
    env = dict(os.environ, PYTHONPATH=_fastopt_path())
    # cwd: `python -c` puts the cwd first on sys.path, which must not be the (uncompiled) source tree.
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_trajectory_matches_torch(name, kwargs, dtype):
    ref_model, ref, our_model, ours = pair(name, kwargs, dtype)
    assert isinstance(ours, torch.optim.Optimizer)
    x, y = make_data(dtype)
    train(ref_model, ref, x, y, 50)
    train(our_model, ours, x, y, 50)
    assert_same_params(ref_model, our_model, dtype)
    # The state matches torch's too, in torch's format.
    for p, q in zip(ref_model.parameters(), our_model.parameters()):
        ref_state, our_state = ref.state[p], ours.state[q]
        assert set(ref_state) == set(our_state)
        for key, value in ref_state.items():
            if key == "step":
                assert float(our_state[key]) == float(value)
            else:
                torch.testing.assert_close(our_state[key], value, **TOL[dtype])


@pytest.mark.parametrize("sched", ["step", "cosine"])
def test_lr_schedulers(sched):
    dtype = torch.float64
    ref_model, ref, our_model, ours = pair("Adam", dict(lr=0.05), dtype)
    make = {
        "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=1e-3),
    }[sched]
    ref_sched, our_sched = make(ref), make(ours)
    x, y = make_data(dtype)
    train(ref_model, ref, x, y, 30, ref_sched)
    train(our_model, ours, x, y, 30, our_sched)
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] != 0.05
    assert_same_params(ref_model, our_model, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_one_cycle_lr_cycling_betas_is_followed(name, dtype):
    """OneCycleLR with cycle_momentum=True rewrites betas[0] every step; fastopt.torch must use the
    group's current betas (and lr) on each step, element by element as torch does."""
    from reference import ElementwiseParity
    ref_model, ref, our_model, ours = pair(name, dict(lr=0.01, betas=(0.9, 0.99)), dtype)
    make = lambda o: torch.optim.lr_scheduler.OneCycleLR(        # noqa: E731
        o, max_lr=0.05, total_steps=40, cycle_momentum=True, base_momentum=0.6, max_momentum=0.95)
    ref_sched, our_sched = make(ref), make(ours)
    x, y = make_data(dtype)
    parity = ElementwiseParity()
    beta1s = set()
    for i, p in enumerate(ref_model.parameters()):
        parity.start(i, p.detach().numpy())
    for step in range(40):
        train(ref_model, ref, x[step % 4 * 16:], y[step % 4 * 16:], 1, ref_sched)
        train(our_model, ours, x[step % 4 * 16:], y[step % 4 * 16:], 1, our_sched)
        assert ours.param_groups[0]["betas"] == ref.param_groups[0]["betas"]
        beta1s.add(ref.param_groups[0]["betas"][0])
        for i, (p, q) in enumerate(zip(ref_model.parameters(), our_model.parameters())):
            parity.check(i, q.detach().numpy(), p.detach().numpy(), 64, what=f"step {step + 1}, param {i}")
    assert len(beta1s) > 30 and min(beta1s) < 0.61 and max(beta1s) > 0.94       # beta1 did cycle


def test_param_groups_and_hand_edited_hyperparameters():
    dtype = torch.float64
    models = [make_model(dtype), make_model(dtype)]

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 0.02}, {"params": m[2].parameters(), "momentum": 0.5}]

    ref = torch.optim.SGD(groups(models[0]), lr=0.1, momentum=0.9, foreach=False)
    ours = ft.SGD(groups(models[1]), lr=0.1, momentum=0.9)
    x, y = make_data(dtype)
    train(models[0], ref, x, y, 10)
    train(models[1], ours, x, y, 10)
    for o in (ref, ours):
        o.param_groups[1]["lr"] = 0.3
        o.param_groups[0]["nesterov"] = True
        o.param_groups[0]["weight_decay"] = torch.tensor(0.01, dtype=torch.float64)
    train(models[0], ref, x, y, 10)
    train(models[1], ours, x, y, 10)
    assert_same_params(models[0], models[1], dtype)


def test_add_param_group():
    dtype = torch.float64
    models = [make_model(dtype), make_model(dtype)]
    ref = torch.optim.Adam(models[0][0].parameters(), lr=0.01, foreach=False)
    ours = ft.Adam(models[1][0].parameters(), lr=0.01)
    x, y = make_data(dtype)
    train(models[0], ref, x, y, 5)
    train(models[1], ours, x, y, 5)
    ref.add_param_group({"params": models[0][2].parameters(), "lr": 0.03})
    ours.add_param_group({"params": models[1][2].parameters(), "lr": 0.03})
    train(models[0], ref, x, y, 5)
    train(models[1], ours, x, y, 5)
    assert_same_params(models[0], models[1], dtype)


def test_zero_grad_and_none_grads():
    model = make_model(torch.float32)
    opt = ft.Adam(model.parameters(), lr=0.1)
    x, y = make_data(torch.float32)
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()                                     # no grads: nothing moves, no state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(opt.state) == 0
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    # Only the last layer gets a grad: only it moves and gets state.
    for p in model.parameters():
        p.grad = None
    model[2].weight.grad = torch.ones_like(model[2].weight)
    opt.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert moved == [False, False, True, False]
    assert list(opt.state) == [model[2].weight]
    assert opt.state[model[2].weight]["step"].item() == 1


def test_step_is_in_place_and_zero_copy():
    model = make_model(torch.float32)
    ptrs = [p.data_ptr() for p in model.parameters()]
    opt = ft.AdamW(model.parameters(), lr=0.1)
    x, y = make_data(torch.float32)
    train(model, opt, x, y, 3)
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    p = model[0].weight
    exp_avg = opt.state[p]["exp_avg"]
    version = p._version
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert p._version > version                      # autograd sees the in-place update
    assert exp_avg.data_ptr() == opt.state[p]["exp_avg"].data_ptr()   # a view of live state


def test_closure():
    model = make_model(torch.float64)
    opt = ft.SGD(model.parameters(), lr=0.1)
    x, y = make_data(torch.float64)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(20):
        last = opt.step(closure).item()
    assert last < first


@pytest.mark.parametrize("name,kwargs", [CONFIGS[1], CONFIGS[6], CONFIGS[9], CONFIGS[11]],
                         ids=["Adam", "SGD", "RMSprop", "Adagrad"])
def test_state_dict_round_trips_and_crosses_with_torch(name, kwargs, tmp_path):
    dtype = torch.float32
    x, y = make_data(dtype)
    ref_model, ref, our_model, ours = pair(name, kwargs, dtype)
    train(ref_model, ref, x, y, 10)
    train(our_model, ours, x, y, 10)

    # Self round trip through torch.save / torch.load (weights_only, the default).
    path = tmp_path / "opt.pt"
    torch.save(ours.state_dict(), path)
    model2 = copy.deepcopy(our_model)
    ours2 = getattr(ft, name)(model2.parameters(), lr=123.0)
    ours2.load_state_dict(torch.load(path))
    assert ours2.param_groups[0]["lr"] == kwargs["lr"]
    train(our_model, ours, x, y, 10)
    train(model2, ours2, x, y, 10)
    for p, q in zip(our_model.parameters(), model2.parameters()):
        assert torch.equal(p, q)

    # torch.optim -> fastopt.torch and fastopt.torch -> torch.optim, from the same point.
    ref_model, ref, our_model, ours = pair(name, kwargs, dtype)
    train(ref_model, ref, x, y, 10)
    start = copy.deepcopy(ref_model)
    saved = copy.deepcopy(ref.state_dict())
    into_ours_model = copy.deepcopy(start)
    into_ours = getattr(ft, name)(into_ours_model.parameters(), lr=1.0)
    into_ours.load_state_dict(saved)
    train(ref_model, ref, x, y, 10)
    train(into_ours_model, into_ours, x, y, 10)
    assert_same_params(ref_model, into_ours_model, dtype)

    back_model = copy.deepcopy(into_ours_model)
    back = getattr(torch.optim, name)(back_model.parameters(), lr=1.0, foreach=False)
    back.load_state_dict(into_ours.state_dict())
    train(back_model, back, x, y, 10)
    train(into_ours_model, into_ours, x, y, 10)
    assert_same_params(back_model, into_ours_model, dtype)


def test_state_dict_is_a_copy_and_bad_load_leaves_optimizer_unchanged():
    model = make_model(torch.float64)
    opt = ft.Adam(model.parameters(), lr=0.01)
    x, y = make_data(torch.float64)
    train(model, opt, x, y, 3)
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"].fill_(7.0)
    assert not (opt.state[model[0].weight]["exp_avg"] == 7.0).any()

    good = opt.state_dict()
    bad = copy.deepcopy(good)
    bad["state"][1]["exp_avg"] = torch.zeros(5)      # wrong shape
    bad["param_groups"][0]["lr"] = 0.5
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert opt.param_groups[0]["lr"] == 0.01
    for i, entry in good["state"].items():
        for key, value in entry.items():
            assert torch.equal(after["state"][i][key], value)
    bad = copy.deepcopy(good)
    bad["param_groups"][0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match="betas"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_unsupported_params():
    with pytest.raises(TypeError, match="complex64"):
        ft.SGD([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])
    with pytest.raises(TypeError, match="device meta"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3, device="meta"))])
    with pytest.raises(ValueError, match="not contiguous"):
        ft.Adam([torch.nn.Parameter(torch.zeros(4, 3).t())])
    with pytest.raises(TypeError, match="sparse"):
        ft.SGD([torch.zeros(3, 3).to_sparse().requires_grad_()])
    with pytest.raises(ValueError, match="capturable"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3))], capturable=True)
    with pytest.raises(ValueError, match="differentiable"):
        ft.SGD([torch.nn.Parameter(torch.zeros(3))], differentiable=True)
    with pytest.raises(ValueError, match="lr"):
        ft.Adam([torch.nn.Parameter(torch.zeros(3))], lr=-1.0)
    ok = torch.nn.Parameter(torch.zeros(3))
    opt = ft.Adam([ok])
    with pytest.raises(TypeError, match="complex128"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex128))]})
    assert len(opt.param_groups) == 1
    opt.step()                                        # still usable


def test_unsupported_grads():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(3, 4).t()
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    if hasattr(p, "grad_dtype"):                       # torch >= 2.9 can allow a grad of another dtype
        p.grad_dtype = None
        p.grad = torch.ones(4, 3, dtype=torch.float64)
        with pytest.raises(TypeError, match="dtype torch.float64, but its param has dtype torch.float32"):
            opt.step()
        p.grad = None
        p.grad_dtype = torch.float32
    p.grad = torch.ones(4, 3).to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    with pytest.raises(ValueError, match="lr"):
        opt.param_groups[0]["lr"] = -0.5
        p.grad = torch.ones(4, 3)
        opt.step()
    assert not p.any() and len(opt.state) == 0        # nothing was written
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    assert p.ne(0).all()
    # torch.optim's contract: new memory (p.data = ...) and params added to a group by hand
    # are stepped as torch.optim steps them, the state carried over
    reference = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    reference.load_state_dict(opt.state_dict())
    q = reference.param_groups[0]["params"][0]
    p.data = torch.zeros(4, 3)
    q.data = torch.zeros(4, 3)
    extra = torch.nn.Parameter(torch.ones(2))
    opt.param_groups[0]["params"].append(extra)
    reference.param_groups[0]["params"].append(torch.nn.Parameter(torch.ones(2)))
    for a, b in zip(opt.param_groups[0]["params"], reference.param_groups[0]["params"]):
        a.grad = torch.full_like(a, 0.5)
        b.grad = torch.full_like(b, 0.5)
    opt.step()
    reference.step()
    for a, b in zip(opt.param_groups[0]["params"], reference.param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert p.ne(0).all() and opt.state[p]["step"] == 2


def test_not_picklable():
    opt = ft.Adam([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(TypeError, match="state_dict"):
        copy.deepcopy(opt)


def test_skip_nonfinite():
    p = torch.nn.Parameter(torch.ones(3))
    opt = ft.Adam([p], lr=0.1, skip_nonfinite=True)
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert opt.found_inf and opt.skipped_steps == 1 and torch.equal(p, torch.ones(3))


# ----------------------------------------------------------------------------------------------
# torch.distributed: two processes, gloo on 127.0.0.1
# ----------------------------------------------------------------------------------------------

def test_ddp_two_processes_match_single_process(tmp_path):
    import ddp_worker
    import two_ranks
    ranks = two_ranks.results(pathlib.Path(ddp_worker.__file__), tmp_path, timeout=90)
    single = ddp_worker.single_process()
    assert len(ranks[0]) == len(single) > 0
    for a, b, c in zip(ranks[0], ranks[1], single):
        assert torch.equal(a, b)                      # both ranks hold identical params
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(single, ddp_worker.initial_params()))


def test_step_hooks_and_profiler():
    model = make_model(torch.float32)
    opt = ft.Adam(model.parameters(), lr=0.1)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o)))
    x, y = make_data(torch.float32)
    train(model, opt, x, y, 2)
    assert calls == [("pre", opt), ("post", opt)] * 2
    pre.remove()
    post.remove()
    train(model, opt, x, y, 1)
    assert len(calls) == 4
    global_calls = []
    from torch.optim.optimizer import register_optimizer_step_post_hook
    handle = register_optimizer_step_post_hook(lambda o, args, kwargs: global_calls.append(o))
    try:
        train(model, opt, x, y, 1)
    finally:
        handle.remove()
    assert global_calls == [opt]
    with torch.profiler.profile() as prof:
        train(model, opt, x, y, 1)
    assert any("Optimizer.step#Adam.step" in e.name for e in prof.events())
