"""Flat parameters, thread-count control and thread-count invariance."""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels

SHAPES = [(64, 33), (33,), (33, 10), (10,), ()]


def test_flatten_packs_values_and_views_share_memory():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    flat = fastopt.flatten(arrays)
    assert flat.dtype == np.float32 and flat.size == sum(a.size for a in arrays)
    np.testing.assert_array_equal(flat.data, np.concatenate([a.ravel() for a in arrays]))
    for view, a in zip(flat.params, arrays):
        assert view.shape == a.shape and np.shares_memory(view, flat.data)
        np.testing.assert_array_equal(view, a)
    for view in flat.grads:
        assert np.shares_memory(view, flat.grad)
    flat.grads[1][...] = 3.0
    assert flat.grad[flat.offsets[1]:flat.offsets[2]].tolist() == [3.0] * 33
    flat.zero_grad()
    assert not flat.grad.any()


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_a_step_on_the_flat_buffer_equals_steps_on_the_separate_arrays(name):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    kwargs = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    separate = [a.copy() for a in arrays]
    flat = fastopt.flatten(arrays)
    assert flat.dtype == np.float64
    opt_sep = getattr(fastopt, name)(separate, **kwargs)
    opt_flat = getattr(fastopt, name)([flat.data], **kwargs)
    for t in range(5):
        grads = [np.cos(a + t) for a in separate]
        for view, g in zip(flat.grads, grads):
            view[...] = g
        opt_sep.step(grads)
        opt_flat.step([flat.grad])
    for view, a in zip(flat.params, separate):
        assert view.tobytes() == a.tobytes()


def test_flatten_rejects_bad_dtype_and_shapes():
    with pytest.raises(TypeError, match="dtype"):
        fastopt.FlatParams([(2,)], dtype=np.int32)
    with pytest.raises(ValueError, match=r"shapes\[0\]"):
        fastopt.FlatParams([(-1, 2)])
    flat = fastopt.FlatParams([(2, 2)])
    with pytest.raises(ValueError, match="buffer"):
        flat.views(np.zeros(5))


@pytest.fixture
def restore_threads():
    before = kernels.get_parallel_min_size()
    yield
    fastopt.set_num_threads(0)
    kernels.set_parallel_min_size(before)


def test_set_and_get_num_threads(restore_threads):
    fastopt.set_num_threads(1)
    assert fastopt.get_num_threads() == 1
    fastopt.set_num_threads(3)
    assert fastopt.get_num_threads() == (3 if fastopt.build_info()["threads"] != "none" else 1)
    with pytest.raises(ValueError, match="num_threads"):
        fastopt.set_num_threads(-1)


def test_threadpoolctl_sees_and_limits_fastopts_threads(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if fastopt.build_info()["threads"] == "none":
        pytest.skip("built without threads")
    fastopt.set_num_threads(3)
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "fastopt"]
    assert len(info) == 1 and info[0]["num_threads"] == 3, info
    with threadpoolctl.threadpool_limits(limits=1, user_api="fastopt"):
        assert fastopt.get_num_threads() == 1
    assert fastopt.get_num_threads() == 3
    with threadpoolctl.threadpool_limits(limits=2):     # every library, fastopt included
        assert fastopt.get_num_threads() == 2
    assert fastopt.get_num_threads() == 3


def test_omp_num_threads_sets_the_default(tmp_path):
    import subprocess
    import sys
    code = "import fastopt; print(fastopt.get_num_threads())"
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    # cwd: `python -c` puts it first on sys.path, and it must not be the source tree
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bitwise_identical_for_any_thread_count(name, dtype, restore_threads):
    kernels.set_parallel_min_size(0)    # force the parallel path, even for the small arrays
    shapes = [(1000, 37), (5,), (4097,), (0,), (300, 3)]
    kwargs = dict(lr=0.01, weight_decay=0.01)
    if name == "SGD":
        kwargs.update(momentum=0.9, nesterov=True)
    results = []
    for threads in (1, 2, 3):
        fastopt.set_num_threads(threads)
        rng = np.random.default_rng(5)
        params = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt = getattr(fastopt, name)(params, **kwargs)
        norms = []
        for _ in range(4):
            grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
            norms.append(fastopt.clip_grad_norm_(grads, 10.0))
            opt.step(grads)
        results.append((b"".join(p.tobytes() for p in params), norms))
    assert results[0] == results[1] == results[2]
