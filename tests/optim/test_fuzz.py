"""Property-based fuzzing against the NumPy references in ``reference.py``.

Every declared elementwise algorithm, random hyperparameters (from the declared constraints:
tests/_support/_strategies.py), param shapes (including empty and 0-d) and dtypes, param groups,
step counts, None gradients, mid-run learning-rate changes, occasional non-finite gradients (with
and without ``skip_nonfinite``) and 1 or 2 kernel threads. Params and state must be bit-identical to
the reference after every step.

Profiles (tests/conftest.py): ``HYPOTHESIS_PROFILE=ci`` (default, 34 examples per test: ~200 in all) and
``HYPOTHESIS_PROFILE=long`` (10,000 per test)::

    HYPOTHESIS_PROFILE=long pytest tests/optim/test_fuzz.py
"""
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastopt  # noqa: E402
from _strategies import param_groups, param_shapes, require_reference  # noqa: E402
from fastopt._backend import kernels  # noqa: E402
from fastopt.algorithms import ALGORITHMS, BY_NAME  # noqa: E402
from reference import RefOptimizer, clip_grad_norm, clip_grad_value, lerp  # noqa: E402

#: Every elementwise algorithm (one with a compiled driver reduces across elements in its own order,
#: so it agrees with its reference to an ulp of the reductions, not bit for bit: test_optimizers).
#: bitsandbytes' classes (AdamW8bit, ...) follow bitsandbytes' rules and keep 8-bit states: their
#: exact oracle is the float32 run with quantized states (tests/optim/test_eight_bit.py).
NAMES = [a.name for a in ALGORITHMS if a.driver is None and a.bitsandbytes_states is None]

shapes = st.one_of(
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.integers(100, 3000).map(lambda n: (n,)),
)


def algorithm_shapes(name):
    """Param shapes of :data:`shapes`' kinds that algorithm ``name`` takes (drawn, not filtered)."""
    return param_shapes(BY_NAME[name], max_rank=3, max_side=5, long_vectors=(100, 3000))
dtypes = st.sampled_from([np.float32, np.float64])


@st.composite
def scenarios(draw, name):
    n_params = draw(st.integers(1, 4))
    specs = [(draw(algorithm_shapes(name)), draw(dtypes))
             for _ in range(n_params)]
    n_groups = draw(st.integers(1, min(2, n_params)))
    cut = draw(st.integers(1, n_params - 1)) if n_groups == 2 else n_params
    hypers = [draw(param_groups(BY_NAME[name])) for _ in range(n_groups)]
    return {
        "specs": specs, "cut": cut, "hypers": hypers,
        "steps": draw(st.integers(1, 6)),
        "seed": draw(st.integers(0, 2 ** 32 - 1)),
        "none_rate": draw(st.sampled_from([0.0, 0.3])),
        "nonfinite": draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf])),
        "skip_nonfinite": draw(st.booleans()),
        "lr_change": draw(st.sampled_from([None, 0.5, 0.0])),
        "scale": draw(st.sampled_from([1.0, 1e-3, 1e3])),
        "threads": draw(st.sampled_from([1, 1, 2])),
    }


