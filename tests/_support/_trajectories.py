"""Run every optimizer and option for a few steps, and L-BFGS on a few problems, and save the
results (used across builds and instruction-set variants).

``python _trajectories.py OUT.npz`` imports whichever ``fastopt`` is first on sys.path, with the
variant the environment forces (``FASTOPT_FORCE_ISA``), so the same script records the trajectories
of every variant of a portable build and of a native build; the build tests compare the optimizer
steps bit for bit and L-BFGS's results (``lbfgs-*`` keys: FMA makes its last bits differ) closely.
It prints the kernel module, the L-BFGS module and the bucket driver's module that ran, and the
kernels' vector ISA.

Every algorithm runs in float32 and float64; those without a compiled driver also run with float16
params (and bfloat16 ones when ml_dtypes is installed) in each mixed-precision mode: rounded once,
float32 gradients, float32 master weights (and bfloat16 moments), stochastic rounding. Half-precision
arrays are saved as their bits (uint16), so ``np.load`` needs no ml_dtypes.
"""
import sys

import numpy as np

import fastopt
from fastopt.algorithms import ALGORITHMS, BY_NAME

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
    ("NAdam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.02, weight_decay=0.05)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.02, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=0.01, betas=(0.3, 0.6), eps=1e-3, weight_decay=0.1, maximize=True)),
    ("Adamax", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, maximize=True)),
    ("Lion", dict(lr=0.002, betas=(0.95, 0.98), weight_decay=0.5, maximize=True)),
    ("Adadelta", dict(lr=0.7, rho=0.95, eps=1e-4, weight_decay=0.05, maximize=True)),
    ("Rprop", dict(lr=0.05, etas=(0.6, 1.1), step_sizes=(1e-4, 0.1), maximize=True)),
    ("ASGD", dict(lr=0.05, lambd=0.01, alpha=0.5, t0=3, weight_decay=0.05, maximize=True)),
    ("Adafactor", dict(lr=0.01)),
    ("Adafactor", dict(lr=0.5, beta2_decay=-1.0, eps=(1e-3, 0.1), d=2.0, weight_decay=0.05, maximize=True)),
    ("Muon", dict(lr=0.02)),
    ("Muon", dict(lr=0.02, weight_decay=0.05, momentum=0.9, nesterov=False, ns_steps=3,
                  adjust_lr_fn="match_rms_adamw")),
    ("LAMB", dict(lr=0.01, weight_decay=0.1)),
    ("LAMB", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, max_unorm=0.0, maximize=True)),
    ("LARS", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("LARS", dict(lr=0.05, momentum=0.5, max_unorm=0.0, maximize=True)),
]
SHAPES = [(3,), (17, 5), (1000,), (33, 33), (7,)]
#: shapes for algorithms with rules of their own: Muon takes matrices only; Adafactor factors
#: every param of two or more dimensions (a 3-D one: a stack of matrices).
SHAPES_OF = {"Muon": [(17, 5), (33, 33), (5, 40), (64, 3)],
             "Adafactor": SHAPES + [(3, 4, 5)],
             # LAMB and LARS: a param of several work items (their norms' partial sums)
             "LAMB": SHAPES + [(70_001,)], "LARS": SHAPES + [(70_001,)]}
# bitsandbytes' classes: their 8-bit states on the larger params (1000 and 1089 elements)
CONFIGS += [("AdamW8bit", dict(lr=0.01, weight_decay=0.1, min_8bit_size=256)),
            ("SGD8bit", dict(lr=0.05, momentum=0.9, min_8bit_size=256)),
            ("RMSprop8bit", dict(lr=0.01, centered=True, momentum=0.5, min_8bit_size=256))]
# Every declared algorithm is recorded: one not configured above runs with its defaults.
CONFIGS += [(a.name, {}) for a in ALGORITHMS if a.name not in {name for name, _ in CONFIGS}]


