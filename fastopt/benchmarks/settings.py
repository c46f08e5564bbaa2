"""What the benchmark runs, as data: the algorithms, the sizes, the timing budgets.

The algorithms come from their declarations (:data:`fastopt.algorithms.ALGORITHMS`): every
elementwise one is benchmarked with its declared defaults (and the few departures of
:data:`SETTINGS`) and the memory traffic its declaration gives (``Algorithm.traffic()``), so a
newly declared algorithm is in ``fastopt bench`` with nothing to add here (an in-place NumPy
version in :mod:`.numpy_reference` adds the ``numpy`` column). A step that is not
elementwise (an algorithm with a compiled driver) is timed on matrices: one :class:`MatrixCase`
entry in :data:`MATRIX_CASES` gives its shapes.
"""
from dataclasses import dataclass, field
from types import MappingProxyType

from ..algorithms import ALGORITHMS as DECLARED


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

    @classmethod
    def from_declaration(cls, declared, overrides=None):
        """The benchmark's configuration of a declared algorithm: its declared defaults with
        ``overrides``, and the traffic of a step with them.

        ``hyper`` holds the numbers (reals, pairs, tuples, integers): the flags and choices stay at
        the constructors' defaults, the plain algorithm (torch's classes take no
        ``decoupled_weight_decay`` for AdamW, whose declaration fixes it).
        """
        hyper = {h.name: h.default for h in declared.hyperparameters
                 if h.constraint.kind not in ("flag", "choice") and h.name not in declared.fixed}
        hyper.update(overrides or {})
        reads, writes = declared.traffic(hyper)
        return cls(declared.name, hyper, reads, writes)

    def bytes_per_element(self, itemsize):
        """Bytes one step moves per element for a dtype of ``itemsize`` bytes."""
        return (self.reads + self.writes) * itemsize


#: Where the benchmark departs from an algorithm's declared defaults, by class name.
SETTINGS = MappingProxyType({
    # SGD as it is trained, with momentum (the default momentum=0 keeps no state at all)
    "SGD": MappingProxyType(dict(momentum=0.9)),
    # ASGD averaging from the third step: with the default t0=1e6, ``ax`` is a copy of the param
    # for a million steps, and not read
    "ASGD": MappingProxyType(dict(t0=0.0)),
})

#: The benchmark's algorithms, by the name used on the command line (``--optimizers adam,sgd``):
#: every declared elementwise algorithm with float32 states, in declaration order.
ALGORITHMS = MappingProxyType({
    declared.name.lower(): Algorithm.from_declaration(declared, SETTINGS.get(declared.name))
    for declared in DECLARED
    # bitsandbytes' classes keep 8-bit states by default: the "8-bit" table times them
    if declared.driver is None and declared.bitsandbytes_states is None})


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
#: row's thread count like torch's); LAMB and LARS scale each param's update by a trust ratio
#: (norms over the whole param; torch.optim has neither: fastopt is timed alone).
MATRIX_CASES = MappingProxyType({
    "adafactor": (MatrixCase("adafactor", "Adafactor", _matrices(1, 512, 512), _matrices(1, 512, 512),
                             dict(lr=1e-2)),
                  MatrixCase("adafactor", "Adafactor", _matrices(1, 4096, 1024),
                             _matrices(1, 1024, 1024), dict(lr=1e-2))),
    "muon": (MatrixCase("muon", "Muon", _matrices(4, 1024, 1024), _matrices(4, 256, 256),
                        dict(lr=2e-2)),),
    "lamb": (MatrixCase("lamb", "LAMB", _matrices(4, 1024, 1024), _matrices(4, 256, 256),
                        dict(weight_decay=1e-2)),),
    "lars": (MatrixCase("lars", "LARS", _matrices(4, 1024, 1024), _matrices(4, 256, 256),
                        dict(lr=0.1, momentum=0.9, weight_decay=1e-4)),),
})
#: The matrix table's dtypes (its targets are float32; --dtypes narrows it).
MATRIX_DTYPES = ("float32",)

#: The "200 arrays" case: a small model's parameter list.
MANY = "200x"
MANY_SHAPES = ((512, 512),) * 4 + ((512,),) * 96 + ((4096,),) * 100
MANY_LABEL = "200 arrays"

#: clip_grad_norm_'s max_norm; the benchmark's gradients have a norm of ~12, so every call scales.
CLIP_MAX_NORM = 1.0

#: ``fastopt bench --full``: the whole matrix (every algorithm, both dtypes, these sizes).
DEFAULT_SIZES = "1e4,1e6,1e7," + MANY
QUICK_SIZES = "1e4,1e6," + MANY
DEFAULT_DTYPES = "float32,float64"

#: ``fastopt bench`` (the summary): the optimizers that tell the story -- the Adam family most
#: models train with, SGD with momentum, Adagrad (all with a fused step in torch.optim) and Lion
#: (none in torch.optim: against NumPy and the bound) --, in float32, at an in-cache size, a size
#: far beyond any last-level cache (memory-bound) and a small model's 200 arrays.
SUMMARY_OPTIMIZERS = "adam,adamw,sgd,adagrad,lion"
SUMMARY_SIZES = "1e5,1e7," + MANY
SUMMARY_QUICK_SIZES = "1e5," + MANY
SUMMARY_DTYPES = "float32"

#: Round-robin timing per cell (see :func:`.timing.measure`): seconds of budget, rounds, and the
#: shortest sample (consecutive steps are timed together until a sample lasts that long).
TIMING = MappingProxyType(dict(budget=0.2, min_reps=5, max_reps=41, min_sample=1e-3))
QUICK_TIMING = MappingProxyType(dict(budget=0.03, min_reps=3, max_reps=11, min_sample=2e-4))
#: The summary's cells: fewer contenders than the full table's, so more rounds for the same time.
SUMMARY_TIMING = MappingProxyType(dict(budget=0.25, min_reps=7, max_reps=41, min_sample=1e-3))
#: The DeepSpeed table with --quick: each round is an engine step per contender (a few ms).
DEEPSPEED_QUICK_TIMING = MappingProxyType(dict(budget=0.3, min_reps=5, max_reps=15))

#: A cell whose noisiest contender has an interquartile range above this fraction of its median is
#: flagged as measured on a busy machine.
NOISY = 0.25

#: L-BFGS vs SciPy: sizes with --quick (default: lbfgs_vs_scipy.DEFAULT_SIZES) and runs per size
#: (the best run is kept).
LBFGS_QUICK_SIZES = (100, 1_000)
LBFGS_REPEATS = 5
LBFGS_QUICK_REPEATS = 2
#: The bounded table's figure is a difference of two best-of runs (a full run minus a
#: one-iteration run), which two runs leave at the mercy of one disturbed run: in --quick runs
#: on a loaded machine SciPy's figure at n = 1e3 came out negative (-76 µs/iter; AMD EPYC, 2 cores, 2026), and its ratio
#: at n = 100 ranged 0.02-0.21. At the quick sizes five runs of each kind take ~0.1 s.
LBFGSB_QUICK_REPEATS = 5