def same(a, b):
    """Bitwise equal, treating any NaN as equal to any NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb)) and a[~na].tobytes() == b[~nb].tobytes()


def check_matches(opt, ref, name):
    for i, (p, q) in enumerate(zip(opt._params, ref.params)):
        assert same(p, q), f"param {i} differs"
    sd = opt.state_dict()["state"]
    for i, ref_state in enumerate(ref.state):
        # The reference has state once a param has stepped (SGD: only with momentum; Adagrad: from
        # construction, with step 0).
        if not ref_state:
            assert i not in sd, f"param {i} has unexpected state"
            continue
        entry = sd[i]
        if name != "SGD":
            assert entry["step"] == ref_state["step"], f"param {i} step"
        for key, value in ref_state.items():
            if key != "step":
                assert same(entry[key], value), f"state {i} {key} differs"


def run_scenario(name, sc):
    note(repr(sc))
    rng = np.random.default_rng(sc["seed"])
    params = [(rng.standard_normal(shape) if shape else np.array(rng.standard_normal())).astype(dt)
              for shape, dt in sc["specs"]]
    cut = sc["cut"]
    group_params = [params[:cut]] + ([params[cut:]] if cut < len(params) else [])
    groups = [dict(h, params=ps) for ps, h in zip(group_params, sc["hypers"])]
    ref = RefOptimizer(name, groups, skip_nonfinite=sc["skip_nonfinite"])
    kwargs = {k: v for k, v in groups[0].items() if k != "params"}
    opt = getattr(fastopt, name)([groups[0]] + groups[1:], skip_nonfinite=sc["skip_nonfinite"], **kwargs)
    old_min = kernels.get_parallel_min_size()
    fastopt.set_num_threads(sc["threads"])
    if sc["threads"] > 1:
        kernels.set_parallel_min_size(64)
    try:
        for t in range(sc["steps"]):
            grads = []
            for p in params:
                if rng.random() < sc["none_rate"]:
                    grads.append(None)
                else:
                    grads.append(np.asarray(rng.standard_normal(p.shape) * sc["scale"]).astype(p.dtype))
            if sc["nonfinite"] is not None and t == sc["steps"] - 1:
                live = [g for g in grads if g is not None and g.size]
                if live:
                    live[rng.integers(len(live))].reshape(-1)[-1] = sc["nonfinite"]
            if sc["lr_change"] is not None and t == 1:
                for ref_group, group in zip(ref.param_groups, opt.param_groups):
                    ref_group["lr"] = group["lr"] = group["lr"] * sc["lr_change"]
            expected = ref.step([None if g is None else g.copy() for g in grads])
            assert opt.step(grads) is expected
            assert opt.skipped_steps == ref.skipped_steps
            check_matches(opt, ref, name)
    finally:
        fastopt.set_num_threads(0)
        kernels.set_parallel_min_size(old_min)


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_optimizer_matches_reference(name):
    require_reference(name)
    @given(sc=scenarios(name))
    def inner(sc):
        run_scenario(name, sc)
    inner()


finite_grads = st.lists(st.tuples(shapes, dtypes, st.sampled_from([1e-3, 1.0, 1e3])), min_size=1, max_size=4)


@given(specs=finite_grads, seed=st.integers(0, 2 ** 32 - 1), max_norm=st.floats(0.0, 100.0),
       norm_type=st.sampled_from([1.0, 2.0, 3.0, 0.5, math.inf]), clip_value=st.floats(0.0, 10.0))
def test_fuzz_clipping_matches_reference(specs, seed, max_norm, norm_type, clip_value):
    rng = np.random.default_rng(seed)
    grads = [np.asarray(rng.standard_normal(shape) * scale).astype(dt) for shape, dt, scale in specs]
    clipped_ref, total_ref = clip_grad_norm(grads, max_norm, norm_type)
    work = [g.copy() for g in grads]
    total = fastopt.clip_grad_norm_(work, max_norm, norm_type=norm_type)
    assert math.isclose(total, total_ref, rel_tol=1e-9, abs_tol=1e-300)
    for a, b in zip(work, clipped_ref):
        tol = 1e-6 if a.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(a, b, rtol=tol, atol=0)
    work = [g.copy() for g in grads]
    fastopt.clip_grad_value_(work, clip_value)
    for a, b in zip(work, clip_grad_value(grads, clip_value)):
        assert a.tobytes() == b.tobytes()
    assert fastopt.grads_finite(grads)


def test_adam_float32_lerp_second_form_matches_torch_formula():
    """beta1 <= 0.5 (so 1 - beta1 >= 0.5): exp_avg must be lerp's second form evaluated in float32."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(1000).astype(np.float32)
    opt = fastopt.Adam([np.zeros(1000, np.float32)], betas=(0.09375, 0.999))
    opt.step([g])
    m = opt.state_dict()["state"][0]["exp_avg"]
    expected = lerp(np.zeros(1000, np.float32), g, np.float32(1 - 0.09375))
    assert m.tobytes() == expected.tobytes()
