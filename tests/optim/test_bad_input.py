"""Bad input: the error type, a message naming the argument, and nothing changed after a failure."""
import copy
import math
import re

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from _strategies import accepts_shape, checked_fields, invalid_examples, invalid_values
from fastopt.algorithms import ALGORITHMS, BY_NAME
from reference import CONFIGS, fingerprint, make_fastopt

NAMES = list(CONFIGS)


def snapshot(opt, params):
    return fingerprint(opt, params)


def assert_unchanged(opt, params, snap):
    """Params, state and hyperparameters are bit-identical to the snapshot."""
    assert fingerprint(opt, params) == snap


def stepped(name, **extra):
    """An optimizer (two groups, two dtypes) that has already taken a step, and its params."""
    cfg = dict(CONFIGS[name][-1]) if name in CONFIGS else {}
    cfg.update(extra)
    a, b, c = _params_for(name, [np.linspace(-1, 1, 6), np.linspace(0, 1, 4, dtype=np.float32).reshape(2, 2),
                                 np.array([0.5, -0.5], dtype=np.float32)])
    opt = make_fastopt(name, [dict(params=[a, b], **cfg), dict(params=[c], **cfg)])
    params = [a, b, c]
    opt.step(good_grads(params))
    return opt, params


def good_grads(params):
    return [np.full(p.shape, 0.1, dtype=p.dtype) for p in params]


# ----------------------------------------------------------------------------------------------
# Params at construction
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad, exc, pattern", [
    (np.zeros(3, dtype=np.int64), TypeError, r"params\[1\].*(dtype|float32)"),
    (np.zeros(3, dtype=np.uint16), TypeError, r"params\[1\].*uint16"),
    (np.zeros(3, dtype=np.complex128), TypeError, r"params\[1\].*complex128"),
    (np.zeros((3, 4))[:, ::2], ValueError, r"params\[1\].*C-contiguous"),
    (np.zeros((4, 3)).T, ValueError, r"params\[1\].*C-contiguous"),
    ([1.0, 2.0], TypeError, r"params\[1\]"),
    (None, TypeError, r"params\[1\]"),
    (1.5, TypeError, r"params\[1\]"),
], ids=["int", "uint16", "complex", "strided", "transposed", "list", "None", "number"])
def test_bad_param(name, bad, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make_fastopt(name, [np.zeros(2), bad])


@pytest.mark.parametrize("name", NAMES)
def test_read_only_param(name):
    p = np.zeros(3)
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\].*read-only"):
        make_fastopt(name, [p])


