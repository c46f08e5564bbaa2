"""The test process's resident set size, and its growth across a run: the memory tests of both
front ends (tests/core/test_memory.py, tests/torch/test_torch_lbfgs.py) measure with these."""
import gc
import os
import sys

MB = 1 << 20


def rss():
    """Resident set size in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def growth(fn, warmup):
    """RSS growth (bytes) across ``fn()`` after running ``warmup()``."""
    warmup()
    gc.collect()
    before = rss()
    fn()
    gc.collect()
    return rss() - before
