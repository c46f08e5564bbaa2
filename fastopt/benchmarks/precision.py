"""Mixed precision: Adam on bfloat16/float16 params, against float32 and torch's fused step.

Contenders, all Adam with the same hyperparameters, on one array (or the 200 arrays) of the cell's
size:

* ``f32`` -- float32 params, gradients and states (the reference: 28 bytes per element);
* ``bf16-master`` -- bfloat16 params and gradients, float32 master copy and states (28 bytes);
* ``bf16-master-sbf16`` -- the same with bfloat16 moments (20 bytes);
* ``bf16``, ``f16`` -- half-precision params and gradients, states in the param's dtype, no master
  copy (torch's fused CPU semantics: 14 bytes);
* ``torch-fused-bf16``, ``torch-fused-f16`` -- ``torch.optim.Adam(fused=True)`` on the same
  half-precision params (same bytes as ``bf16``/``f16``).

bfloat16 arrays are ``fastopt._dtypes.BF16Array`` views here, so the benchmark needs no ml_dtypes.
"""
import numpy as np

from .. import _dtypes
from .settings import MANY, MANY_LABEL, MANY_SHAPES
from .timing import Contender, blas_limits, measure, noise

ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
#: Bytes moved per element and step by each fastopt contender.
BYTES = {"f32": 28, "bf16-master": 28, "bf16-master-sbf16": 20, "bf16": 14, "f16": 14}


def _bf16(values):
    return _dtypes.bf16_bits(values).view(_dtypes.BF16Array)


def cell(torch, size, timing):
    """({contender: stats}, rounds, elements) for one size (an element count or MANY)."""
    import fastopt
    shapes = list(MANY_SHAPES) if size == MANY else [(size,)]
    rng = np.random.default_rng(0)
    base = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g32 = [(rng.standard_normal(s) * 1e-2).astype(np.float32) for s in shapes]
    gbf = [_bf16(g) for g in g32]
    gf16 = [g.astype(np.float16) for g in g32]
    contenders = []

    def add(name, params, grads, **options):
        opt = fastopt.Adam(params, **ADAM, **options)
        contenders.append(Contender(name, lambda: opt.step(grads)))

    add("f32", [p.copy() for p in base], g32)
    add("bf16-master", [_bf16(p) for p in base], gbf, master_weights=True)
    add("bf16-master-sbf16", [_bf16(p) for p in base], gbf, master_weights=True, state_dtype="bfloat16")
    add("bf16", [_bf16(p) for p in base], gbf)
    add("f16", [p.astype(np.float16) for p in base], gf16)
    if torch is not None:
        for name, dtype in (("torch-fused-bf16", torch.bfloat16), ("torch-fused-f16", torch.float16)):
            params = [torch.nn.Parameter(torch.from_numpy(p).to(dtype)) for p in base]
            for p, g in zip(params, g32):
                p.grad = torch.from_numpy(g).to(dtype)
            topt = torch.optim.Adam(params, fused=True, **ADAM)
            contenders.append(Contender(name, topt.step))
    stats, reps = measure(contenders, **timing)
    return stats, reps, int(sum(np.prod(s) for s in shapes))


def run(args, torch, log, timing, threads):
    """Rows of the mixed-precision table (ns per element per step)."""
    import fastopt
    sizes = [1_000_000, MANY] if args.quick else [10_000_000, MANY]
    rows = []
    before = fastopt.get_num_threads()
    try:
        for size in sizes:
            for th in threads:
                fastopt.set_num_threads(th)
                if torch is not None:
                    torch.set_num_threads(th)
                with blas_limits(th):
                    stats, reps, n = cell(torch, size, timing)
                ns = {c: s["median"] * 1e9 / n for c, s in stats.items()}
                label = MANY_LABEL if size == MANY else f"1e{int(np.log10(size))}"
                rows.append(dict(size=label, n=n, threads=th, reps=reps, ns_per_elem=ns,
                                 noise=noise(stats)))
                log(f"precision {label:>10} thr={th}: f32 {ns['f32']:.3g}, bf16-master "
                    f"{ns['bf16-master']:.3g}, sbf16 {ns['bf16-master-sbf16']:.3g} ns/elem")
    finally:
        fastopt.set_num_threads(before)
    return rows
