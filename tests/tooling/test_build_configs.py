"""The build generates loops only for the storage configurations the Python layer can select
(build_tools/codegen.py's ``reachable``): every choice a user can make must still find its loop.

The choices are enumerated, not listed: every algorithm x param dtype x ``master_weights`` x
``state_dtype`` x ``stochastic_rounding``; each combination the optimizer accepts must step with a
gradient of the param's dtype and, for a half-precision param, with a float32 gradient too. A
configuration without a compiled loop shows as ``no storage configuration`` at construction or as a
refused gradient at the step.
"""
import itertools

import numpy as np
import pytest

import fastopt
from fastopt import _backend, _dtypes
from fastopt.algorithms import ALGORITHMS
from reference import REQUIRED_ARGUMENTS  # (tests/_support: pytest's pythonpath)

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)
CHOICES = list(itertools.product((False, True), (None, "float32", "bfloat16"), (False, True)))


def _selectable(algorithm, dtype):
    """(options, optimizer) for every choice of options the optimizer accepts for ``dtype`` params."""
    cls = getattr(fastopt, algorithm.name)
    out = []
    for master_weights, state_dtype, stochastic_rounding in CHOICES:
        options = dict(master_weights=master_weights, state_dtype=state_dtype,
                       stochastic_rounding=stochastic_rounding)
        param = np.linspace(-1, 1, 4 * 8).reshape(4, 8).astype(dtype)
        try:
            optimizer = cls([param], **options, **REQUIRED_ARGUMENTS.get(algorithm.name, {}))
        except (TypeError, ValueError) as error:
            assert "storage configuration" not in str(error), (algorithm.name, dtype, options)
            continue   # a choice the Python layer refuses
        out.append((options, optimizer))
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_every_selectable_configuration_has_a_loop(algorithm):
    selected = 0
    for dtype in DTYPES:
        half = np.dtype(dtype).itemsize == 2
        grad_dtypes = (dtype, np.float32) if half else (dtype,)
        for options, optimizer in _selectable(algorithm, dtype):
            for grad_dtype in grad_dtypes:
                # a missing loop raises here (a refused gradient), never runs a NULL entry
                optimizer.step([np.full((4, 8), 0.5, dtype=grad_dtype)])
                param = optimizer.param_groups[0]["params"][0]
                assert param.dtype == np.dtype(dtype)
                assert np.isfinite(param.astype(np.float64)).all(), (algorithm.name, dtype, options)
                selected += 1
    assert selected >= 2   # float32 and float64 at least


def test_a_configuration_the_build_left_out_is_refused(monkeypatch):
    """The kernel table's entry of a left-out configuration is NULL: the optimizer must refuse it
    (as the test above would then fail) rather than call it."""
    adam = fastopt.algorithms.BY_NAME["Adam"].kernel
    kernel = _backend.kernel_index(adam)
    configs = list(_backend.selected.KERNEL_CONFIGS)
    f32 = _backend.config_index(_dtypes.F32, _dtypes.F32, _dtypes.F32, False, False, adam)
    assert f32 >= 0
    configs[kernel] = tuple(c for c in configs[kernel] if c != f32)
    monkeypatch.setattr(_backend.selected, "KERNEL_CONFIGS", tuple(configs))
    with pytest.raises(ValueError, match="no storage configuration"):
        fastopt.Adam([np.zeros(3, np.float32)])
    with pytest.raises(AssertionError):
        test_every_selectable_configuration_has_a_loop(fastopt.algorithms.BY_NAME["Adam"])