@pytest.mark.parametrize("name", NAMES)
def test_shared_memory_params(name):
    a = np.zeros(10)
    with pytest.raises(ValueError, match=r"params\[0\].*params\[1\].*share memory"):
        make_fastopt(name, [a, a])
    with pytest.raises(ValueError, match=r"share memory"):
        make_fastopt(name, [a[:5], a[3:8]])
    with pytest.raises(ValueError, match=r"share memory"):
        make_fastopt(name, [{"params": [a[:6]]}, {"params": [a[5:]]}])
    with pytest.raises(ValueError, match=r"share memory"):
        make_fastopt(name, [a, a.view(np.float32)[4:6]])
    make_fastopt(name, [a[:5], a[5:]])   # adjacent, not overlapping: fine
    opt = make_fastopt(name, [a[:5]])
    with pytest.raises(ValueError, match=r"share memory"):
        opt.add_param_group({"params": [a[4:6]]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_empty_params(name):
    with pytest.raises(ValueError, match=r"params"):
        make_fastopt(name, [])
    with pytest.raises(ValueError, match=r"param group 0"):
        make_fastopt(name, [{"params": []}])
    with pytest.raises(TypeError, match=r"params"):
        make_fastopt(name, np.zeros(3))      # a bare array, not a list
    with pytest.raises(TypeError, match=r"params"):
        make_fastopt(name, 3)
    with pytest.raises(TypeError, match=r"set"):
        make_fastopt(name, [{"params": {1, 2}}])


# ----------------------------------------------------------------------------------------------
# Hyperparameters at construction
# ----------------------------------------------------------------------------------------------

#: (algorithm, hyperparameter, invalid value, exception): for every declared algorithm, the values
#: each hyperparameter's constraint refuses (tests/_support/_strategies.py).
BAD_HYPER = [(a.name, h.name, value, exc) for a in ALGORITHMS for h in a.hyperparameters
             if h.name not in a.fixed for value, exc in invalid_examples(h.constraint, h.default)]


def _params_for(name, arrays):
    """``arrays`` as ``name`` takes them: matrices for an algorithm that takes matrices only."""
    algorithm = BY_NAME[name]
    if all(accepts_shape(algorithm, a.shape) for a in arrays):
        return arrays
    return [a.reshape(1, -1) for a in arrays]


@pytest.mark.parametrize("name, key, value, exc", BAD_HYPER,
                         ids=[f"{n}-{k}={v!r}" for n, k, v, _ in BAD_HYPER])
def test_bad_hyperparameter(name, key, value, exc):
    pattern = r"\b%s\b" % key
    with pytest.raises(exc, match=pattern):
        make_fastopt(name, _params_for(name, [np.zeros(3)]), **{key: value})
    with pytest.raises(exc, match=pattern):    # in a param group
        make_fastopt(name, [{"params": _params_for(name, [np.zeros(3)])},
                            {"params": _params_for(name, [np.zeros(2)]), key: value}])
    # Set between steps through param_groups: the next step raises, nothing changes.
    opt, params = stepped(name)
    snap = snapshot(opt, params)
    good = opt.param_groups[1][key]
    opt.param_groups[1][key] = value
    with pytest.raises(exc, match=pattern):
        opt.step(good_grads(params))
    opt.param_groups[1][key] = good
    assert_unchanged(opt, params, snap)
    # And the optimizer still works afterwards.
    opt.step(good_grads(params))


@pytest.mark.parametrize("name", [a.name for a in ALGORITHMS])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_any_refused_value_is_refused(name, data):
    """Beyond the examples above: any value a constraint refuses, drawn at random."""
    algorithm = BY_NAME[name]
    h = data.draw(st.sampled_from([h for h in algorithm.hyperparameters if h.name not in algorithm.fixed]))
    value, exc = data.draw(invalid_values(h.constraint, h.default))
    with pytest.raises(exc, match=r"\b%s\b" % h.name):
        make_fastopt(name, _params_for(name, [np.zeros(3)]), **{h.name: value})


#: Values breaking a declared Rule (a check across hyperparameters: a predicate, so its violations
#: are written out), by algorithm.
RULE_VIOLATIONS = {
    "SGD": [dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1)],
    "Rprop": [dict(etas=(1.0, 0.5)), dict(etas=(0.5, 1.0)), dict(etas=(0.5, 1.2), step_sizes=(1.0, 0.5))],
}
RULE_VIOLATIONS["SGD8bit"] = RULE_VIOLATIONS["SGD"]     # bitsandbytes' SGD and LARS: the same rules
RULE_VIOLATIONS["LARS8bit"] = RULE_VIOLATIONS["SGD"]


@pytest.mark.parametrize("name", [a.name for a in ALGORITHMS if a.rules])
def test_every_rule_is_broken_by_an_example(name):
    algorithm = BY_NAME[name]
    for rule in algorithm.rules:
        if not any(not rule.test(checked_fields(algorithm, v)) for v in RULE_VIOLATIONS.get(name, ())):
            pytest.fail(f"{name}: no example in RULE_VIOLATIONS breaks the rule {rule.message!r}",
                        pytrace=False)


@pytest.mark.parametrize("name, kwargs", [(n, v) for n, vs in RULE_VIOLATIONS.items() for v in vs])
def test_rule_violations_are_refused(name, kwargs):
    rule = next(r for r in BY_NAME[name].rules if not r.test(checked_fields(BY_NAME[name], kwargs)))
    with pytest.raises(rule.error, match=re.escape(rule.message)):
        make_fastopt(name, _params_for(name, [np.zeros(3)]), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1)])
