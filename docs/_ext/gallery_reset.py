"""Each gallery example starts from the process state a fresh ``python examples/<name>.py`` has.

sphinx-gallery runs the examples one after another in the build's own process, so what one
script leaves behind would reach the next: DeepSpeed's launcher variables (``RANK``,
``WORLD_SIZE``, ``MASTER_PORT``, ...), which a distributed script then takes as "I am a launched
worker", torch.distributed's default process group, torch's and fastopt's thread counts.
``conf.py`` names :func:`reset_process_state` in ``reset_modules``; it runs before each example.
"""
import os
import sys

#: The environment before any example ran (this module is imported when the gallery's
#: configuration is read, before the first example).
_ENVIRON = dict(os.environ)
try:
    import torch as _torch
    #: torch's thread count before any example ran (a two-rank script sets one thread per rank).
    _TORCH_THREADS = _torch.get_num_threads()
except ImportError:
    _TORCH_THREADS = None


def reset_process_state(gallery_conf, fname):
    for key in set(os.environ) - set(_ENVIRON):
        del os.environ[key]
    for key, value in _ENVIRON.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if _TORCH_THREADS is not None:
            torch.set_num_threads(_TORCH_THREADS)
    fastopt = sys.modules.get("fastopt")
    if fastopt is not None:
        fastopt.set_num_threads(0)   # the default: OMP_NUM_THREADS (as restored) or the CPUs
