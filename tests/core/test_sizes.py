"""Arrays beyond 2**31 elements: the kernels index with Py_ssize_t throughout.

Slow and memory-hungry, so marked ``slow`` (run with ``FASTOPT_SLOW=1`` or ``-m slow``) and skipped
when the machine lacks the memory. The gradient is ``np.zeros`` (calloc: untouched pages all map the
kernel's shared zero page, so reading it costs no memory) with only its last page written; the param
is written by the step, so it needs its full 8.6 GB.
"""
import numpy as np
import pytest

import fastopt

N = 2 ** 31 + 64
NEEDED = 4 * N + (1 << 30)          # the float32 param, plus 1 GiB of headroom


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.slow
def test_sgd_step_beyond_2_31_elements():
    if mem_available() < NEEDED:
        pytest.skip(f"needs {NEEDED / 2**30:.1f} GiB available, have {mem_available() / 2**30:.1f}")
    p = np.zeros(N, np.float32)
    g = np.zeros(N, np.float32)
    opt = fastopt.SGD([p], lr=0.5, skip_nonfinite=True)
    # a NaN in the very last element (index 2**31 + 63) is found by the finiteness reduction ...
    g[-1] = np.nan
    assert opt.step([g]) is False and opt.found_inf
    assert not fastopt.grads_finite([g])
    # ... and the step that follows updates elements on both sides of 2**31
    g[-64:] = 1.0
    g[2 ** 31 - 1] = 2.0
    assert opt.step([g]) is True
    assert np.all(p[-64:] == np.float32(-0.5))
    assert p[2 ** 31 - 1] == np.float32(-1.0)
    assert p[0] == 0.0 and p[2 ** 30] == 0.0 and p[2 ** 31 - 2] == 0.0
    # the global norm sees the elements past 2**31 too (sqrt(64 * 1 + 4))
    assert fastopt.clip_grad_norm_([g], 1e9) == pytest.approx(np.sqrt(68.0))