def test_nesterov_requirements(kwargs):
    with pytest.raises(ValueError, match="nesterov"):
        fastopt.SGD([np.zeros(3)], lr=0.1, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_skip_nonfinite_must_be_bool(name):
    with pytest.raises(TypeError, match="skip_nonfinite"):
        make_fastopt(name, [np.zeros(3)], skip_nonfinite=1)


# ----------------------------------------------------------------------------------------------
# Gradients at step time
# ----------------------------------------------------------------------------------------------

def _bad_grads(params):
    """(description, grads, exception, pattern) -- each with one bad entry."""
    a, b, c = params
    g = good_grads(params)
    cases = [
        ("dtype", [g[0], g[1].astype(np.float64), g[2]], TypeError, r"grads\[1\].*dtype"),
        ("dtype-group2", [g[0], g[1], g[2].astype(np.float64)], TypeError, r"grads\[2\].*dtype"),
        ("int", [g[0].astype(np.int64), g[1], g[2]], TypeError, r"grads\[0\]"),
        ("float16", [g[0], g[1].astype(np.float16), g[2]], TypeError, r"grads\[1\]"),
        ("shape", [g[0][:5].copy(), g[1], g[2]], ValueError, r"grads\[0\].*shape"),
        ("ndim", [g[0], g[1].ravel().copy(), g[2]], ValueError, r"grads\[1\].*shape"),
        ("shape-group2", [g[0], g[1], np.zeros(3, dtype=np.float32)], ValueError, r"grads\[2\].*shape"),
        ("non-contiguous", [g[0], np.full((2, 2), 0.1, dtype=np.float32).T, g[2]],
         ValueError, r"grads\[1\].*C-contiguous"),
        ("strided", [np.full(12, 0.1)[::2], g[1], g[2]], ValueError, r"grads\[0\].*C-contiguous"),
        ("own-param", [a, g[1], g[2]], ValueError, r"grads\[0\].*(param|memory)"),
        ("own-param-view", [g[0], g[1], c.view()], ValueError, r"grads\[2\].*(param|memory)"),
        ("too-few", g[:2], ValueError, r"grads"),
        ("too-many", g + [g[0]], ValueError, r"grads"),
        ("None", None, TypeError, r"grads"),
        ("single-array", g[0], TypeError, r"grads"),
        ("string-entry", [g[0], "x", g[2]], TypeError, r"grads\[1\]"),
    ]
    return cases


CASE_IDS = [c[0] for c in _bad_grads([np.zeros(6), np.zeros((2, 2), np.float32), np.zeros(2, np.float32)])]


@pytest.mark.parametrize("skip_nonfinite", [False, True])
@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_grads_leave_everything_unchanged(name, case, skip_nonfinite):
    opt, params = stepped(name)
    opt.skip_nonfinite = skip_nonfinite
    desc, grads, exc, pattern = _bad_grads(params)[case]
    snap = snapshot(opt, params)
    with pytest.raises(exc, match=pattern):
        opt.step(grads)
    assert_unchanged(opt, params, snap)
    assert opt.skipped_steps == 0


def test_non_contiguous_grad_single_group_fast_path():
    p = np.zeros((3, 4))
    opt = fastopt.Adam([p], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\].*C-contiguous"):
        opt.step([np.ones((4, 3)).T])
    assert opt.state == {}
    np.testing.assert_array_equal(p, 0)
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        opt.step([p])
    assert opt.state == {}


def test_params_changed_by_hand():
    opt, params = stepped("Adam")
    snap = snapshot(opt, params)
    opt.param_groups[0]["params"].append(np.zeros(2))
    with pytest.raises(RuntimeError, match="param_groups"):
        opt.step(good_grads(params))
    opt.param_groups[0]["params"].pop()
    assert_unchanged(opt, params, snap)


# ----------------------------------------------------------------------------------------------
# load_state_dict
# ----------------------------------------------------------------------------------------------

def _sd_cases(name):
    cases = []

    def add(desc, mutate, exc, pattern):
        cases.append((desc, mutate, exc, pattern))

    add("not-a-dict", lambda sd: [sd], TypeError, "state_dict")
    add("no-state", lambda sd: {"param_groups": sd["param_groups"]}, TypeError, "state_dict")
    add("one-group-fewer", lambda sd: dict(sd, param_groups=sd["param_groups"][:1]), ValueError,
        r"param groups")
    add("one-group-more", lambda sd: dict(sd, param_groups=sd["param_groups"] + sd["param_groups"][:1]),
        ValueError, r"param groups")

    def regroup(sd):
        sd["param_groups"][0]["params"] = [0]
        sd["param_groups"][1]["params"] = [1, 2]
        return sd
    add("regrouped", regroup, ValueError, r"param_groups'\]\[0\]")

    def bad_lr(sd):
        sd["param_groups"][1]["lr"] = -1.0
        return sd
    add("bad-lr", bad_lr, ValueError, r"param_groups'\]\[1\].*lr")

    def missing_hyper(sd):
        del sd["param_groups"][0]["maximize"]
        return sd
    add("missing-hyper", missing_hyper, ValueError, r"param_groups'\]\[0\].*maximize")

    # the first array state of param 1 (shape (2, 2)) and of param 0 (shape (6,)), from the declaration
    states = [s for s in getattr(fastopt, name).algorithm.state if s.shape != "scalar"]
    first = next(s.name for s in states if s.shape_for((2, 2)) is not None)
    first0 = next(s.name for s in states if s.shape_for((6,)) is not None)

    def wrong_shape(sd):
        sd["state"][1][first] = np.zeros(4, dtype=np.float32)
        return sd
    add("wrong-shape", wrong_shape, ValueError, r"\[1\]\['%s'\].*shape" % first)

    def wrong_dtype(sd):
        sd["state"][1][first] = sd["state"][1][first].astype(np.float64)
        return sd
    add("wrong-dtype", wrong_dtype, TypeError, r"\[1\]\['%s'\].*dtype" % first)

    def not_array(sd):
        sd["state"][0][first0] = sd["state"][0][first0].tolist()
        return sd
    add("list-buffer", not_array, TypeError, r"\[0\]\['%s'\]" % first0)

    def unknown(sd):
        sd["state"][0]["bogus"] = np.zeros(6)
        return sd
    add("unknown-key", unknown, ValueError, r"\[0\].*bogus")

    def bad_index(sd):
        sd["state"][7] = sd["state"][0]
        return sd
    add("bad-index", bad_index, ValueError, r"state'\] has key 7")

    def str_index(sd):
        sd["state"]["0"] = sd["state"].pop(0)
        return sd
    add("str-index", str_index, ValueError, r"key '0'")

    if name == "SGD":
        def extra_step(sd):
            sd["state"][0]["step"] = 3
            return sd
        add("sgd-step", extra_step, ValueError, r"\[0\].*step")
    else:
        def missing_buffer(sd):   # param 2 has shape (2,)
            del sd["state"][2][first0]
            return sd
        add("missing-buffer", missing_buffer, ValueError, r"\[2\].*'%s'" % first0)

        def missing_step(sd):
            del sd["state"][0]["step"]
            return sd
        add("missing-step", missing_step, ValueError, r"\[0\].*'step'")

        for bad in (-1, 1.5, "3", True):
            def bad_step(sd, bad=bad):
                sd["state"][0]["step"] = bad
                return sd
            add(f"step={bad!r}", bad_step, (ValueError, TypeError), r"\[0\]\['step'\]")
    if name in ("Adam", "AdamW"):
        def needs_amsgrad_buffer(sd):
            for g in sd["param_groups"]:
                g["amsgrad"] = True
            for entry in sd["state"].values():
                entry.pop("max_exp_avg_sq", None)
            return sd
        add("amsgrad-without-buffer", needs_amsgrad_buffer, ValueError, r"max_exp_avg_sq")
    if name == "NAdam":
        def scalar_as_vector(sd):
            sd["state"][0]["mu_product"] = np.ones(3, dtype=np.float32)
            return sd
        add("mu_product-shape", scalar_as_vector, ValueError, r"\[0\]\['mu_product'\].*one float")

        def missing_scalar(sd):
            del sd["state"][1]["mu_product"]
            return sd
        add("missing-mu_product", missing_scalar, ValueError, r"\[1\].*'mu_product'")
    return cases


ALL_SD_CASES = [(n, i) for n in NAMES for i in range(len(_sd_cases(n)))]


@pytest.mark.parametrize("name, case", ALL_SD_CASES,
                         ids=[f"{n}-{_sd_cases(n)[i][0]}" for n, i in ALL_SD_CASES])
def test_bad_state_dict(name, case):
    opt, params = stepped(name)
    desc, mutate, exc, pattern = _sd_cases(name)[case]
    sd = mutate(copy.deepcopy(opt.state_dict()))
    # Run a few more steps so that "unchanged" differs from the saved state.
    opt.step(good_grads(params))
    snap = snapshot(opt, params)
    with pytest.raises(exc, match=pattern):
        opt.load_state_dict(sd)
    assert_unchanged(opt, params, snap)
    opt.step(good_grads(params))   # still usable


def test_state_dict_partially_bad_writes_nothing():
    # The first entry is valid, the last one is not: nothing may be loaded.
    opt, params = stepped("Adam")
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"][...] = 123.0
    sd["state"][2]["exp_avg_sq"] = np.zeros(3, dtype=np.float32)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"\[2\]\['exp_avg_sq'\].*shape"):
        opt.load_state_dict(sd)
    assert_unchanged(opt, params, snap)


