"""The typed values that cross from the Python layer into the compiled bucket driver.

Hyperparameters reach a bucket as a handle that knows which kernel packed them, so a struct packed
for another kernel is refused even when it has the same size (its bytes would otherwise be read as
this kernel's fields); a bucket is built from a spec whose values are given by name.
"""
import numpy as np
import pytest

import fastopt
from fastopt._backend import kernels


def _lion_and_sgd_hyperparameters():
    """A Lion optimizer, and hyperparameters packed for SGD, whose struct has Lion's size."""
    rng = np.random.default_rng(0)
    param = rng.standard_normal(64).astype(np.float32)
    lion = fastopt.Lion([param], lr=1e-2)
    sgd = fastopt.SGD([np.zeros(64, dtype=np.float32)], lr=0.5, momentum=0.9)
    lion_checked = lion.param_groups[0].checked
    sgd_checked = sgd.param_groups[0].checked
    # the case the byte count alone cannot tell apart
    assert len(bytes(sgd_checked.packed)) == len(bytes(lion_checked.packed))
    return lion, param, lion_checked, sgd_checked


def _unchanged(bucket, param, before):
    np.testing.assert_array_equal(param, before)
    assert not bucket.steps.any()
    assert not any(name in bucket.arenas for name in bucket.state_names)


def test_a_bucket_refuses_hyperparameters_packed_for_another_kernel_of_the_same_size():
    lion, param, lion_checked, sgd_checked = _lion_and_sgd_hyperparameters()
    bucket = lion._buckets[0][0]
    before = param.copy()
    grad = np.ones_like(param)
    with pytest.raises(TypeError, match=r"hyper.*sgd.*lion"):
        bucket.step([grad], sgd_checked.packed, 1.0, lion_checked.active)
    _unchanged(bucket, param, before)
    # the right handle steps
    bucket.step([grad], lion_checked.packed, 1.0, lion_checked.active)
    assert not np.array_equal(param, before)


def test_a_step_refuses_a_group_whose_checked_hyperparameters_belong_to_another_kernel():
    # the optimizer's fast path hands the group's cached struct straight to the bucket
    lion, param, _, sgd_checked = _lion_and_sgd_hyperparameters()
    lion.param_groups[0].checked = sgd_checked
    before = param.copy()
    with pytest.raises(TypeError, match=r"hyper.*sgd.*lion"):
        lion.step([np.ones_like(param)])
    _unchanged(lion._buckets[0][0], param, before)


def test_a_bucket_refuses_raw_bytes_even_of_the_right_size():
    lion, param, lion_checked, _ = _lion_and_sgd_hyperparameters()
    bucket = lion._buckets[0][0]
    before = param.copy()
    with pytest.raises(TypeError, match="hyper"):
        bucket.step([np.ones_like(param)], bytes(lion_checked.packed), 1.0, lion_checked.active)
    _unchanged(bucket, param, before)


def test_packed_hyperparameters_name_their_kernel():
    packed = fastopt.SGD([np.zeros(3, dtype=np.float32)], lr=0.5).param_groups[0].checked.packed
    assert packed.kernel == kernels.kernel_index("sgd")
    assert packed.kernel_name == "sgd"
    with pytest.raises(ValueError, match="kernel"):
        kernels.PackedHyperparameters(10_000, {})


def _spec_values(param):
    return dict(params=[param], indices=[0], kernel=kernels.kernel_index("sgd"),
                state_names=("momentum_buffer",), scalar_states=(), lazy_states=(0,),
                config=kernels.config_index(0, 0, 0, False, False), config_f32_grad=-1,
                state_like=np.empty(0, dtype=np.float32), master=False, seed=0)


def test_a_bucket_is_built_from_a_spec_given_by_name():
    param = np.ones(8, dtype=np.float32)
    spec = kernels.BucketSpec(**_spec_values(param))
    assert spec.kernel == kernels.kernel_index("sgd") and spec.config_f32_grad == -1
    bucket = kernels.bucket_class(None)(spec)
    assert bucket.n_arrays == 1 and bucket.total_size == 8
    hyper = fastopt.SGD([np.zeros(8, dtype=np.float32)], lr=0.5).param_groups[0].checked
    bucket.step([np.ones(8, dtype=np.float32)], hyper.packed, 1.0, hyper.active)
    np.testing.assert_array_equal(param, np.full(8, 0.5, dtype=np.float32))


def test_a_bucket_spec_takes_its_values_by_name_only():
    param = np.ones(8, dtype=np.float32)
    values = _spec_values(param)
    with pytest.raises(TypeError):
        kernels.BucketSpec(*values.values())
    del values["config"]
    with pytest.raises(TypeError, match="config"):
        kernels.BucketSpec(**values)
    with pytest.raises(TypeError):
        kernels.bucket_class(None)(*_spec_values(param).values())


@pytest.mark.parametrize("name", ["Muon", "Adafactor"])
def test_a_compiled_driver_refuses_hyperparameters_packed_for_another_kernel(name):
    rng = np.random.default_rng(1)
    param = rng.standard_normal((8, 6)).astype(np.float32)
    opt = getattr(fastopt, name)([param], lr=1e-2)
    other = fastopt.Adam([np.zeros(3, dtype=np.float32)], lr=0.5).param_groups[0].checked
    bucket = opt._buckets[0][0]
    before = param.copy()
    with pytest.raises(TypeError, match=f"hyper.*adam.*{name.lower()}"):
        bucket.step([np.ones_like(param)], other.packed, 1.0, opt.param_groups[0].checked.active)
    _unchanged(bucket, param, before)
