"""Focused regression tests for bugs that once passed the rest of the suite, or were caught only by
one or two incidental tests: each test below fails, with a detail that names the defect, when the
bug it is named after is planted in the library (one at a time).

* clipping inside the step must scale every chunk of a large bucket, not only the first;
* OWL-QN's pseudo-gradient at x_i = 0 (checked on a first iterate worked out by hand);
* Muon's transposition rule for square matrices (bit for bit against the NumPy reference);
* stochastic rounding of bfloat16 stores must be unbiased;
* fastopt.torch must re-read a tensor-valued ``lr`` that changed in place;
* every mutation path of a ParamGroup must take effect at the next step;
* the torch adapter's fast gather must not read a non-contiguous ``.grad`` as if it were
  contiguous;
* a checkpoint's cleanup of abandoned temporaries must never remove a live save's temporary.
"""
import math
import threading

import numpy as np
import pytest

import fastopt
from fastopt import _atomic_file, checkpoint
from reference import RefOptimizer


# ----------------------------------------------------------------------------------------------
# Clipping inside the step, over a bucket cut into many chunks
# ----------------------------------------------------------------------------------------------

#: Two params whose 370,001 elements span many of the step's chunks (a chunk holds ~16,384
#: elements' worth of work), with a ragged end.
LARGE_SIZES = (300_000, 70_001)
CLIP_CONFIGS = [
    ("Adam", dict(lr=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1)),
    ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,cfg", CLIP_CONFIGS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(CLIP_CONFIGS)])
def test_clip_in_step_scales_every_chunk_of_a_large_bucket(name, cfg, dtype, threads,
                                                           thread_settings):
    """``step(grads, max_norm=...)`` equals ``clip_grad_norm_`` then ``step`` bit for bit on
    params large enough to be cut into many chunks: the clipping coefficient must reach every
    chunk, whichever thread runs it (chunks do not depend on the thread count, so comparing thread
    counts with each other cannot see a chunk that skips the coefficient)."""
    fastopt.set_num_threads(threads)
    thread_settings.set_parallel_min_size(0)
    rng = np.random.default_rng(11)
    fused_params = [rng.standard_normal(n).astype(dtype) for n in LARGE_SIZES]
    plain_params = [p.copy() for p in fused_params]
    fused = getattr(fastopt, name)(fused_params, **cfg)
    plain = getattr(fastopt, name)(plain_params, **cfg)
    for step in range(3):
        grads = [(3.0 * rng.standard_normal(n)).astype(dtype) for n in LARGE_SIZES]
        fused.step(grads, max_norm=1.0)          # the norm is ~1800: every step clips
        clipped = [g.copy() for g in grads]
        norm = fastopt.clip_grad_norm_(clipped, 1.0)
        assert norm > 100.0
        plain.step(clipped)
        assert fused.grad_norm == norm
        differing = sum(int(np.count_nonzero(a != b)) for a, b in zip(fused_params, plain_params))
        assert differing == 0, (
            f"step {step}: {differing} of {sum(LARGE_SIZES)} elements differ from "
            "clip_grad_norm_ + step (the clipping coefficient did not reach every chunk)")


# ----------------------------------------------------------------------------------------------
# OWL-QN: the pseudo-gradient at x_i = 0
# ----------------------------------------------------------------------------------------------

#: f(x) = 0.5 ||x - A||^2 with an L1 weight of 1 on every coordinate, started at x = 0.
OWLQN_TARGET = np.array([2.0, -3.0, 0.5, -0.25])


def _half_squared_distance(x):
    d = x - OWLQN_TARGET
    return 0.5 * float(d @ d), d


def test_owlqn_first_iterate_follows_the_pseudo_gradient_at_zero():
    """The first OWL-QN iterate of a problem small enough to solve by hand.

    Minimize F(x) = f(x) + sum_i |x_i| with f(x) = 0.5 ||x - a||^2, a = (2, -3, 0.5, -0.25),
    from x0 = 0, so g = grad f(x0) = x0 - a = (-2, 3, -0.5, 0.25). Every coordinate sits at 0, where
    |x_i| is not differentiable, and the pseudo-gradient of Andrew & Gao (2007), eq. (4), is

        pg_i = g_i + w_i   if g_i + w_i < 0     (F decreases as x_i grows)
             = g_i - w_i   if g_i - w_i > 0     (F decreases as x_i shrinks)
             = 0           otherwise            (0 is optimal along x_i)

    With w_i = 1: pg_1 = -2 + 1 = -1 (first case), pg_2 = 3 - 1 = 2 (second case: the branch
    tests of converged solutions never take, since at a minimum every coordinate at 0 has
    |g_i| <= w_i), and pg_3 = pg_4 = 0 (|g_i| <= 1). So pg = (-1, 2, 0, 0).

    With no curvature pairs yet the direction is steepest descent, d = -pg = (1, -2, 0, 0); no
    component of d disagrees in sign with -pg, so none is zeroed. The first trial step is
    1 / ||d|| = 1 / sqrt(5) (as L-BFGS-B's), so the trial point is x0 + d / sqrt(5) =
    (1, -2, 0, 0) / sqrt(5); the orthant projection keeps it (each moved coordinate has the sign of
    -pg_i, the orthant chosen at x_i = 0). The line search accepts it at once: F(x0) = 6.65625
    and F(trial) = 0.5 ((2 - 1/sqrt5)^2 + (3 - 2/sqrt5)^2 + 0.25 + 0.0625) + 3/sqrt5 ~ 4.92, far
    below F(x0) + c1 pg'(trial - x0) = 6.65625 - c1 sqrt(5). So x1 = (1/sqrt5, -2/sqrt5, 0, 0)
    ~ (0.4472, -0.8944, 0, 0); the wrong sign for pg_2 would give (1, -4, 0, 0)/sqrt(17) or
    (1, 2, 0, 0)/sqrt(5) instead.
    """
    iterates = []
    result = fastopt.minimize_lbfgs(_half_squared_distance, np.zeros(4), jac=True, l1=1.0,
                                    maxiter=1, callback=lambda xk: iterates.append(np.copy(xk)))
    expected = np.array([1.0, -2.0, 0.0, 0.0]) / math.sqrt(5.0)
    assert len(iterates) == 1
    np.testing.assert_allclose(iterates[0], expected, rtol=1e-14, atol=0.0)
    np.testing.assert_allclose(result.x, expected, rtol=1e-14, atol=0.0)
    expected_f = _half_squared_distance(expected)[0] + np.abs(expected).sum()
    assert result.fun == pytest.approx(expected_f, rel=1e-14)
    # The same by symmetry: mirroring the problem (a -> -a) mirrors the first iterate.
    mirrored = []

    def mirrored_problem(x):
        value, gradient = _half_squared_distance(-x)
        return value, -gradient

    fastopt.minimize_lbfgs(mirrored_problem, np.zeros(4), jac=True, l1=1.0, maxiter=1,
                           callback=lambda xk: mirrored.append(np.copy(xk)))
    np.testing.assert_allclose(mirrored[0], -expected, rtol=1e-14, atol=0.0)


# ----------------------------------------------------------------------------------------------
# Muon: square matrices, bit for bit
# ----------------------------------------------------------------------------------------------

MUON_CONFIGS = [dict(lr=0.02), dict(lr=0.02, nesterov=False, weight_decay=0.0, ns_steps=3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", MUON_CONFIGS, ids=["default", "ns3"])
@pytest.mark.parametrize("steps", [1, 3])
def test_muon_square_matrices_match_the_reference_bit_for_bit(steps, cfg, dtype):
    """Square matrices are orthogonalized as they are (X X^T, not the transposed problem: torch
    transposes only when rows > cols). For matrices this small (at most 16 terms per product) the
    BLAS products and NumPy's sum in the same order, so fastopt equals tests/_support/reference.py bit for
    bit; the transposed problem gives the same matrix only up to rounding, so taking it for a
    square matrix changes some bits."""
    differing = []
    for n in range(2, 17):
        rng = np.random.default_rng(1000 + n)
        param = rng.standard_normal((n, n)).astype(dtype)
        ref = RefOptimizer("Muon", [param.copy()], **cfg)
        opt = fastopt.Muon([param], **cfg)
        for _ in range(steps):
            grad = rng.standard_normal((n, n)).astype(dtype)
            opt.step([grad])
            ref.step([grad])
        if param.tobytes() != ref.params[0].tobytes():
            differing.append((n, int(np.count_nonzero(param != ref.params[0]))))
    assert not differing, f"(size, elements that differ) for {len(differing)} of 15 sizes: {differing}"


# ----------------------------------------------------------------------------------------------
# Stochastic rounding is unbiased
# ----------------------------------------------------------------------------------------------

def _bf16_params(values):
    """A bfloat16 param (ml_dtypes, else fastopt's own bfloat16 view) holding ``values``."""
    from fastopt import _dtypes
    dtype = _dtypes.bf16_dtype()
    if dtype is not None:
        return np.asarray(values, dtype=np.float32).astype(dtype)
    bits = (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return bits.view(_dtypes.BF16Array)


def _as_float32(bf16):
    return (np.asarray(bf16).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounding_is_unbiased(sign):
    """SGD (lr = 1) moves bfloat16 params from +-1 by -+2**-9, to exactly a quarter of the way
    from +-1 to the next bfloat16 value away from zero, +-(1 + 2**-7): unbiased stochastic rounding
    goes there with probability 1/4 and back to +-1 otherwise. Over 65,536 elements the fraction
    rounded away from zero must be 1/4 within six standard deviations of a binomial count, and
    both results must occur (rounding that always truncates never rounds away from zero)."""
    n = 1 << 16
    params = _bf16_params(np.full(n, sign))
    grads = _bf16_params(np.full(n, sign * -(2.0 ** -9)))
    opt = fastopt.SGD([params], lr=1.0, stochastic_rounding=True, seed=7)
    opt.step([grads])
    values = _as_float32(params)
    away, back = sign * (1.0 + 2.0 ** -7), sign * 1.0
    assert np.all((values == away) | (values == back)), np.unique(values)
    fraction = np.count_nonzero(values == away) / n
    bound = 6.0 * math.sqrt(0.25 * 0.75 / n)
    assert abs(fraction - 0.25) <= bound, (
        f"{fraction:.4f} of the values rounded away from zero; unbiased rounding gives 0.25 "
        f"+- {bound:.4f}")


# ----------------------------------------------------------------------------------------------
# fastopt.torch: a tensor lr changed in place
# ----------------------------------------------------------------------------------------------

def test_torch_adapter_reads_a_tensor_lr_changed_in_place():
    """torch.optim reads a tensor ``lr`` at every step, so ``lr.fill_(...)`` between steps changes
    the next step; fastopt.torch must not cache the value it read first."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as fastopt_torch
    trajectories = []
    for make in (torch.optim.Adam, fastopt_torch.Adam):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(64))
        lr = torch.tensor(0.01)
        opt = make([param], lr=lr)
        points = []
        for step, new_lr in enumerate([0.1, 0.003, 0.05, 0.05]):
            param.grad = torch.sin(torch.arange(64, dtype=torch.float32) * 0.3 + step)
            opt.step()
            points.append(param.detach().clone().numpy())
            lr.fill_(new_lr)
        trajectories.append(np.array(points))
    theirs, ours = trajectories
    for step in range(len(theirs)):
        np.testing.assert_allclose(ours[step], theirs[step], rtol=1e-6, atol=1e-7,
                                   err_msg=f"step {step}: not torch.optim.Adam's")


# ----------------------------------------------------------------------------------------------
# ParamGroup: every mutation takes effect at the next step
# ----------------------------------------------------------------------------------------------

def _set_item(group, key, value):
    group[key] = value


def _update_kwargs(group, key, value):
    group.update(**{key: value})


def _update_dict(group, key, value):
    group.update({key: value})


def _update_pairs(group, key, value):
    group.update([(key, value)])


def _in_place_or(group, key, value):
    group |= {key: value}


def _delete_then_setdefault(group, key, value):
    del group[key]
    group.setdefault(key, value)


def _pop_then_setdefault(group, key, value):
    group.pop(key)
    group.setdefault(key, value)


MUTATIONS = [_set_item, _update_kwargs, _update_dict, _update_pairs, _in_place_or,
             _delete_then_setdefault, _pop_then_setdefault]


@pytest.mark.parametrize("key,value", [("lr", 0.25), ("weight_decay", 0.5), ("maximize", True)])
@pytest.mark.parametrize("mutate", MUTATIONS, ids=[m.__name__.strip("_") for m in MUTATIONS])
def test_param_group_mutation_takes_effect_at_the_next_step(mutate, key, value):
    """After a step (which caches the group's checked hyperparameters), changing a hyperparameter
    by any of dict's mutation methods must be seen by the next step: it equals the step of a
    freshly built optimizer with the new value (plain SGD keeps no state, so the fresh one steps
    the same params from the same point)."""
    rng = np.random.default_rng(5)
    param = rng.standard_normal(33)
    opt = fastopt.SGD([param], lr=0.1, weight_decay=0.0)
    opt.step([rng.standard_normal(33)])
    group = opt.param_groups[0]
    mutate(group, key, value)
    assert group[key] == value
    grad = rng.standard_normal(33)
    fresh_param = param.copy()
    fresh = fastopt.SGD([fresh_param], **{"lr": 0.1, "weight_decay": 0.0, key: value})
    opt.step([grad])
    fresh.step([grad])
    assert param.tobytes() == fresh_param.tobytes(), f"{mutate.__name__}({key}={value}) was not seen"


@pytest.mark.parametrize("remove", ["del", "pop", "popitem", "clear"])
def test_param_group_removing_a_hyperparameter_is_seen_at_the_next_step(remove):
    """A group that lost a hyperparameter after a step is checked again: the next step raises,
    and changes nothing."""
    param = np.ones(5)
    opt = fastopt.SGD([param], lr=0.1)
    opt.step([np.ones(5)])
    group = opt.param_groups[0]
    if remove == "del":
        del group["lr"]
    elif remove == "pop":
        group.pop("lr")
    elif remove == "popitem":
        group.popitem()
    else:
        group.clear()
    before = param.copy()
    with pytest.raises((ValueError, KeyError)):
        opt.step([np.ones(5)])
    assert param.tobytes() == before.tobytes()


def test_torch_param_group_update_takes_effect_at_the_next_step():
    """The same through fastopt.torch (its groups are ParamGroups too), against torch.optim.SGD."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as fastopt_torch
    results = []
    for make in (torch.optim.SGD, fastopt_torch.SGD):
        param = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 40, dtype=torch.float64))
        opt = make([param], lr=0.1, momentum=0.5)
        for step, change in enumerate([dict(lr=0.3), dict(momentum=0.0, lr=0.05), None]):
            param.grad = torch.cos(torch.arange(40, dtype=torch.float64) + step)
            opt.step()
            if change is not None:
                opt.param_groups[0].update(change)
        results.append(param.detach().numpy().copy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# fastopt.torch: non-contiguous gradients
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["transposed", "every-other-column"])
def test_torch_non_contiguous_grad_is_refused_and_changes_nothing(layout):
    """fastopt.torch never copies a gradient: a non-contiguous ``.grad`` (same shape and element
    count as its param, so only its strides tell) is refused with a ValueError that says so, before
    anything is written; the fast gather must hand it to the precise checks instead of reading
    its memory as if it were contiguous."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as fastopt_torch
    torch.manual_seed(3)
    param = torch.nn.Parameter(torch.randn(4, 5))
    other = torch.nn.Parameter(torch.randn(7))
    opt = fastopt_torch.Adam([other, param], lr=0.1)
    if layout == "transposed":
        grad = torch.randn(5, 4).t()
    else:
        grad = torch.randn(4, 10)[:, ::2]
    assert grad.shape == param.shape and not grad.is_contiguous()
    param.grad = grad
    other.grad = torch.ones(7)
    before = [param.detach().clone(), other.detach().clone()]
    with pytest.raises(ValueError, match="not contiguous"):
        opt.step()
    assert torch.equal(param.detach(), before[0]) and torch.equal(other.detach(), before[1])
    assert not opt.state
    # Made contiguous, the same gradient steps exactly as torch.optim.Adam.
    param.grad = grad.contiguous()
    opt.step()
    twin = torch.nn.Parameter(before[0].clone())
    twin_other = torch.nn.Parameter(before[1].clone())
    reference = torch.optim.Adam([twin_other, twin], lr=0.1)
    twin.grad, twin_other.grad = grad.contiguous(), torch.ones(7)
    reference.step()
    torch.testing.assert_close(param.detach(), twin.detach(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Checkpoints: cleanup never removes a live save's temporary
# ----------------------------------------------------------------------------------------------

def _temporaries(path):
    prefix = _atomic_file.temporary_prefix(str(path))
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(prefix))


def _optimizer(value):
    param = np.full(8, value)
    opt = fastopt.Adam([param], lr=0.1)
    opt.step([np.full(8, value)])
    return opt, param


@pytest.mark.skipif(_atomic_file.fcntl is None, reason="saves lock their temporaries with flock")
def test_cleanup_while_a_save_writes_keeps_its_temporary(tmp_path, monkeypatch):
    """While save A is writing its temporary file (it holds the file's lock), another save's
    cleanup runs -- forced at exactly that moment by a hook on the write, not by timing. The
    cleanup must leave A's temporary alone (it can take no lock on it), so A's rename succeeds and
    the target holds A's checkpoint; an abandoned temporary (no lock) is still removed."""
    path = tmp_path / "opt.ckpt"
    abandoned = tmp_path / (_atomic_file.temporary_prefix(str(path)) + "0" * 16 + _atomic_file.TEMP_SUFFIX)
    abandoned.write_bytes(b"left by a killed save")
    real_savez = np.savez
    real_remove = checkpoint.remove_stale_temporaries
    seen = {}

    def savez_then_clean(file, **arrays):
        real_savez(file, **arrays)
        seen["during"] = _temporaries(path)
        seen["removed"] = real_remove(str(path))    # another save's cleanup, right now
        seen["after"] = _temporaries(path)

    opt_a, _ = _optimizer(1.0)
    # A's own cleanup (at its start) removes the abandoned file; put another one back after it.
    def cleanup_then_abandon(p):
        removed = real_remove(p)
        abandoned.write_bytes(b"left by a killed save")
        return removed

    monkeypatch.setattr(checkpoint, "remove_stale_temporaries", cleanup_then_abandon)
    monkeypatch.setattr(checkpoint.np, "savez", savez_then_clean)
    checkpoint.save(opt_a, str(path))
    monkeypatch.undo()
    assert len(seen["during"]) == 2               # A's live temporary and the abandoned one
    assert seen["removed"] == 1                   # only the abandoned one
    assert seen["after"] == [n for n in seen["during"] if n != abandoned.name]
    assert _temporaries(path) == []
    restored, _ = _optimizer(5.0)
    checkpoint.load(restored, str(path))
    np.testing.assert_array_equal(restored.state[0]["exp_avg"], opt_a.state[0]["exp_avg"])


@pytest.mark.skipif(_atomic_file.fcntl is None, reason="saves lock their temporaries with flock")
def test_two_threads_saving_to_one_path_while_one_cleans(tmp_path, monkeypatch):
    """Two threads save to the same path; the second starts (and runs its cleanup) while the first
    is in the middle of writing, then finishes first. Ordered with events, not sleeps. Both saves
    succeed, no temporary is left, and the target holds the checkpoint renamed last (the first)."""
    path = tmp_path / "shared.ckpt"
    real_savez = np.savez
    first_writing = threading.Event()
    second_done = threading.Event()
    errors = []

    def savez(file, **arrays):
        if threading.current_thread().name == "first":
            real_savez(file, **arrays)
            first_writing.set()
            assert second_done.wait(60), "the second save did not finish"
        else:
            real_savez(file, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", savez)
    opt_first, _ = _optimizer(1.0)
    opt_second, _ = _optimizer(2.0)

    def run(opt, after=None, done=None):
        try:
            if after is not None:
                assert after.wait(60), "the first save did not start writing"
            checkpoint.save(opt, str(path))
        except BaseException as exc:     # reported below, in the test's thread
            errors.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")
            if done is not None:
                done.set()
            first_writing.set()
            return
        if done is not None:
            done.set()

    first = threading.Thread(target=run, args=(opt_first,), name="first")
    second = threading.Thread(target=run, args=(opt_second, first_writing, second_done),
                              name="second")
    first.start()
    second.start()
    first.join(120)
    second.join(120)
    monkeypatch.undo()
    assert not errors, errors
    assert _temporaries(path) == []
    restored, _ = _optimizer(5.0)
    checkpoint.load(restored, str(path))
    np.testing.assert_array_equal(restored.state[0]["exp_avg"], opt_first.state[0]["exp_avg"])


GROUP_MUTATIONS = {
    "setitem": lambda g: g.__setitem__("lr", 0.2),
    "delitem": lambda g: g.__delitem__("lr"),
    "update": lambda g: g.update(lr=0.2),
    "ior": lambda g: g.__ior__({"lr": 0.2}),
    "setdefault-missing-key": lambda g: g.setdefault("note", "added"),
    "pop": lambda g: g.pop("lr"),
    "pop-missing-with-default": lambda g: g.pop("absent", None),
    "popitem": lambda g: g.popitem(),
    "clear": lambda g: g.clear(),
}


@pytest.mark.parametrize("mutate", list(GROUP_MUTATIONS))
def test_param_group_forgets_its_check_on_every_mutation(mutate):
    """The invariant behind the tests above, for every dict method that can change a group --
    including those whose effect a step cannot show on its own (``setdefault`` of a missing key,
    which is only possible after a removal that already made the group re-checked, and ``clear``):
    after a step has checked the group, the mutation drops the remembered check."""
    opt = fastopt.SGD([np.ones(3)], lr=0.1)
    opt.step([np.ones(3)])
    group = opt.param_groups[0]
    assert group.checked is not None        # remembered by the step
    GROUP_MUTATIONS[mutate](group)
    assert group.checked is None, f"{mutate} kept the group's old check"