# ----------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------

def _clip_grads():
    return [np.linspace(-3, 3, 7), np.linspace(1, 2, 4, dtype=np.float32)]


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(max_norm=-1.0), ValueError, "max_norm"),
    (dict(max_norm=math.nan), ValueError, "max_norm"),
    (dict(max_norm="1"), TypeError, "max_norm"),
    (dict(max_norm=1.0, norm_type=0), ValueError, "norm_type"),
    (dict(max_norm=1.0, norm_type=-2.0), ValueError, "norm_type"),
    (dict(max_norm=1.0, norm_type=math.nan), ValueError, "norm_type"),
    (dict(max_norm=1.0, norm_type="two"), ValueError, "norm_type"),
    (dict(max_norm=1.0, norm_type=None), TypeError, "norm_type"),
    (dict(max_norm=1.0, norm_type=True), TypeError, "norm_type"),
    (dict(max_norm=1.0, error_if_nonfinite=1), TypeError, "error_if_nonfinite"),
])
def test_clip_grad_norm_bad_arguments(kwargs, exc, pattern):
    grads = _clip_grads()
    before = [g.copy() for g in grads]
    with pytest.raises(exc, match=pattern):
        fastopt.clip_grad_norm_(grads, **kwargs)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)


@pytest.mark.parametrize("fn", ["norm", "value"])
def test_clip_bad_grads(fn):
    def call(grads):
        if fn == "norm":
            return fastopt.clip_grad_norm_(grads, 0.1)
        return fastopt.clip_grad_value_(grads, 0.1)

    grads = _clip_grads()
    ro = np.linspace(0, 5, 5)
    ro.flags.writeable = False
    for bad, exc, pattern in [
        (ro, ValueError, r"grads\[1\].*read-only"),
        (np.ones(4, dtype=np.int32), TypeError, r"grads\[1\]"),
        (np.ones(4, dtype=np.uint16), TypeError, r"grads\[1\]"),
        (np.ones(4, dtype=np.complex64), TypeError, r"grads\[1\]"),
        (np.ones((4, 4))[:, 1], ValueError, r"grads\[1\].*C-contiguous"),
        (None, TypeError, r"grads\[1\]"),
    ]:
        before = [g.copy() for g in grads]
        with pytest.raises(exc, match=pattern):
            call([grads[0], bad, grads[1]])
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)
    with pytest.raises(TypeError, match="grads"):
        call(None)
    with pytest.raises(TypeError, match="grads"):
        call(3.0)


