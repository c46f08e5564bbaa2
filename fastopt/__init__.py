"""fastopt: fused CPU optimizer update kernels in Cython behind torch.optim-shaped classes.

>>> import numpy as np, fastopt
>>> w = np.zeros(3)
>>> opt = fastopt.Adam([w], lr=0.1)
>>> opt.step([np.array([1.0, -1.0, 0.0])])
"""
try:
    from . import _validation, lr_scheduler
    from ._backend import build_info, kernels as _kernels
    from ._factory import CLASSES as _CLASSES
    from .checkpoint import load, save
    from .flat import FlatParams, flatten
    from .minimize import LBFGS, classify_critical_point, lbfgs, minimize_bfgs, minimize_lbfgs, newton
    from .clip import clip_grad_norm_, clip_grad_value_, grads_finite
    from .optimizer import Optimizer
except ImportError as _error:
    # An unbuilt source checkout (e.g. `python -m fastopt` at the repository root) gets a message
    # that says what to do; any other ImportError propagates unchanged.
    from ._source_tree import raise_if_unbuilt
    raise_if_unbuilt(__path__[0], _error)
    raise

# One class per declared algorithm (fastopt/algorithms), each named here so that readers, IDEs and
# static tools see it; tests/tooling/test_exports.py fails when an algorithm is declared but not named here.
Adadelta = _CLASSES["Adadelta"]
Adafactor = _CLASSES["Adafactor"]
Adagrad = _CLASSES["Adagrad"]
Adam = _CLASSES["Adam"]
AdEMAMix = _CLASSES["AdEMAMix"]
AdamW = _CLASSES["AdamW"]
Adamax = _CLASSES["Adamax"]
ASGD = _CLASSES["ASGD"]
LAMB = _CLASSES["LAMB"]
LARS = _CLASSES["LARS"]
Lion = _CLASSES["Lion"]
Muon = _CLASSES["Muon"]
NAdam = _CLASSES["NAdam"]
RAdam = _CLASSES["RAdam"]
RMSprop = _CLASSES["RMSprop"]
Rprop = _CLASSES["Rprop"]
SGD = _CLASSES["SGD"]

# bitsandbytes' classes (their arguments and checkpoints; states in 8 bits by default)
Adam8bit = _CLASSES["Adam8bit"]
AdamW8bit = _CLASSES["AdamW8bit"]
AdEMAMix8bit = _CLASSES["AdEMAMix8bit"]
Adagrad8bit = _CLASSES["Adagrad8bit"]
LAMB8bit = _CLASSES["LAMB8bit"]
LARS8bit = _CLASSES["LARS8bit"]
Lion8bit = _CLASSES["Lion8bit"]
RMSprop8bit = _CLASSES["RMSprop8bit"]
SGD8bit = _CLASSES["SGD8bit"]

__version__ = "0.1.0"

from . import _threadpool  # noqa: E402

_threadpool.register(__version__)   # threadpoolctl can see and limit fastopt's threads


def set_num_threads(n):
    """Use ``n`` threads for large steps (``0``: the default, ``OMP_NUM_THREADS`` if set, else the
    CPUs this process may use).

    Examples
    --------
    >>> import fastopt
    >>> before = fastopt.get_num_threads()
    >>> fastopt.set_num_threads(1)
    >>> fastopt.get_num_threads()
    1
    >>> fastopt.set_num_threads(before)           # as it was
    """
    _kernels.set_num_threads(_validation.check_num_threads(n))


def get_num_threads():
    """The number of threads a large step uses.

    Examples
    --------
    >>> import fastopt
    >>> fastopt.get_num_threads() >= 1
    True
    """
    return _kernels.get_num_threads()


__all__ = [
    "Optimizer",
    "Adadelta", "Adafactor", "Adagrad", "Adam", "AdEMAMix", "AdamW", "Adamax", "ASGD", "LAMB", "LARS", "Lion",
    "Muon", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD",
    "Adam8bit", "AdamW8bit", "AdEMAMix8bit", "Adagrad8bit", "LAMB8bit", "LARS8bit", "Lion8bit",
    "RMSprop8bit", "SGD8bit",
    "FlatParams", "flatten", "clip_grad_norm_", "clip_grad_value_", "grads_finite",
    "LBFGS", "lbfgs", "minimize_lbfgs", "newton", "minimize_bfgs", "classify_critical_point",
    "save", "load", "set_num_threads", "get_num_threads", "build_info", "lr_scheduler",
]