def _shapes(name):
    """The params' shapes of ``name``'s runs: its own, or those of SHAPES it takes."""
    if name in SHAPES_OF:
        return SHAPES_OF[name]
    rules = BY_NAME[name].param_rules
    return [s for s in SHAPES if all(rule.test(s) for rule in rules)]


#: a float16 signaling NaN with a payload (quieted: 0x7E05)
NAN_F16_BITS = 0x7C05


def _half_dtypes():
    """float16, and bfloat16 when ml_dtypes is installed."""
    dtypes = [np.dtype(np.float16)]
    try:
        import ml_dtypes
    except ImportError:
        return dtypes
    return dtypes + [np.dtype(ml_dtypes.bfloat16)]


def _modes(dtype):
    """The mixed-precision modes of a half-precision param: (name, optimizer options, grad dtype)."""
    modes = [("rounded", {}, dtype), ("f32grad", {}, np.float32),
             ("master", dict(master_weights=True), dtype)]
    if dtype.name == "float16":
        # NaN gradients with a payload (a signaling NaN's bits): the baseline's portable float16
        # conversions and F16C's must quiet it and keep its payload alike
        modes += [("nan", {}, dtype)]
    if dtype.name == "bfloat16":
        modes += [("master-bf16state", dict(master_weights=True, state_dtype="bfloat16"), dtype),
                  ("stochastic", dict(stochastic_rounding=True, seed=1234), dtype)]
    return modes


def _runs():
    """(key, algorithm, options, param dtype, grad dtype, clip) of every recorded run."""
    for c, (name, kwargs) in enumerate(CONFIGS):
        eight_bit = getattr(fastopt, name).algorithm.option_defaults.get("optim_bits") == 8
        for dtype in (np.float32, np.float64):
            # 8-bit states are for float32 and half-precision params
            options = dict(optim_bits=32) if eight_bit and dtype == np.float64 else {}
            yield (f"{c}-{name}-{np.dtype(dtype).name}", c, name, dict(kwargs, **options), dtype,
                   dtype, True)
        if getattr(fastopt, name).algorithm.driver is not None:
            continue    # drivers take float32 and float64 params only
        for dtype in _half_dtypes():
            for mode, options, grad_dtype in _modes(dtype):
                if eight_bit and ("state_dtype" in options or "stochastic_rounding" in options):
                    continue    # (refused with 8-bit states)
                yield (f"{c}-{name}-{dtype.name}-{mode}", c, name, dict(kwargs, **options), dtype,
                       grad_dtype, False)


def _saved(value):
    """``value`` as an array np.savez stores and np.load reads back without ml_dtypes: half
    precision as its bits."""
    value = np.asarray(value)
    if value.dtype.itemsize == 2 and value.dtype.kind not in "iu":
        return np.ascontiguousarray(value).view(np.uint16)
    return value


def trajectories(steps=25, seed=0):
    out = {}
    for key, c, name, kwargs, dtype, grad_dtype, clip in _runs():
        rng = np.random.default_rng(seed + c)
        shapes = _shapes(name)
        params = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt = getattr(fastopt, name)(params, **kwargs)
        for t in range(steps):
            grads = [(np.sin(3.0 * p.astype(np.float64) + t) + 0.1 * rng.standard_normal(p.shape))
                     .astype(grad_dtype) for p in params]
            if key.endswith("-nan"):
                for g in grads:     # one payload everywhere: no NaN meets another of other bits
                    g.view(np.uint16).flat[t % 3::7] = NAN_F16_BITS
            if clip and t % 5 == 4:
                fastopt.clip_grad_norm_(grads, 1.0)
            opt.step(grads)
        for i, p in enumerate(params):
            out[f"{key}-param{i}"] = _saved(p)
        for i, entry in opt.state_dict()["state"].items():
            for buf, value in entry.items():
                out[f"{key}-state{i}-{buf}"] = _saved(value)
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
    print(fastopt._backend.kernels.__name__, fastopt.minimize._compiled.lbfgs.__name__,
          fastopt._backend.kernels.ParamBucket.__module__, fastopt._backend.kernels.vector_isa())