@pytest.mark.parametrize("value, exc", [(-0.1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                                        (None, TypeError)])
def test_clip_grad_value_bad_value(value, exc):
    grads = _clip_grads()
    before = [g.copy() for g in grads]
    with pytest.raises(exc, match="clip_value"):
        fastopt.clip_grad_value_(grads, value)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameter_deleted_from_group(name):
    opt, params = stepped(name)
    snap = snapshot(opt, params)
    lr = opt.param_groups[1].pop("lr")
    with pytest.raises(ValueError, match="'lr'"):
        opt.step(good_grads(params))
    opt.param_groups[1]["lr"] = lr
    assert_unchanged(opt, params, snap)


def _misaligned(n=5):
    arr = np.frombuffer(bytearray(8 * n + 1), dtype=np.float64, offset=1, count=n)
    assert not arr.flags.aligned and arr.flags.writeable
    return arr


def test_misaligned_arrays():
    with pytest.raises(ValueError, match=r"params\[0\].*aligned"):
        fastopt.SGD([_misaligned()])
    p = np.zeros(5)
    opt = fastopt.Adam([p])
    with pytest.raises(ValueError, match=r"grads\[0\].*aligned"):
        opt.step([_misaligned()])
    assert opt.state == {} and not p.any()
    with pytest.raises(ValueError, match=r"grads\[1\].*aligned"):
        fastopt.clip_grad_norm_([np.ones(2), _misaligned()], 1.0)


def test_grad_overlapping_its_param_shifted():
    buf = np.zeros(8)
    opt = fastopt.SGD([buf[:5]], lr=1.0)
    with pytest.raises(ValueError, match=r"grads\[0\].*(param|memory)"):
        opt.step([buf[2:7]])
    assert not buf.any()


def test_read_only_buffer_param():
    with pytest.raises(ValueError, match=r"params\[0\].*read-only"):
        fastopt.SGD([memoryview(bytes(24)).cast("d")])
    with pytest.raises(TypeError, match=r"params\[0\]"):
        fastopt.SGD([(1.0, 2.0)])     # would be copied: updates would never reach the caller
