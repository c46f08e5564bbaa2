"""Every instruction-set variant agrees at sizes that reach every vector loop's main body and its
tail.

test_build.py compares the variants on fixed problems (L-BFGS-B on n = 200, a multiple of every
vector width), which never run the remainder loops of the wider variants: a bug in the AVX-512 tail
of a kernel would pass it. Here each variant of the installed build that this CPU can run records,
in its own process (``FASTOPT_FORCE_ISA``), for sizes around every vector width (4 doubles or 8
floats for AVX2, 8 doubles or 16 floats for AVX-512, and the 16-element blocks of the driver):

* L-BFGS-B on a bounded, coupled quadratic, and L-BFGS without bounds (float64 and float32):
  the iterates of the first iterations (``callback``), which still agree to ~1e-12 across
  variants (they differ only by FMA contraction), while any wrong product moves them visibly;
* a few steps of several optimizers in float32, float64, float16 and bfloat16 (rounded,
  stochastic, master weights), with clipping inside the step: bit for bit, as every variant
  compiles the same source without contraction.

``python test_variant_tails.py OUT.npz`` records the results of whichever variant the environment
forces.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from _trajectories import _half_dtypes
from fastopt._core import _isa

#: Sizes below, at, and just above each vector width and its multiples, and a large ragged one.
SIZES = (1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 200, 1013)
LBFGS_ITERATIONS = 12
F32_ITERATIONS = 4
OPTIMIZER_STEPS = 3
OPTIMIZERS = [
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, nesterov=False)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Lion", dict(lr=0.002, weight_decay=0.5)),
    ("NAdam", dict(lr=0.02, momentum_decay=0.02)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01)),
]
#: Relative agreement of L-BFGS's iterates across variants (measured on this problem: float64
#: within 4e-12, float32's first four within FLOAT32_RTOL / 10).
LBFGS_RTOL = 1e-9
FLOAT32_RTOL = 1e-5


def _coupled_quadratic(n, dtype):
    """0.5 sum c_i (x_i - t_i)^2 + 0.25 sum (x_i - x_{i+1})^2, some targets outside [-1, 1]."""
    i = np.arange(n)
    curvature = (1.0 + (i % 7)).astype(dtype)
    target = (1.7 * np.sin(1.3 * i + 0.4)).astype(dtype)

    def fun(x):
        d = x - target
        diff = x[:-1] - x[1:]
        grad = curvature * d
        grad[:-1] += 0.5 * diff
        grad[1:] -= 0.5 * diff
        return float(0.5 * (curvature * d) @ d + 0.25 * diff @ diff), grad.astype(x.dtype)
    return fun


def _lbfgs_iterates(n, bounded, dtype, iterations=LBFGS_ITERATIONS):
    fun = _coupled_quadratic(n, dtype)
    x0 = (0.3 * np.cos(np.arange(n) * 0.7)).astype(dtype)
    iterates = []
    kwargs = dict(bounds=[(-1.0, 1.0)] * n) if bounded else {}
    fastopt.minimize_lbfgs(fun, x0, jac=True, m=5, maxiter=iterations, gtol=0.0, ftol=0.0,
                           callback=lambda xk: iterates.append(np.array(xk, dtype=np.float64)),
                           **kwargs)
    return np.array(iterates).reshape(-1, n)


def _saved(value):
    value = np.asarray(value)
    if value.dtype.itemsize == 2 and value.dtype.kind not in "iu":
        return np.ascontiguousarray(value).view(np.uint16)
    return value


def _optimizer_runs():
    for name, kwargs in OPTIMIZERS:
        for dtype in (np.float32, np.float64):
            yield f"{name}-{np.dtype(dtype).name}", name, kwargs, dtype
        for dtype in _half_dtypes():
            yield f"{name}-{dtype.name}", name, kwargs, dtype
            yield f"{name}-{dtype.name}-master", name, dict(kwargs, master_weights=True), dtype
            if dtype.name == "bfloat16":
                yield (f"{name}-{dtype.name}-stochastic", name,
                       dict(kwargs, stochastic_rounding=True, seed=99), dtype)


def record():
    """Everything this variant computes, by key."""
    out = {}
    for n in SIZES:
        out[f"lbfgs-bounded-{n}"] = _lbfgs_iterates(n, True, np.float64)
        out[f"lbfgs-unbounded-{n}"] = _lbfgs_iterates(n, False, np.float64)
        # float32 iterates drift apart faster (FMA against separate rounding): fewer of them, and
        # none for n = 1, solved exactly at once, and then stopped at once or an iteration later
        if n > 1:
            out[f"lbfgs-unbounded-f32-{n}"] = _lbfgs_iterates(n, False, np.float32,
                                                              F32_ITERATIONS)
    for key, name, kwargs, dtype in _optimizer_runs():
        rng = np.random.default_rng(len(key))
        params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
        opt = getattr(fastopt, name)(params, **kwargs)
        for t in range(OPTIMIZER_STEPS):
            grads = [(np.sin(3.0 * p.astype(np.float64) + t) + 0.1 * rng.standard_normal(p.shape))
                     .astype(dtype) for p in params]
            opt.step(grads, max_norm=2.0 if t == 1 else None)
        for n, p in zip(SIZES, params):
            out[f"step-{key}-{n}"] = _saved(p)
        for i, entry in opt.state_dict()["state"].items():
            for buf, value in entry.items():
                out[f"step-{key}-state{SIZES[i]}-{buf}"] = _saved(value)
    return out


def _runnable_variants():
    info = fastopt.build_info()
    return [v for v in info["variants_built"]
            if v in ("baseline", "native") or set(_isa.by_name(v).features) <= set(info["cpu_features"])]


def _record_variant(variant, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTOPT_FORCE_")}
    # the package, and the support module the script imports (_trajectories)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastopt.__file__).parents[1]),
                                         str(Path(__file__).resolve().parents[1] / "_support")])
    env["FASTOPT_FORCE_ISA"] = variant
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out)], env=env,
                          cwd=str(out.parent), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [_isa.variant_module("fastopt.minimize._lbfgs", variant),
                                   _isa.variant_module("fastopt._core._kernels", variant),
                                   _isa.variant_module("fastopt._core._bucket", variant)]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def test_every_variant_agrees_at_every_vector_tail(tmp_path):
    """Each runnable variant, forced in its own process, against the first (the widest): optimizer
    steps bit for bit, L-BFGS(-B)'s first iterates to LBFGS_RTOL, at every size of SIZES."""
    variants = _runnable_variants()
    if len(variants) < 2:
        pytest.skip(f"this build and CPU have one variant only ({variants})")
    results = {v: _record_variant(v, tmp_path / f"{v}.npz") for v in variants}
    reference_variant = variants[0]
    reference = results.pop(reference_variant)
    assert len(reference) > 500
    problems = []
    for variant, other in results.items():
        assert other.keys() == reference.keys()
        for key, value in reference.items():
            theirs = other[key]
            if key.startswith("lbfgs-"):
                if int(key.rsplit("-", 1)[1]) >= 3:
                    assert value.shape[0] >= 2, key      # at least one curvature pair used
                if value.shape != theirs.shape:
                    problems.append(f"{key}: {reference_variant} took {value.shape[0]} iterations, "
                                    f"{variant} {theirs.shape[0]}")
                    continue
                scale = np.maximum(np.abs(value), 1.0)
                worst = float(np.max(np.abs(theirs - value) / scale))
                if worst > (FLOAT32_RTOL if "-f32-" in key else LBFGS_RTOL):
                    problems.append(f"{key}: {reference_variant} and {variant} differ by {worst:.2e}")
            elif value.dtype != theirs.dtype or value.tobytes() != theirs.tobytes():
                differ = int(np.count_nonzero(value.view(np.uint8) != theirs.view(np.uint8)))
                problems.append(f"{key}: {reference_variant} and {variant} differ ({differ} bytes)")
    assert not problems, f"{len(problems)} results differ:\n" + "\n".join(problems[:40])


if __name__ == "__main__":
    np.savez(sys.argv[1], **record())
    print(fastopt.minimize._compiled.lbfgs.__name__, fastopt._backend.kernels.__name__,
          fastopt._backend.kernels.ParamBucket.__module__)
