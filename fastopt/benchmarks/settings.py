"""What the benchmark runs, as data: the algorithms, the sizes, the defaults.

Adding an algorithm to ``fastopt bench`` is one :class:`Algorithm` entry in :data:`ALGORITHMS`
(plus, optionally, an in-place NumPy version in :mod:`.numpy_reference` for the ``numpy`` column),
or, for a step that is not elementwise, one :class:`MatrixCase` entry in :data:`MATRIX_CASES`.
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
    # p, g, exp_avg, exp_avg_sq read; p, exp_avg, exp_avg_sq written (mu_product: one scalar)
    "nadam": Algorithm("NAdam", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                       reads=4, writes=3),
    "radam": Algorithm("RAdam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                       reads=4, writes=3),
    # p, g, exp_avg, exp_inf read; p, exp_avg, exp_inf written
    "adamax": Algorithm("Adamax", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
                        reads=4, writes=3),
    # p, g, exp_avg read; p, exp_avg written (torch has no Lion: no torch columns)
    "lion": Algorithm("Lion", dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0), reads=3, writes=2),
    # p, g, square_avg, acc_delta read; p, square_avg, acc_delta written
    "adadelta": Algorithm("Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0),
                          reads=4, writes=3),
    # p, g, prev, step_size read; p, prev, step_size written
    "rprop": Algorithm("Rprop", dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)),
                       reads=4, writes=3),
    # p, g, ax read; p, ax written: averaging from the third step (t0=0; with torch's default
    # t0=1e6 ax is a copy of p for a million steps, and not read)
    "asgd": Algorithm("ASGD", dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=0.0, weight_decay=0.0),
                      reads=3, writes=2),
})


@dataclass(frozen=True)
class MatrixCase:
    """A step that is not elementwise (reductions, matrix products), timed on matrices against
    torch.optim's implementations, in ms per step: the ``matrix`` table.

    Attributes
    ----------
    name : str
        The command-line name (``--optimizers adafactor``); a name may have several cases.
    cls : str
        The class name in ``fastopt`` and ``torch.optim``.
    shapes, quick_shapes : tuple of tuple
        The params' shapes (``quick_shapes`` with ``--quick``).
    hyper : mapping
        Hyperparameters, the same for every contender.
    """

    name: str
    cls: str
    shapes: tuple
    quick_shapes: tuple
    hyper: MappingProxyType = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "hyper", MappingProxyType(dict(self.hyper)))


def matrix_label(shapes):
    """A row's size label: ``512x512``, or ``4x1024x1024`` for four matrices of that shape."""
    shape = "x".join(str(d) for d in shapes[0])
    if all(s == shapes[0] for s in shapes):
        return shape if len(shapes) == 1 else f"{len(shapes)}x{shape}"
    return "+".join("x".join(str(d) for d in s) for s in shapes)


def _matrices(count, rows, cols):
    return ((rows, cols),) * count


#: The matrix cases, by command-line name. Adafactor keeps row and column statistics over the last
#: two dims; Muon orthogonalizes each matrix with BLAS products (OpenBLAS's threads, pinned to the
#: row's thread count like torch's).
MATRIX_CASES = MappingProxyType({
    "adafactor": (MatrixCase("adafactor", "Adafactor", _matrices(1, 512, 512), _matrices(1, 512, 512),
                             dict(lr=1e-2)),
                  MatrixCase("adafactor", "Adafactor", _matrices(1, 4096, 1024),
                             _matrices(1, 1024, 1024), dict(lr=1e-2))),
    "muon": (MatrixCase("muon", "Muon", _matrices(4, 1024, 1024), _matrices(4, 256, 256),
                        dict(lr=2e-2)),),
})
#: The matrix table's dtypes (its targets are float32; --dtypes narrows it).
MATRIX_DTYPES = ("float32",)

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
