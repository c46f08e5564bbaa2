"""Tests of fastopt.lr_scheduler against torch.optim.lr_scheduler and against closed forms."""

import copy
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import fastopt.lr_scheduler as fastopt_sched

from fastopt import SGD, Adam

STEPS = 1000
GROUP_LRS = (0.1, 0.03)


def make_optimizer(kind="sgd", lrs=GROUP_LRS):
    """A fastopt-interface optimizer with one param group per lr."""
    groups = [{"params": [np.zeros(3)], "lr": lr} for lr in lrs]
    if kind == "sgd":
        return SGD(groups, lr=lrs[0], momentum=0.9)
    return Adam(groups, lr=lrs[0], betas=(0.9, 0.999))


def make_torch_optimizer(kind="sgd", lrs=GROUP_LRS):
    torch = pytest.importorskip("torch")
    groups = [{"params": [torch.zeros(3, dtype=torch.float64)], "lr": lr} for lr in lrs]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    return torch.optim.Adam(groups, lr=lrs[0], betas=(0.9, 0.999))


def group_hyperparameters(optimizer):
    """Everything in the param groups but the parameters: what an optimizer checkpoint restores."""
    return [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def restore_group_hyperparameters(optimizer, saved):
    for group, values in zip(optimizer.param_groups, saved):
        group.update(copy.deepcopy(values))


class Scale:
    """A stateful lr_lambda (a callable object, whose attributes LambdaLR.state_dict saves)."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, epoch):
        return 1.0 / (1.0 + self.rate * epoch)


# Each builds a scheduler from a scheduler module `S` (torch's or fastopt's) on optimizer `opt`.
SCHEDULES = {
    "StepLR": lambda opt, S: S.StepLR(opt, step_size=30, gamma=0.5),
    "StepLR-default-gamma": lambda opt, S: S.StepLR(opt, step_size=7),
    "MultiStepLR": lambda opt, S: S.MultiStepLR(opt, milestones=[100, 300, 300, 700], gamma=0.3),
    "ExponentialLR": lambda opt, S: S.ExponentialLR(opt, gamma=0.995),
    "CosineAnnealingLR-restarting": lambda opt, S: S.CosineAnnealingLR(opt, T_max=130, eta_min=1e-4),
    "CosineAnnealingLR": lambda opt, S: S.CosineAnnealingLR(opt, T_max=STEPS),
    "LinearLR-warmup": lambda opt, S: S.LinearLR(opt, start_factor=0.1, total_iters=50),
    "LinearLR-decay": lambda opt, S: S.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=STEPS),
    "LinearLR-defaults": lambda opt, S: S.LinearLR(opt),
    "LambdaLR": lambda opt, S: S.LambdaLR(opt, lr_lambda=[lambda t: 0.97 ** (t // 10), Scale(0.01)]),
    "SequentialLR-warmup-cosine": lambda opt, S: S.SequentialLR(
        opt,
        [S.LinearLR(opt, start_factor=0.01, total_iters=100), S.CosineAnnealingLR(opt, T_max=900, eta_min=1e-5)],
        milestones=[100],
    ),
    "SequentialLR-three": lambda opt, S: S.SequentialLR(
        opt,
        [
            S.ExponentialLR(opt, gamma=0.99),
            S.StepLR(opt, step_size=40, gamma=0.7),
            S.MultiStepLR(opt, milestones=[0, 100, 200], gamma=0.5),
        ],
        milestones=[50, 400],
    ),
    "OneCycleLR": lambda opt, S: S.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS),
    "OneCycleLR-three-phase-linear": lambda opt, S: S.OneCycleLR(
        opt,
        max_lr=[0.5, 0.2],
        epochs=10,
        steps_per_epoch=STEPS // 10,
        pct_start=0.25,
        anneal_strategy="linear",
        base_momentum=[0.8, 0.7],
        max_momentum=0.97,
        three_phase=True,
    ),
    "OneCycleLR-no-momentum": lambda opt, S: S.OneCycleLR(opt, max_lr=1.0, total_steps=STEPS, cycle_momentum=False),
}


def momenta(optimizer):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in optimizer.param_groups]


def run(scheduler, optimizer, steps, before_step=lambda: None):
    """lrs, momenta and last_epoch after construction and after each of `steps` steps."""
    record = [(list(scheduler.get_last_lr()), momenta(optimizer), scheduler.last_epoch)]
    for _ in range(steps):
        before_step()
        scheduler.step()
        record.append((list(scheduler.get_last_lr()), momenta(optimizer), scheduler.last_epoch))
    return record


def assert_records_match(ours, theirs, rel=1e-12):
    assert len(ours) == len(theirs)
    for step, ((lrs, moms, epoch), (t_lrs, t_moms, t_epoch)) in enumerate(zip(ours, theirs)):
        assert epoch == t_epoch, f"step {step}"
        assert lrs == pytest.approx([float(x) for x in t_lrs], rel=rel, abs=0), f"lr at step {step}"
        assert moms == pytest.approx([float(x) for x in t_moms], rel=rel, abs=0), f"momentum at step {step}"


# --------------------------------------------------------------------------------------- vs torch


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_matches_torch_for_1000_steps(name, kind):
    torch = pytest.importorskip("torch")
    build = SCHEDULES[name]
    torch_opt = make_torch_optimizer(kind)
    theirs = run(build(torch_opt, torch.optim.lr_scheduler), torch_opt, STEPS, before_step=torch_opt.step)
    opt = make_optimizer(kind)
    ours = run(build(opt, fastopt_sched), opt, STEPS)
    assert_records_match(ours, theirs)
    # The optimizer reads group["lr"]; it must be what get_last_lr reports.
    assert [g["lr"] for g in opt.param_groups] == ours[-1][0]


PLATEAU_SETTINGS = {
    "defaults": {},
    "max-abs-cooldown": dict(mode="max", threshold_mode="abs", threshold=0.05, patience=3, cooldown=4, factor=0.5),
    "min-rel-min_lr-list": dict(patience=2, factor=0.3, min_lr=[1e-3, 1e-4], threshold=0.01),
    "eps-blocks-tiny-reductions": dict(patience=0, factor=0.5, eps=1e-3),
}


def plateau_metrics(seed, mode):
    """Noisy curve with long plateaus: improves for a while, then stalls, so reductions happen."""
    rng = np.random.default_rng(seed)
    trend = np.repeat(np.exp(-np.arange(40) / 8.0), 25)  # 1000 epochs, 40 plateaus
    metric = trend + 0.02 * rng.standard_normal(trend.size)
    return list(metric if mode == "min" else -metric)


@pytest.mark.torch
@pytest.mark.parametrize("setting", sorted(PLATEAU_SETTINGS))
def test_reduce_lr_on_plateau_matches_torch(setting):
    torch = pytest.importorskip("torch")
    kwargs = PLATEAU_SETTINGS[setting]
    metrics = plateau_metrics(seed=len(setting), mode=kwargs.get("mode", "min"))
    torch_opt = make_torch_optimizer()
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, **kwargs)
    opt = make_optimizer()
    ours = fastopt_sched.ReduceLROnPlateau(opt, **kwargs)
    assert ours.get_last_lr() == theirs.get_last_lr()
    reductions = 0
    for metric in metrics:
        before = ours.get_last_lr()
        theirs.step(metric)
        ours.step(metric)
        reductions += ours.get_last_lr() != before
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=0)
        assert (ours.last_epoch, ours.num_bad_epochs, ours.cooldown_counter, ours.best) == (
            theirs.last_epoch, theirs.num_bad_epochs, theirs.cooldown_counter, theirs.best)
    assert reductions > 0  # otherwise the comparison exercised nothing


@pytest.mark.torch
@settings(max_examples=60, deadline=None)
@given(
    metrics=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=80),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    threshold=st.floats(0, 0.5),
    patience=st.integers(0, 5),
    cooldown=st.integers(0, 5),
    factor=st.floats(0, 0.99),
)
def test_reduce_lr_on_plateau_matches_torch_on_any_metric_sequence(
    metrics, mode, threshold_mode, threshold, patience, cooldown, factor
):
    torch = pytest.importorskip("torch")
    kwargs = dict(mode=mode, threshold_mode=threshold_mode, threshold=threshold, patience=patience,
                  cooldown=cooldown, factor=factor, min_lr=1e-6)
    torch_opt = make_torch_optimizer()
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, **kwargs)
    ours = fastopt_sched.ReduceLROnPlateau(make_optimizer(), **kwargs)
    for metric in metrics:
        theirs.step(metric)
        ours.step(metric)
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=0)


@pytest.mark.torch
@settings(max_examples=40, deadline=None)
@given(
    total_steps=st.integers(10, 300),
    pct_start=st.floats(0.05, 0.95),
    anneal_strategy=st.sampled_from(["cos", "linear"]),
    three_phase=st.booleans(),
    div_factor=st.floats(1.5, 100),
    final_div_factor=st.floats(1.5, 1e5),
    kind=st.sampled_from(["sgd", "adam"]),
)
def test_one_cycle_matches_torch_for_any_configuration(
    total_steps, pct_start, anneal_strategy, three_phase, div_factor, final_div_factor, kind
):
    torch = pytest.importorskip("torch")
    kwargs = dict(max_lr=0.3, total_steps=total_steps, pct_start=pct_start, anneal_strategy=anneal_strategy,
                  three_phase=three_phase, div_factor=div_factor, final_div_factor=final_div_factor)
    # Phases a step or less long divide by zero in torch as well; not a configuration to compare.
    assume(pct_start * total_steps >= 3)
    assume(not three_phase or 2 * pct_start * total_steps <= total_steps - 2)
    torch_opt = make_torch_optimizer(kind)
    theirs = run(torch.optim.lr_scheduler.OneCycleLR(torch_opt, **kwargs), torch_opt, total_steps, torch_opt.step)
    opt = make_optimizer(kind)
    ours = run(fastopt_sched.OneCycleLR(opt, **kwargs), opt, total_steps)
    assert_records_match(ours, theirs)


RESUMABLE = {
    "ExponentialLR": dict(gamma=0.99),
    "CosineAnnealingLR": dict(T_max=130, eta_min=1e-4),
    "LinearLR": dict(start_factor=0.1, total_iters=50),
    "StepLR": dict(step_size=19, gamma=0.5),
    "MultiStepLR": dict(milestones=[40, 60, 150], gamma=0.5),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(RESUMABLE))
def test_resuming_with_last_epoch_matches_torch(name):
    """Constructing with last_epoch=k on groups that carry initial_lr continues like torch."""
    torch = pytest.importorskip("torch")
    records = []
    for module, opt in ((fastopt_sched, make_optimizer()), (torch.optim.lr_scheduler, make_torch_optimizer())):
        for group in opt.param_groups:  # what a restored optimizer checkpoint holds
            group["initial_lr"] = group["lr"]
            group["lr"] = group["lr"] * 0.3
        scheduler = getattr(module, name)(opt, last_epoch=38, **RESUMABLE[name])
        step_optimizer = opt.step if module is not fastopt_sched else (lambda: None)
        records.append(run(scheduler, opt, 200, before_step=step_optimizer))
    assert_records_match(*records)


@pytest.mark.torch
def test_state_dict_has_torchs_keys():
    torch = pytest.importorskip("torch")
    for name, build in SCHEDULES.items():
        ours = build(make_optimizer(), fastopt_sched).state_dict()
        theirs = build(make_torch_optimizer(), torch.optim.lr_scheduler).state_dict()
        assert set(ours) == set(theirs), name
    ours = fastopt_sched.ReduceLROnPlateau(make_optimizer()).state_dict()
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(make_torch_optimizer()).state_dict()
    assert set(ours) == set(theirs)


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_torch_state_dict_loads_and_continues_like_torch(name):
    """A checkpoint written by torch's scheduler (plain floats) resumes in fastopt's."""
    torch = pytest.importorskip("torch")
    build = SCHEDULES[name]
    torch_opt = make_torch_optimizer()
    theirs = build(torch_opt, torch.optim.lr_scheduler)
    for _ in range(123):
        torch_opt.step()
        theirs.step()
    opt = make_optimizer()
    ours = build(opt, fastopt_sched)
    restore_group_hyperparameters(opt, [{k: v for k, v in g.items() if k != "params"} for g in torch_opt.param_groups])
    ours.load_state_dict(theirs.state_dict())
    assert_records_match(run(ours, opt, STEPS - 123), run(theirs, torch_opt, STEPS - 123, torch_opt.step))


@pytest.mark.torch
def test_a_torch_reduce_lr_on_plateau_state_dict_loads_and_continues_like_torch():
    torch = pytest.importorskip("torch")
    metrics = plateau_metrics(seed=5, mode="max")
    torch_opt = make_torch_optimizer()
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_opt, mode="max", patience=5, cooldown=2)
    for metric in metrics[:400]:
        theirs.step(metric)
    opt = make_optimizer()
    ours = fastopt_sched.ReduceLROnPlateau(opt)
    restore_group_hyperparameters(opt, [{k: v for k, v in g.items() if k != "params"} for g in torch_opt.param_groups])
    ours.load_state_dict(theirs.state_dict())
    for metric in metrics[400:]:
        theirs.step(metric)
        ours.step(metric)
        assert ours.get_last_lr() == theirs.get_last_lr()


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_scheduled_training_matches_torch(kind):
    """The scheduled lr and momentum reach the optimizer's update: parameters match torch's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal(5), rng.standard_normal(4)]
    grads = [[rng.standard_normal(5), rng.standard_normal(4)] for _ in range(200)]

    torch_params = [torch.tensor(p, requires_grad=True) for p in initial]
    torch_cls = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
    ours_cls = SGD if kind == "sgd" else Adam
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    torch_opt = torch_cls([{"params": [p]} for p in torch_params], lr=0.01, **extra)
    params = [p.copy() for p in initial]
    opt = ours_cls([{"params": [p]} for p in params], lr=0.01, **extra)

    torch_sched = torch.optim.lr_scheduler.OneCycleLR(torch_opt, max_lr=[0.1, 0.05], total_steps=len(grads))
    sched = fastopt_sched.OneCycleLR(opt, max_lr=[0.1, 0.05], total_steps=len(grads))
    for step_grads in grads:
        for p, g in zip(torch_params, step_grads):
            p.grad = torch.tensor(g)
        torch_opt.step()
        opt.step(step_grads)
        torch_sched.step()
        sched.step()
    for ours, theirs in zip(params, torch_params):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=0)
    assert not np.allclose(params[0], initial[0])


