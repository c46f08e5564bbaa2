"""clip_grad_norm_, clip_grad_value_ and grads_finite against the NumPy references."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from reference import assert_close, clip_grad_norm, clip_grad_value, random_arrays, total_norm

NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]


def _check_norm(grads, max_norm, norm_type):
    expected, expected_total = clip_grad_norm(grads, max_norm, norm_type)
    total = fastopt.clip_grad_norm_(grads, max_norm, norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(expected_total, rel=1e-12, abs=0.0)
    for g, e in zip(grads, expected):
        assert_close(g, e)
    return total


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.0, 0.1, 1e9])
def test_clip_grad_norm_matches_reference(norm_type, max_norm):
    rng = np.random.default_rng(0)
    shapes = [(13, 7), (5,), (), (0,), (1,)]
    grads = random_arrays(rng, shapes, [np.float32, np.float64, np.float64, np.float32, np.float32])
    before = [g.copy() for g in grads]
    _check_norm(grads, max_norm, norm_type)
    if max_norm == 1e9:
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)
    elif max_norm == 0.0:
        for g in grads:
            assert not np.any(g)
    else:
        assert total_norm(grads, norm_type) <= max_norm * (1 + 1e-5)


def test_clip_grad_norm_simple_values():
    g = np.array([3.0, -4.0])
    assert fastopt.clip_grad_norm_([g], 1.0) == 5.0
    np.testing.assert_allclose(g, [3.0 / (5.0 + 1e-6), -4.0 / (5.0 + 1e-6)], rtol=1e-15)
    h = np.array([3.0, -4.0], dtype=np.float32)
    assert fastopt.clip_grad_norm_(h, 10.0, "inf") == 4.0   # a single array and the string "inf"
    np.testing.assert_array_equal(h, np.array([3.0, -4.0], dtype=np.float32))
    assert fastopt.clip_grad_norm_([np.array([1.0, -2.0])], 1.0, norm_type=1) == 3.0


def test_clip_grad_norm_empty():
    assert fastopt.clip_grad_norm_([], 1.0) == 0.0
    assert fastopt.clip_grad_norm_([np.zeros(0), np.zeros((0, 4), dtype=np.float32)], 1.0) == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_nonfinite(bad):
    g = [np.array([1.0, bad, 2.0]), np.ones(3, dtype=np.float32)]
    before = [x.copy() for x in g]
    with pytest.raises(RuntimeError, match="non-finite"):
        fastopt.clip_grad_norm_(g, 1.0, error_if_nonfinite=True)
    for x, b in zip(g, before):
        np.testing.assert_array_equal(x, b)
    total = fastopt.clip_grad_norm_(g, 1.0)
    if np.isnan(bad):
        assert math.isnan(total)
        assert np.all(np.isnan(g[1]))    # a NaN norm makes the coefficient NaN, as in torch
    else:
        assert total == math.inf
        np.testing.assert_array_equal(g[1], np.zeros(3, dtype=np.float32))   # 1 / inf = 0


def test_clip_grad_norm_large_reduction_matches():
    # Several reduction blocks and arrays straddling them.
    rng = np.random.default_rng(1)
    shapes = [(5000,), (4095,), (3,), (9000,)]
    grads = random_arrays(rng, shapes, [np.float32, np.float64, np.float32, np.float64])
    for norm_type in (2.0, 1.0, math.inf, 3.0):
        _check_norm([g.copy() for g in grads], 1.0, norm_type)


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 6), max_size=3).map(tuple), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from([np.float32, np.float64]), min_size=4, max_size=4),
    max_norm=st.floats(0.0, 20.0),
    norm_type=st.sampled_from(NORM_TYPES),
    seed=st.integers(0, 1000),
)
def test_property_clip_grad_norm(shapes, dtypes, max_norm, norm_type, seed):
    rng = np.random.default_rng(seed)
    grads = random_arrays(rng, shapes, dtypes[:len(shapes)], scale=3.0)
    _check_norm(grads, max_norm, norm_type)


@pytest.mark.parametrize("clip_value", [0.0, 0.25, 5.0])
def test_clip_grad_value_matches_reference(clip_value):
    rng = np.random.default_rng(2)
    grads = random_arrays(rng, [(20,), (3, 3), (), (0,)], [np.float32, np.float64, np.float32, np.float64])
    grads[0][0] = np.nan
    grads[0][1] = np.inf
    grads[1][0, 0] = -np.inf
    expected = clip_grad_value(grads, clip_value)
    assert fastopt.clip_grad_value_(grads, clip_value) is None
    for g, e in zip(grads, expected):
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)
    assert np.isnan(grads[0][0]) and grads[0][1] == clip_value and grads[1][0, 0] == -clip_value


def test_clip_grad_value_single_array():
    g = np.array([-3.0, 0.5, 3.0], dtype=np.float32)
    fastopt.clip_grad_value_(g, 1)
    np.testing.assert_array_equal(g, np.array([-1.0, 0.5, 1.0], dtype=np.float32))


def test_grads_finite():
    assert fastopt.grads_finite([np.ones(3), np.zeros((2, 2), dtype=np.float32)]) is True
    assert fastopt.grads_finite([]) is True
    big = np.ones(10_000, dtype=np.float32)
    big[9_999] = np.nan
    assert fastopt.grads_finite([np.ones(3), big]) is False
    big[9_999] = -np.inf
    assert fastopt.grads_finite(big) is False
    ro = np.ones(3)
    ro.flags.writeable = False
    assert fastopt.grads_finite([ro]) is True   # read-only is fine: it only reads
    # Values whose square overflows are still finite.
    assert fastopt.grads_finite([np.array([np.finfo(np.float64).max, -np.finfo(np.float64).max])]) is True


@pytest.mark.parametrize("norm_type", [math.inf, 2.0, 1.0, 3.0])
@pytest.mark.parametrize("size, pos", [(2, 0), (2, 1), (3, 1), (10_000, 17), (10_000, 4095), (10_000, 9_999)])
def test_clip_grad_norm_nan_anywhere_propagates(norm_type, size, pos):
    """A NaN anywhere makes the norm NaN (torch.linalg.vector_norm's behaviour, also for inf)."""
    g = np.linspace(1.0, 2.0, size)
    g[pos] = np.nan
    assert math.isnan(total_norm([g], norm_type))   # the reference agrees
    total = fastopt.clip_grad_norm_([g.copy()], 1.0, norm_type)
    assert math.isnan(total), f"norm {norm_type} with NaN at {pos} of {size} gave {total}"
    before = g.copy()
    with pytest.raises(RuntimeError, match="non-finite"):
        fastopt.clip_grad_norm_([g], 1.0, norm_type, error_if_nonfinite=True)
    np.testing.assert_array_equal(g, before)
