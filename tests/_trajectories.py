"""Run every optimizer and option for a few steps, and L-BFGS on a few problems, and save the
results (used across builds and instruction-set variants).

``python _trajectories.py OUT.npz`` imports whichever ``fastopt`` is first on sys.path, with the
variant the environment forces (``FASTOPT_FORCE_ISA``), so the same script records the trajectories
of every variant of a portable build and of a native build; the build tests compare the optimizer
steps bit for bit and L-BFGS's results (``lbfgs-*`` keys: FMA makes its last bits differ) closely.
It prints the kernel module and the L-BFGS module that ran, and the kernels' vector ISA.
"""
import sys

import numpy as np

import fastopt

CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
]
SHAPES = [(3,), (17, 5), (1000,), (33, 33), (7,)]


def trajectories(steps=25, seed=0):
    out = {}
    for c, (name, kwargs) in enumerate(CONFIGS):
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(seed + c)
            params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
            opt = getattr(fastopt, name)(params, **kwargs)
            for t in range(steps):
                grads = [(np.sin(3.0 * p + t) + 0.1 * rng.standard_normal(p.shape)).astype(dtype) for p in params]
                if t % 5 == 4:
                    fastopt.clip_grad_norm_(grads, 1.0)
                opt.step(grads)
            key = f"{c}-{name}-{np.dtype(dtype).name}"
            for i, p in enumerate(params):
                out[f"{key}-param{i}"] = p
            for i, entry in opt.state_dict()["state"].items():
                for buf, value in entry.items():
                    out[f"{key}-state{i}-{buf}"] = np.asarray(value)
    return out


def _rosenbrock(x):
    head, tail = x[:-1], x[1:]
    r = tail - head * head
    g = np.zeros_like(x)
    g[:-1] = -400.0 * head * r - 2.0 * (1.0 - head)
    g[1:] += 200.0 * r
    return float(100.0 * (r @ r) + (1.0 - head) @ (1.0 - head)), g


_CURVATURE = np.linspace(1.0, 300.0, 20_000)


def _quadratic(x):
    """A convex quadratic, large enough for L-BFGS's nogil vector loops (from 8192 elements)."""
    d = x - 1.0
    return float(0.5 * (_CURVATURE * d) @ d), (_CURVATURE * d).astype(x.dtype)


def lbfgs_results():
    """L-BFGS (float64 and float32), L-BFGS-B and OWL-QN, each on a converging run."""
    rosen0 = np.tile([-1.2, 1.0], 100)
    runs = {
        "rosen-f64": (_rosenbrock, dict(x0=rosen0)),
        "rosen-bounded": (_rosenbrock, dict(x0=rosen0, bounds=[(-2.0, 0.8)] * rosen0.size)),
        "quad-f64": (_quadratic, dict(x0=np.zeros(_CURVATURE.size))),
        "quad-f32": (_quadratic, dict(x0=np.zeros(_CURVATURE.size, np.float32))),
        "quad-l1": (_quadratic, dict(x0=np.zeros(_CURVATURE.size), l1=0.5)),
    }
    out = {}
    for name, (fun, kwargs) in runs.items():
        result = fastopt.minimize_lbfgs(fun, kwargs.pop("x0"), **kwargs)
        out[f"lbfgs-{name}-x"] = result.x
        out[f"lbfgs-{name}-fun"] = np.float64(result.fun)
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **trajectories(), **lbfgs_results())
    print(fastopt._backend.kernels.__name__, fastopt._lbfgs.__name__,
          fastopt._backend.kernels.vector_isa())
