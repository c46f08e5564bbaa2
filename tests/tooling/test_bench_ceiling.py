"""The benchmark's C references (fastopt/benchmarks/ceiling.c): they compute what they claim, on the
arrays given, and a missing or failing compiler is reported, not raised."""
import os

import numpy as np
import pytest

from fastopt.benchmarks import ceiling



@pytest.fixture(scope="module")
def refs():
    built, why = ceiling.build()
    if built is None:
        pytest.skip(f"no working C compiler: {why}")
    with built:
        yield built


def _arrays(count, n, dtype, rng):
    return [(rng.standard_normal(n) * 0.1).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reads,writes", [(r, w) for r in range(1, 7) for w in range(1, r + 1)])
def test_stream_reads_all_and_adds_to_the_written_arrays(refs, reads, writes, dtype):
    rng = np.random.default_rng(reads * 10 + writes)
    n = 1000 + reads                                 # not a multiple of any vector width
    arrays = _arrays(reads, n, dtype, rng)
    before = [a.copy() for a in arrays]
    timed = refs.stream(arrays[:writes], arrays[writes:])
    assert timed(3) >= 0
    eps = np.finfo(dtype).eps
    if reads > writes:
        t = sum(x.astype(np.float64) ** 2 for x in before[writes:])
    else:
        t = np.full(n, float(dtype(1e-7)))
    for k, (a, b) in enumerate(zip(arrays, before)):
        if k < writes:
            # a few roundings in the array's dtype, each relative to the terms' size
            tolerance = 16 * eps * (np.abs(b) + 3 * t)
            assert np.all(np.abs(a - (b + 3 * t)) <= tolerance), f"array {k}"
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_stream_changes_nothing(refs, dtype):
    arrays = _arrays(3, 777, dtype, np.random.default_rng(0))
    before = [a.copy() for a in arrays]
    assert refs.stream([], arrays)(2) >= 0
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


def test_stream_is_the_same_on_any_thread_count(refs):
    results = []
    for threads in (1, 2, 3):
        refs.set_threads(threads)
        arrays = _arrays(4, 100_003, np.float32, np.random.default_rng(5))
        refs.stream(arrays[:3], arrays[3:])(2)
        results.append([a.tobytes() for a in arrays])
    refs.set_threads(1)
    assert results[0] == results[1] == results[2]


def test_adam_step_follows_the_formula(refs):
    rng = np.random.default_rng(1)
    n = 4099
    p, g = rng.standard_normal(n).astype(np.float32), (rng.standard_normal(n) * 0.1).astype(np.float32)
    m, v = (rng.standard_normal(n) * 0.01).astype(np.float32), (rng.random(n) * 1e-3).astype(np.float32)
    expected_p, expected_m, expected_v = p.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    # The C step's float32 constants, and the bias corrections of step 10.
    lr, b1, b2, eps = (float(np.float32(x)) for x in (1e-3, 0.9, 0.999, 1e-8))
    bc1, bc2 = 1 - b1 ** 10, 1 - b2 ** 10
    for _ in range(2):
        expected_m = b1 * expected_m + (1 - b1) * g
        expected_v = b2 * expected_v + (1 - b2) * g.astype(np.float64) ** 2
        expected_p = expected_p - lr / bc1 * expected_m / (np.sqrt(expected_v) / np.sqrt(bc2) + eps)
    assert refs.adam_f32(p, g, m, v)(2) >= 0
    np.testing.assert_allclose(m, expected_m, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(v, expected_v, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(p, expected_p, rtol=1e-5, atol=1e-6)


def test_bad_arrays_are_refused(refs):
    f32 = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="1 to 6"):
        refs.stream([f32.copy() for _ in range(4)], [f32.copy() for _ in range(3)])
    with pytest.raises(ValueError, match="one size"):
        refs.stream([f32], [np.zeros(10, np.float64)])
    with pytest.raises(ValueError, match="one size"):
        refs.stream([f32], [np.zeros(11, np.float32)])
    with pytest.raises(TypeError, match="float32 or float64"):
        refs.stream([np.zeros(10, np.int64)], [])
    with pytest.raises(ValueError, match="writeable"):
        ro = np.zeros(10, np.float32)
        ro.flags.writeable = False
        refs.stream([ro], [])
    with pytest.raises(ValueError):
        refs.adam_f32(f32, f32, f32, np.zeros(10, np.float64))


def test_timed_callable_keeps_its_buffers_alive(refs):
    timed = refs.stream([np.ones(10_000, np.float32)], [np.ones(10_000, np.float32)])
    import gc
    gc.collect()
    assert timed(1) >= 0 and timed.arrays[0][0] == pytest.approx(2.0)


def test_a_failing_compiler_is_a_reason_not_an_error(monkeypatch, tmp_path):
    before = set(os.listdir(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(ceiling, "compiler", lambda: ["false"])
    refs, why = ceiling.build()
    assert refs is None and why.startswith("false could not build ceiling.c")
    assert set(os.listdir(tmp_path)) == before             # its temporary directory is gone
    monkeypatch.setattr(ceiling, "compiler", lambda: None)
    assert ceiling.build() == (None, "no C compiler found (install gcc or clang, or set CC)")


def test_close_removes_the_build_directory():
    refs, why = ceiling.build()
    if refs is None:
        pytest.skip(why)
    assert os.path.isdir(refs.workdir)
    refs.close()
    assert not os.path.exists(refs.workdir)
