"""Each fused kernel against its in-place NumPy reference (fastopt.benchmarks.numpy_reference), 1e3-1e7;
the steps that are not elementwise (Adafactor, Muon) against torch.optim on the bench's matrices."""
import numpy as np
import pytest

import fastopt
from fastopt.benchmarks import cases, numpy_reference, settings

SIZES = [10 ** 3, 10 ** 5, 10 ** 7]
DTYPES = [np.float32, np.float64]


def _label(n):
    return f"1e{int(round(np.log10(n)))}"


#: (algorithm, implementation): fastopt, and the in-place NumPy version where there is one.
STEPS = [(opt, impl) for opt in sorted(settings.ALGORITHMS) for impl in ("fastopt", "numpy")
         if impl == "fastopt" or opt in numpy_reference.NUMPY_OPTIMIZERS]


@pytest.mark.parametrize("n", SIZES, ids=_label)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("opt, impl", STEPS, ids=[f"{o}-{i}" for o, i in STEPS])
def test_step(benchmark, opt, dtype, n, impl):
    params, grads = cases.make_data(n, dtype)
    if impl == "fastopt":
        o = cases.make_fastopt_optimizer(opt, params)
    else:
        o = numpy_reference.make_numpy_optimizer(opt, params)
    o.step(grads)                       # allocate the state outside the timing
    benchmark.group = f"{opt}-{np.dtype(dtype).name}-{_label(n)}"
    benchmark.extra_info["ns_per_elem"] = None
    benchmark(o.step, grads)
    if benchmark.stats is not None:
        benchmark.extra_info["ns_per_elem"] = benchmark.stats.stats.median * 1e9 / n


@pytest.mark.parametrize("impl", ["fastopt", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_clip_grad_norm_200_arrays(benchmark, dtype, impl):
    _, fresh = cases.make_data(settings.MANY, dtype)      # norm ~12 > max_norm: every call scales
    grads = [g.copy() for g in fresh]
    fn = fastopt.clip_grad_norm_ if impl == "fastopt" else numpy_reference.numpy_clip_grad_norm_

    def restore():        # clipping the same arrays again would skip the scaling pass (coef >= 1)
        for d, s in zip(grads, fresh):
            np.copyto(d, s)

    benchmark.group = f"clip_grad_norm_-{np.dtype(dtype).name}-200arrays"
    benchmark.pedantic(fn, args=(grads, settings.CLIP_MAX_NORM), setup=restore, rounds=200,
                       warmup_rounds=3)


MATRIX = [case for cases_ in settings.MATRIX_CASES.values() for case in cases_]


@pytest.mark.parametrize("impl", ["fastopt", "torch-loop", "torch-foreach"])
@pytest.mark.parametrize("case", MATRIX, ids=lambda c: f"{c.name}-{settings.matrix_label(c.shapes)}")
def test_matrix_step(benchmark, case, impl):
    """Steps that are not elementwise (Adafactor, Muon) on matrices, against torch.optim's."""
    params, grads = cases.make_data(None, np.float32, shapes=case.shapes)
    if impl == "fastopt":
        o = getattr(fastopt, case.cls)(params, **case.hyper)
        step = lambda: o.step(grads)   # noqa: E731
    else:
        torch = pytest.importorskip("torch")
        kw = {"foreach": impl == "torch-foreach"}
        if case.cls == "Muon":
            if impl == "torch-foreach":
                pytest.skip("torch.optim.Muon has one implementation")
            kw = {}
        tparams = [torch.from_numpy(p) for p in params]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g)
        o = getattr(torch.optim, case.cls)(tparams, **case.hyper, **kw)
        step = o.step
    step()                               # the state exists before the timing
    benchmark.group = f"{case.name}-float32-{settings.matrix_label(case.shapes)}"
    benchmark.pedantic(step, rounds=3 if case.cls == "Muon" else 20, warmup_rounds=1)
