"""What the benchmark runs, as data: the algorithms, the sizes, the defaults.

Adding an algorithm to ``fastopt bench`` is one :class:`Algorithm` entry in :data:`ALGORITHMS`
(plus, optionally, an in-place NumPy version in :mod:`.numpy_reference` for the ``numpy`` column).
"""
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Algorithm:
    """One optimizer configuration of the benchmark.

    Attributes
    ----------
    cls : str
        The class name in ``fastopt``, ``fastopt.torch`` and ``torch.optim`` (``"Adam"``).
    hyper : mapping
        Hyperparameters, the same for every contender.
    reads, writes : int
        The memory traffic of one step, in arrays per element: ``reads`` arrays are read (the
        param, its gradient and each state buffer) and ``writes`` of them written back (the param
        and each state buffer). An update can be no faster than streaming that many arrays:
        ``(reads + writes) x itemsize`` bytes per element, measured as the ``mem-bound`` column.
    """

    cls: str
    hyper: MappingProxyType = field(default_factory=dict)
    reads: int = 0
    writes: int = 0

    def __post_init__(self):
        object.__setattr__(self, "hyper", MappingProxyType(dict(self.hyper)))
        if not 1 <= self.writes <= self.reads:
            raise ValueError(f"{self.cls}: need 1 <= writes <= reads, got reads={self.reads}, "
                             f"writes={self.writes}")

    def bytes_per_element(self, itemsize):
        """Bytes one step moves per element for a dtype of ``itemsize`` bytes."""
        return (self.reads + self.writes) * itemsize


#: The benchmark's algorithms, by the name used on the command line (``--optimizers adam,sgd``).
ALGORITHMS = MappingProxyType({
    # p, g, exp_avg, exp_avg_sq read; p, exp_avg, exp_avg_sq written
    "adam": Algorithm("Adam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                      reads=4, writes=3),
    "adamw": Algorithm("AdamW", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
                       reads=4, writes=3),
    # p, g, momentum_buffer read; p, momentum_buffer written
    "sgd": Algorithm("SGD", dict(lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0),
                     reads=3, writes=2),
    # p, g, square_avg read; p, square_avg written
    "rmsprop": Algorithm("RMSprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0),
                         reads=3, writes=2),
    # p, g, sum read; p, sum written
    "adagrad": Algorithm("Adagrad", dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10),
                         reads=3, writes=2),
})

#: The "200 arrays" case: a small model's parameter list.
MANY = "200x"
MANY_SHAPES = ((512, 512),) * 4 + ((512,),) * 96 + ((4096,),) * 100
MANY_LABEL = "200 arrays"

#: clip_grad_norm_'s max_norm; the benchmark's gradients have a norm of ~12, so every call scales.
CLIP_MAX_NORM = 1.0

DEFAULT_SIZES = "1e4,1e6,1e7," + MANY
QUICK_SIZES = "1e4,1e6," + MANY
DEFAULT_DTYPES = "float32,float64"

#: Round-robin timing per cell (see :func:`.timing.measure`): seconds of budget, rounds, and the
#: shortest sample (consecutive steps are timed together until a sample lasts that long).
TIMING = MappingProxyType(dict(budget=0.2, min_reps=5, max_reps=41, min_sample=1e-3))
QUICK_TIMING = MappingProxyType(dict(budget=0.03, min_reps=3, max_reps=11, min_sample=2e-4))

#: A cell whose noisiest contender has an interquartile range above this fraction of its median is
#: flagged as measured on a busy machine.
NOISY = 0.25

#: L-BFGS vs SciPy: sizes with --quick (default: lbfgs_vs_scipy.DEFAULT_SIZES) and runs per size
#: (the best run is kept).
LBFGS_QUICK_SIZES = (100, 1_000)
LBFGS_REPEATS = 5
LBFGS_QUICK_REPEATS = 2