# --------------------------------------------------------------------------------- closed forms


def lrs_over(scheduler, steps):
    """lr of each group at epochs 0..steps, shape (steps + 1, groups)."""
    out = [scheduler.get_last_lr()]
    for _ in range(steps):
        scheduler.step()
        out.append(scheduler.get_last_lr())
    return np.array(out)


BASE = np.array(GROUP_LRS)
EPOCHS = np.arange(STEPS + 1)[:, None]
# The chainable schedulers multiply the lr once per step; their error against the closed form grows
# by about one rounding (2^-53) per step, so after 1000 steps ~1e-13.
RECURSION_RTOL = 1e-12
# Below the smallest normal double a learning rate is subnormal: it keeps fewer significant bits the
# smaller it gets, so a relative bound no longer holds (a step of the recursion and the closed form's
# power each round to a multiple of 2^-1074). There the bound is absolute: the relative bound at the
# edge of the normal range, some 4,500 subnormal spacings, far above the few roundings per step.
SMALLEST_NORMAL = np.finfo(np.float64).tiny
SUBNORMAL_ATOL = RECURSION_RTOL * SMALLEST_NORMAL


def assert_recursion_close(got, expected):
    """``got`` follows ``expected`` to RECURSION_RTOL where ``expected`` is a normal number, and to
    SUBNORMAL_ATOL where it is subnormal (or zero)."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape
    normal = np.abs(expected) >= SMALLEST_NORMAL
    np.testing.assert_allclose(got[normal], expected[normal], rtol=RECURSION_RTOL, atol=0)
    np.testing.assert_allclose(got[~normal], expected[~normal], rtol=0, atol=SUBNORMAL_ATOL)


@pytest.mark.parametrize("step_size,gamma", [(1, 0.99), (30, 0.5), (7, 0.1), (STEPS + 5, 0.5)])
def test_step_lr_closed_form(step_size, gamma):
    got = lrs_over(fastopt_sched.StepLR(make_optimizer(), step_size=step_size, gamma=gamma), STEPS)
    assert_recursion_close(got, BASE * gamma ** (EPOCHS // step_size))


@pytest.mark.parametrize("milestones", [[100, 300, 300, 700], [1], [0, 2, 999, 2000], []])
def test_multi_step_lr_closed_form(milestones):
    gamma = 0.3
    got = lrs_over(fastopt_sched.MultiStepLR(make_optimizer(), milestones=milestones, gamma=gamma), STEPS)
    passed = np.searchsorted(np.array(milestones, dtype=int), EPOCHS, side="right")
    assert_recursion_close(got, BASE * gamma**passed)


@pytest.mark.parametrize("gamma", [0.995, 0.9, 1.001])
def test_exponential_lr_closed_form(gamma):
    got = lrs_over(fastopt_sched.ExponentialLR(make_optimizer(), gamma=gamma), STEPS)
    assert_recursion_close(got, BASE * gamma**EPOCHS)


@pytest.mark.parametrize("T_max,eta_min", [(STEPS, 0.0), (130, 1e-3), (1, 0.0), (333, 0.02)])
def test_cosine_annealing_closed_form(T_max, eta_min):
    got = lrs_over(fastopt_sched.CosineAnnealingLR(make_optimizer(), T_max=T_max, eta_min=eta_min), STEPS)
    expected = eta_min + (BASE - eta_min) * (1 + np.cos(np.pi * EPOCHS / T_max)) / 2
    # Near each minimum the lr is a difference of nearly equal terms, so the bound is absolute.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * BASE.max())
    for t in (0, T_max // 2, T_max):
        if t <= STEPS:
            assert got[t] == pytest.approx(eta_min + (BASE - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2)


@pytest.mark.parametrize(
    "start_factor,end_factor,total_iters", [(0.1, 1.0, 50), (1.0 / 3, 1.0, 5), (1.0, 0.0, STEPS), (0.5, 0.2, 300)]
)
def test_linear_lr_closed_form(start_factor, end_factor, total_iters):
    scheduler = fastopt_sched.LinearLR(
        make_optimizer(), start_factor=start_factor, end_factor=end_factor, total_iters=total_iters
    )
    got = lrs_over(scheduler, STEPS)
    factor = start_factor + (end_factor - start_factor) * np.minimum(EPOCHS, total_iters) / total_iters
    np.testing.assert_allclose(got, BASE * factor, rtol=0, atol=1e-12 * BASE.max())


def test_lambda_lr_closed_form():
    scale = Scale(0.01)
    got = lrs_over(fastopt_sched.LambdaLR(make_optimizer(), lr_lambda=[lambda t: 0.97 ** (t // 10), scale]), STEPS)
    expected = np.column_stack([BASE[0] * 0.97 ** (EPOCHS[:, 0] // 10), BASE[1] / (1 + 0.01 * EPOCHS[:, 0])])
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)


def test_sequential_warmup_then_cosine_closed_form():
    warmup, T_max, eta_min = 100, 900, 1e-5
    opt = make_optimizer()
    scheduler = fastopt_sched.SequentialLR(
        opt,
        [fastopt_sched.LinearLR(opt, start_factor=0.01, total_iters=warmup),
         fastopt_sched.CosineAnnealingLR(opt, T_max=T_max, eta_min=eta_min)],
        milestones=[warmup],
    )
    got = lrs_over(scheduler, STEPS)
    t = EPOCHS
    warming = BASE * (0.01 + 0.99 * t / warmup)
    annealing = eta_min + (BASE - eta_min) * (1 + np.cos(np.pi * (t - warmup) / T_max)) / 2
    np.testing.assert_allclose(got, np.where(t < warmup, warming, annealing), rtol=0, atol=1e-12 * BASE.max())


def one_cycle_closed_form(step, max_lr, total_steps, pct_start, div_factor, final_div_factor, three_phase, anneal,
                          base_momentum, max_momentum):
    """lr and momentum of the 1cycle policy at integer steps, from the phase table in the docstring."""
    initial, peak = max_lr / div_factor, max_lr
    final = initial / final_div_factor
    up_end = pct_start * total_steps - 1
    if three_phase:
        ends = [up_end, 2 * pct_start * total_steps - 2, total_steps - 1]
        lr_points = [(initial, peak), (peak, initial), (initial, final)]
        momentum_points = [(max_momentum, base_momentum), (base_momentum, max_momentum), (max_momentum, max_momentum)]
    else:
        ends = [up_end, total_steps - 1]
        lr_points = [(initial, peak), (peak, final)]
        momentum_points = [(max_momentum, base_momentum), (base_momentum, max_momentum)]
    starts = [0.0] + ends[:-1]
    phase = np.minimum(np.searchsorted(np.array(ends), step, side="left"), len(ends) - 1)
    start, end = np.array(starts)[phase], np.array(ends)[phase]
    pct = (step - start) / (end - start)
    weight = (1 + np.cos(np.pi * pct)) / 2 if anneal == "cos" else 1 - pct  # weight of the phase's start value
    lr = np.array([a for a, _ in lr_points])[phase] * weight + np.array([b for _, b in lr_points])[phase] * (1 - weight)
    momentum = (np.array([a for a, _ in momentum_points])[phase] * weight
                + np.array([b for _, b in momentum_points])[phase] * (1 - weight))
    return lr, momentum


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_one_cycle_closed_form(three_phase, anneal, kind):
    cycle = dict(max_lr=0.4, total_steps=STEPS, pct_start=0.25, div_factor=20.0, final_div_factor=500.0,
                     three_phase=three_phase, base_momentum=0.8, max_momentum=0.95)
    opt = make_optimizer(kind, lrs=(0.01,))
    scheduler = fastopt_sched.OneCycleLR(opt, anneal_strategy=anneal, **cycle)
    record = run(scheduler, opt, STEPS)
    lr, momentum = one_cycle_closed_form(np.arange(STEPS + 1), anneal=anneal, **cycle)
    np.testing.assert_allclose([r[0][0] for r in record], lr, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([r[1][0] for r in record], momentum, rtol=1e-12, atol=0)
    assert record[0][0][0] == pytest.approx(0.4 / 20.0)
    # Step total_steps - 1 ends the cycle; torch allows one more step, which extrapolates past it.
    assert record[STEPS - 1][0][0] == pytest.approx(0.4 / 20.0 / 500.0)
    assert min(r[0][0] for r in record[:STEPS]) == pytest.approx(0.4 / 20.0 / 500.0)
    if kind == "adam":
        assert all(g["betas"][1] == 0.999 for g in opt.param_groups)  # only beta1 cycles


def test_one_cycle_stepping_past_total_steps_raises():
    scheduler = fastopt_sched.OneCycleLR(make_optimizer(), max_lr=0.1, total_steps=5)
    for _ in range(5):
        scheduler.step()
    with pytest.raises(ValueError, match="total steps"):
        scheduler.step()


@pytest.mark.parametrize("patience,cooldown", [(0, 0), (3, 0), (2, 5), (10, 1)])
def test_reduce_lr_on_plateau_constant_metric_closed_form(patience, cooldown):
    """With a metric that never improves after epoch 1, reductions come at epochs
    patience + 2 + k (patience + cooldown + 1); the lr is lr0 factor^k clipped at min_lr."""
    factor, min_lr = 0.5, 1e-4
    scheduler = fastopt_sched.ReduceLROnPlateau(make_optimizer(), factor=factor, patience=patience,
                                                cooldown=cooldown, min_lr=min_lr)
    got = []
    for _ in range(200):
        scheduler.step(1.0)
        got.append(scheduler.get_last_lr())
    epochs = np.arange(1, 201)[:, None]
    reductions = np.where(epochs >= patience + 2, (epochs - patience - 2) // (patience + cooldown + 1) + 1, 0)
    expected = np.maximum(BASE * factor**reductions, min_lr)
    # Once clipped to min_lr the last reduction may be skipped by eps; the value is min_lr either way.
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_reduce_lr_on_plateau_never_reduces_while_improving(mode):
    scheduler = fastopt_sched.ReduceLROnPlateau(make_optimizer(), mode=mode, patience=0)
    sign = 1 if mode == "min" else -1
    for epoch in range(100):
        scheduler.step(sign * (1.0 - 0.005 * epoch))  # improves by more than the 1e-4 relative threshold
    assert scheduler.get_last_lr() == list(GROUP_LRS)


def test_reduce_lr_on_plateau_threshold_decides_what_counts_as_improvement():
    rel = fastopt_sched.ReduceLROnPlateau(make_optimizer(), patience=0, threshold=0.1, threshold_mode="rel")
    absolute = fastopt_sched.ReduceLROnPlateau(make_optimizer(), patience=0, threshold=0.1, threshold_mode="abs")
    for scheduler in (rel, absolute):
        scheduler.step(10.0)
    rel.step(9.5)  # 5% better: not below 10 * (1 - 0.1)
    absolute.step(9.5)  # 0.5 better: below 10 - 0.1
    assert rel.get_last_lr() == pytest.approx(list(BASE * 0.1))
    assert absolute.get_last_lr() == list(GROUP_LRS)


def test_reduce_lr_on_plateau_accepts_numpy_scalar_metrics():
    scheduler = fastopt_sched.ReduceLROnPlateau(make_optimizer(), patience=0)
    scheduler.step(np.float32(1.0))
    scheduler.step(np.array(2.0))
    assert scheduler.get_last_lr() == pytest.approx(list(BASE * 0.1))


@settings(max_examples=50, deadline=None)
@given(step_size=st.integers(1, 50), gamma=st.floats(0.05, 1.0), steps=st.integers(0, 300))
@example(step_size=1, gamma=0.06179450557484599, steps=300)   # lr 3.14e-320 at epoch 263: subnormal
@example(step_size=1, gamma=0.05424795067181945, steps=300)   # 2.47e-314 at epoch 247
def test_step_lr_closed_form_any_settings(step_size, gamma, steps):
    got = lrs_over(fastopt_sched.StepLR(make_optimizer(), step_size=step_size, gamma=gamma), steps)
    epochs = np.arange(steps + 1)[:, None]
    assert_recursion_close(got, BASE * gamma ** (epochs // step_size))


# ------------------------------------------------------------------------- state_dict round trips


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("split", [0, 1, 99, 100, 101, 450])
def test_state_dict_round_trip_resumes_the_same_sequence(name, split):
    build = SCHEDULES[name]
    opt = make_optimizer()
    scheduler = build(opt, fastopt_sched)
    for _ in range(split):
        scheduler.step()
    checkpoint = pickle.dumps((scheduler.state_dict(), group_hyperparameters(opt)))
    uninterrupted = run(scheduler, opt, STEPS - split)

    scheduler_state, groups = pickle.loads(checkpoint)
    fresh_opt = make_optimizer()
    fresh = build(fresh_opt, fastopt_sched)  # build first: construction writes the lrs
    restore_group_hyperparameters(fresh_opt, groups)
    fresh.load_state_dict(scheduler_state)
    assert run(fresh, fresh_opt, STEPS - split) == uninterrupted


def test_reduce_lr_on_plateau_state_dict_round_trip():
    metrics = plateau_metrics(seed=3, mode="min")
    opt = make_optimizer()
    scheduler = fastopt_sched.ReduceLROnPlateau(opt, patience=20, cooldown=3, factor=0.7)
    for metric in metrics[:300]:
        scheduler.step(metric)
    checkpoint = pickle.dumps((scheduler.state_dict(), group_hyperparameters(opt)))
    uninterrupted = []
    for metric in metrics[300:]:
        scheduler.step(metric)
        uninterrupted.append(scheduler.get_last_lr())

    state, groups = pickle.loads(checkpoint)
    fresh_opt = make_optimizer()
    fresh = fastopt_sched.ReduceLROnPlateau(fresh_opt, mode="max")  # settings come from the state
    restore_group_hyperparameters(fresh_opt, groups)
    fresh.load_state_dict(state)
    resumed = []
    for metric in metrics[300:]:
        fresh.step(metric)
        resumed.append(fresh.get_last_lr())
    assert resumed == uninterrupted
    assert len({tuple(lr) for lr in uninterrupted}) > 1  # reductions happened after the split


def test_reduce_lr_on_plateau_rejects_a_state_dict_with_an_unknown_mode():
    state = fastopt_sched.ReduceLROnPlateau(make_optimizer()).state_dict()
    state["mode"] = "lowest"
    with pytest.raises(ValueError, match="mode"):
        fastopt_sched.ReduceLROnPlateau(make_optimizer()).load_state_dict(state)


def test_lambda_lr_state_dict_saves_callable_objects_but_not_functions():
    scale = Scale(0.01)
    scheduler = fastopt_sched.LambdaLR(make_optimizer(), lr_lambda=[lambda t: 1.0, scale])
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None, {"rate": 0.01}]
    assert "optimizer" not in state

    other_scale = Scale(0.5)
    other = fastopt_sched.LambdaLR(make_optimizer(), lr_lambda=[lambda t: 2.0, other_scale])
    other.load_state_dict(state)
    assert other_scale.rate == 0.01
    assert other.lr_lambdas[1] is other_scale  # the object is updated, not replaced
    assert state["lr_lambdas"] == [None, {"rate": 0.01}]  # loading does not consume the dict


def test_state_dict_is_a_copy():
    scheduler = fastopt_sched.StepLR(make_optimizer(), step_size=2)
    state = scheduler.state_dict()
    state["base_lrs"].append(1.0)
    assert scheduler.base_lrs == list(GROUP_LRS)
    scheduler.load_state_dict(state)
    state["base_lrs"].append(2.0)  # must not reach the scheduler that loaded it
    assert scheduler.base_lrs == [*GROUP_LRS, 1.0]


def test_sequential_state_dict_nests_the_wrapped_schedulers():
    state = SCHEDULES["SequentialLR-three"](make_optimizer(), fastopt_sched).state_dict()
    assert [s["last_epoch"] for s in state["_schedulers"]] == [0, -1, -1]
    assert state["_schedulers"][1]["step_size"] == 40


# ------------------------------------------------------------------------------- bad arguments


class NoMomentumOptimizer:
    def __init__(self):
        self.param_groups = [{"params": [np.zeros(2)], "lr": 0.1}]
        self.defaults = {"lr": 0.1}


def _other_optimizer(S):
    if S is fastopt_sched:
        return make_optimizer()
    return make_torch_optimizer()


# (builder, exception, text the message must contain, whether torch raises the same exception too)
BAD_ARGUMENTS = {
    "StepLR-step_size-negative": (lambda o, S: S.StepLR(o, step_size=-1), ValueError, "step_size", False),
    "StepLR-step_size-zero": (lambda o, S: S.StepLR(o, step_size=0), ValueError, "step_size", False),
    "StepLR-step_size-float": (lambda o, S: S.StepLR(o, step_size=2.5), TypeError, "step_size", False),
    "MultiStepLR-milestones-decreasing": (lambda o, S: S.MultiStepLR(o, [30, 10]), ValueError, "milestones", False),
    "MultiStepLR-milestones-float": (lambda o, S: S.MultiStepLR(o, [1.5]), TypeError, "milestones", False),
    "CosineAnnealingLR-T_max-zero": (lambda o, S: S.CosineAnnealingLR(o, T_max=0), ValueError, "T_max", False),
    "LinearLR-start_factor-zero": (lambda o, S: S.LinearLR(o, start_factor=0), ValueError, "start_factor", True),
    "LinearLR-start_factor-above-1": (lambda o, S: S.LinearLR(o, start_factor=1.5), ValueError, "start_factor", True),
    "LinearLR-end_factor-negative": (lambda o, S: S.LinearLR(o, end_factor=-0.1), ValueError, "end_factor", True),
    "LinearLR-total_iters-zero": (lambda o, S: S.LinearLR(o, total_iters=0), ValueError, "total_iters", False),
    "LambdaLR-lr_lambda-count": (lambda o, S: S.LambdaLR(o, [lambda t: 1.0]), ValueError, "lr_lambda", True),
    "LambdaLR-lr_lambda-not-callable": (lambda o, S: S.LambdaLR(o, 0.5), TypeError, "lr_lambda", False),
    "ReduceLROnPlateau-factor-1": (lambda o, S: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor", True),
    "ReduceLROnPlateau-factor-negative": (
        lambda o, S: S.ReduceLROnPlateau(o, factor=-0.5), ValueError, "factor", False),
    "ReduceLROnPlateau-mode": (lambda o, S: S.ReduceLROnPlateau(o, mode="lowest"), ValueError, "mode", True),
    "ReduceLROnPlateau-threshold_mode": (
        lambda o, S: S.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode", True),
    "ReduceLROnPlateau-min_lr-count": (
        lambda o, S: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "min_lr", True),
    "ReduceLROnPlateau-patience-negative": (
        lambda o, S: S.ReduceLROnPlateau(o, patience=-1), ValueError, "patience", False),
    "ReduceLROnPlateau-cooldown-negative": (
        lambda o, S: S.ReduceLROnPlateau(o, cooldown=-2), ValueError, "cooldown", False),
    "OneCycleLR-total_steps-missing": (lambda o, S: S.OneCycleLR(o, max_lr=0.1), ValueError, "total_steps", True),
    "OneCycleLR-total_steps-zero": (
        lambda o, S: S.OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError, "total_steps", True),
    "OneCycleLR-epochs-zero": (
        lambda o, S: S.OneCycleLR(o, max_lr=0.1, epochs=0, steps_per_epoch=10), ValueError, "epochs", True),
    "OneCycleLR-steps_per_epoch-float": (
        lambda o, S: S.OneCycleLR(o, max_lr=0.1, epochs=2, steps_per_epoch=2.5), ValueError, "steps_per_epoch", True),
    "OneCycleLR-pct_start": (
        lambda o, S: S.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start", True),
    "OneCycleLR-anneal_strategy": (
        lambda o, S: S.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="exp"), ValueError,
        "anneal_strategy", True),
    "OneCycleLR-max_lr-count": (
        lambda o, S: S.OneCycleLR(o, max_lr=[0.1], total_steps=10), ValueError, "max_lr", True),
    "OneCycleLR-max_momentum-count": (
        lambda o, S: S.OneCycleLR(o, max_lr=0.1, total_steps=10, max_momentum=[0.9, 0.9, 0.9]), ValueError,
        "max_momentum", True),
    "SequentialLR-no-schedulers": (lambda o, S: S.SequentialLR(o, [], milestones=[]), ValueError, "scheduler", True),
    "SequentialLR-milestones-count": (
        lambda o, S: S.SequentialLR(o, [S.StepLR(o, 3), S.StepLR(o, 4)], milestones=[]), ValueError,
        "milestone", True),
    "SequentialLR-milestones-decreasing": (
        lambda o, S: S.SequentialLR(o, [S.StepLR(o, 3), S.StepLR(o, 4), S.StepLR(o, 5)], milestones=[9, 4]),
        ValueError, "milestones", False),
    "SequentialLR-plateau": (
        lambda o, S: S.SequentialLR(o, [S.StepLR(o, 3), S.ReduceLROnPlateau(o)], milestones=[4]), ValueError,
        "ReduceLROnPlateau", True),
    "SequentialLR-other-optimizer": (
        lambda o, S: S.SequentialLR(o, [S.StepLR(o, 3), S.StepLR(_other_optimizer(S), 3)], milestones=[4]),
        ValueError, "optimizer", True),
    "last_epoch-without-initial_lr": (lambda o, S: S.StepLR(o, 3, last_epoch=5), KeyError, "initial_lr", True),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_raise_naming_the_argument(case):
    build, exception, text, _ = BAD_ARGUMENTS[case]
    with pytest.raises(exception, match=text):
        build(make_optimizer(), fastopt_sched)


@pytest.mark.torch
@pytest.mark.parametrize("case", sorted(c for c, v in BAD_ARGUMENTS.items() if v[3]))
def test_torch_rejects_the_same_arguments_with_the_same_exception(case):
    torch = pytest.importorskip("torch")
    build, exception, _, _ = BAD_ARGUMENTS[case]
    with pytest.raises(exception):
        build(make_torch_optimizer(), torch.optim.lr_scheduler)


@pytest.mark.parametrize(
    "build",
    [
        lambda o: fastopt_sched.StepLR(o, 3),
        lambda o: fastopt_sched.MultiStepLR(o, [3]),
        lambda o: fastopt_sched.ExponentialLR(o, 0.9),
        lambda o: fastopt_sched.CosineAnnealingLR(o, 10),
        lambda o: fastopt_sched.LinearLR(o),
        lambda o: fastopt_sched.LambdaLR(o, lambda t: 1.0),
        lambda o: fastopt_sched.SequentialLR(o, [], []),
        lambda o: fastopt_sched.ReduceLROnPlateau(o),
        lambda o: fastopt_sched.OneCycleLR(o, max_lr=0.1, total_steps=10),
    ],
)
def test_an_object_without_param_groups_is_rejected_naming_optimizer(build):
    with pytest.raises(TypeError, match="optimizer"):
        build([np.zeros(3)])


def test_one_cycle_momentum_needs_an_optimizer_with_momentum():
    with pytest.raises(ValueError, match="momentum"):
        fastopt_sched.OneCycleLR(NoMomentumOptimizer(), max_lr=0.1, total_steps=10)
    scheduler = fastopt_sched.OneCycleLR(NoMomentumOptimizer(), max_lr=0.1, total_steps=10, cycle_momentum=False)
    assert scheduler.get_last_lr() == pytest.approx([0.1 / 25])


# ------------------------------------------------------------------------------------- behaviour


def test_construction_sets_initial_lr_and_epoch_zero():
    opt = make_optimizer()
    scheduler = fastopt_sched.LinearLR(opt, start_factor=0.5, total_iters=4)
    assert scheduler.last_epoch == 0
    assert scheduler.base_lrs == list(GROUP_LRS)
    assert [g["initial_lr"] for g in opt.param_groups] == list(GROUP_LRS)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(list(BASE * 0.5))


def test_chainable_schedulers_compose_multiplicatively():
    opt = make_optimizer()
    step = fastopt_sched.StepLR(opt, step_size=10, gamma=0.5)
    exponential = fastopt_sched.ExponentialLR(opt, gamma=0.99)
    for _ in range(50):
        step.step()
        exponential.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(list(BASE * 0.5**5 * 0.99**50), rel=1e-12)


def test_manual_lr_change_is_followed_by_chainable_scheduler():
    opt = make_optimizer()
    scheduler = fastopt_sched.ExponentialLR(opt, gamma=0.5)
    for group in opt.param_groups:
        group["lr"] = 1.0
    scheduler.step()
    assert scheduler.get_last_lr() == [0.5, 0.5]


def test_get_lr_outside_step_warns_like_torch():
    scheduler = fastopt_sched.StepLR(make_optimizer(), 3)
    with pytest.warns(UserWarning, match="get_last_lr"):
        scheduler.get_lr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler.step()


def test_does_not_import_torch():
    code = "import sys, fastopt.lr_scheduler; print('torch' in sys.modules)"
    root = Path(fastopt_sched.__file__).parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
