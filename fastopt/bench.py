"""``python -m fastopt bench``: fastopt's update kernels against torch.optim, NumPy and the C ceiling.

Everything is reported as ns per element per step (medians over repetitions) and as ratios measured in
the same run: the contenders of a cell are timed round-robin (A, B, C, A, B, C, ...), so a machine
that gets busier or quieter in the middle of a cell slows all of them alike.

Contenders, all updating their own copy of the same params with the same gradients and the same
hyperparameters:

* ``fastopt``        -- ``fastopt.<Optimizer>(params).step(grads)``
* ``numpy``          -- the best in-place NumPy equivalent (this module's ``Numpy*`` classes: ``out=``
  ufuncs over preallocated temporaries, cache-blocked for large arrays, flat state; single-threaded,
  as NumPy's ufuncs are)
* ``torch-fused``, ``torch-foreach``, ``torch-loop`` -- ``torch.optim.<Optimizer>(..., fused=True)``,
  ``foreach=True`` and ``foreach=False`` over ``torch.from_numpy`` views (when torch is installed)
* ``C-ceiling``      -- Adam float32 only: ``shared/tools/limit.c``'s plain fused C step compiled with
  ``gcc -O3 -march=native -fno-math-errno -fopenmp`` and timed inside C (no call overhead): the
  fastest a fused float32 Adam step runs on this machine.

The NumPy classes double as the reference implementations of ``bench/`` (pytest-benchmark) and are
checked against fastopt by ``tests/test_bench_cli.py``.
"""
import argparse
import ctypes
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------------
# Configurations (identical hyperparameters for every contender)
# ------------------------------------------------------------------------------------------------

#: Optimizer name -> (fastopt/torch class name, hyperparameters).
CONFIGS = {
    "adam": ("Adam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "adamw": ("AdamW", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
    "sgd": ("SGD", dict(lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0)),
    "rmsprop": ("RMSprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0)),
    "adagrad": ("Adagrad", dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10)),
}

#: The "200 arrays" case: a small model's parameter list.
MANY_SHAPES = [(512, 512)] * 4 + [(512,)] * 96 + [(4096,)] * 100
MANY = "200x"
CLIP_MAX_NORM = 1.0

DEFAULT_SIZES = "1e4,1e6,1e7," + MANY
QUICK_SIZES = "1e4,1e6," + MANY
DEFAULT_OPTIMIZERS = "adam,adamw,sgd,rmsprop,adagrad"

# ------------------------------------------------------------------------------------------------
# The best in-place NumPy equivalents
# ------------------------------------------------------------------------------------------------


class NumpyOptimizer:
    """Base of the in-place NumPy reference optimizers (torch.optim semantics, flat state).

    The state lives in one flat array per state name (as fastopt's arenas). A step computes the
    update ``delta`` with ``out=`` ufuncs into preallocated temporaries, block by block so that the
    temporaries and the state stay in cache (``block_bytes`` per stream), then adds it to the param
    (blocking halves NumPy's time at 1e6-1e7 elements on a 2 MiB-L2 machine). Small params (below a
    block) are handled together: their gradients are gathered into one flat buffer by a single
    ``np.concatenate(out=)``, the update is computed flat, and each param gets one ``+=`` of its
    slice -- ~12 ufunc calls per block plus one per param, instead of ~12 per param.
    """

    state_names = ()
    n_tmp = 1
    #: Bytes per stream in a block: 256 KiB x ~5 streams stay inside a 2 MiB L2 (measured best).
    block_bytes = 1 << 18
    defaults = {}

    def __init__(self, params, block=None, **hyper):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("no params")
        dtype = self.params[0].dtype
        if any(p.dtype != dtype or not p.flags.c_contiguous for p in self.params):
            raise ValueError("NumPy reference: params must share one dtype and be C-contiguous")
        self.dtype = dtype
        self.hyper = {**self.defaults, **hyper}
        if block is None:
            block = max(1024, self.block_bytes // dtype.itemsize)
        self.block = int(block) if block > 0 else 1 << 62      # 0: no blocking
        B = self.block
        sizes = [p.size for p in self.params]
        small = [k for k, n in enumerate(sizes) if n < B]
        if len(small) < 2:
            small = []
        self._small = small
        direct = [k for k in range(len(sizes)) if k not in set(small)]
        # Arena layout: the small params first (one contiguous run), then the others.
        order = small + direct
        self._start = [0] * len(sizes)
        pos = 0
        for k in order:
            self._start[k] = pos
            pos += sizes[k]
        self.sizes = sizes
        self.n = pos
        self.n_small = sum(sizes[k] for k in small)
        self.step_count = 0
        self.flat_state = {name: np.zeros(self.n, dtype) for name in self.state_names}
        self._init_state()
        self._tmp = [np.empty(min(max(self.n, 1), B), dtype) for _ in range(self.n_tmp)]
        self._direct = [(k, self.params[k].reshape(-1), self._start[k], sizes[k]) for k in direct]
        if small:
            self._gsmall = np.empty(self.n_small, dtype)
            self._dsmall = np.empty(self.n_small, dtype)
            self._small_views = [(self.params[k].reshape(-1), self._dsmall[self._start[k]:self._start[k] + sizes[k]])
                                 for k in small]

    def _init_state(self):
        pass

    def state(self, name, k):
        """The state ``name`` of param ``k`` (a view, shaped as the param)."""
        a = self._start[k]
        return self.flat_state[name][a:a + self.sizes[k]].reshape(self.params[k].shape)

    def _scalars(self):
        """Per-step constants (called once per step, after the step count was incremented)."""
        return ()

    def _delta(self, g, st, tmp, out, sc):
        """Write the update for gradient block ``g`` (state blocks ``st``) into ``out``."""
        raise NotImplementedError

    def _apply(self, p, delta, sc):
        """p += delta (AdamW also decays p here)."""
        np.add(p, delta, out=p)

    def step(self, grads):
        if isinstance(grads, np.ndarray):
            grads = [grads]
        self.step_count += 1
        sc = self._scalars()
        B = self.block
        flat = [self.flat_state[name] for name in self.state_names]
        delta, apply = self._delta, self._apply
        tmp = self._tmp
        if self._small:
            g = np.concatenate([grads[k] for k in self._small], axis=None, out=self._gsmall)
            d = self._dsmall
            n = self.n_small
            for lo in range(0, n, B):
                hi = min(lo + B, n)
                t = tmp if hi - lo == len(tmp[0]) else [x[:hi - lo] for x in tmp]
                delta(g[lo:hi], [s[lo:hi] for s in flat], t, d[lo:hi], sc)
            for p, dv in self._small_views:
                apply(p, dv, sc)
        for k, p, start, n in self._direct:
            g = grads[k].reshape(-1)
            if n <= B:
                t = tmp if n == len(tmp[0]) else [x[:n] for x in tmp]
                delta(g, [s[start:start + n] for s in flat], t, t[0], sc)
                apply(p, t[0], sc)
                continue
            for lo in range(0, n, B):
                hi = min(lo + B, n)
                t = tmp if hi - lo == len(tmp[0]) else [x[:hi - lo] for x in tmp]
                delta(g[lo:hi], [s[start + lo:start + hi] for s in flat], t, t[0], sc)
                apply(p[lo:hi], t[0], sc)


class NumpyAdam(NumpyOptimizer):
    """Adam/AdamW as torch.optim.Adam: m += (1-b1)(g-m); v = b2 v + (1-b2) g^2;
    p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)  (written as  -lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps*sqrt(bc2)),
    one pass fewer).  Weight decay: L2 (Adam) or decoupled (AdamW); no amsgrad/maximize."""

    state_names = ("exp_avg", "exp_avg_sq")
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    decoupled = False

    def _scalars(self):
        h = self.hyper
        b1, b2 = h["betas"]
        t = self.step_count
        bc1 = 1.0 - b1 ** t
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        return (1.0 - b1, b2, 1.0 - b2, h["eps"] * bc2_sqrt, -h["lr"] * bc2_sqrt / bc1,
                h["weight_decay"], 1.0 - h["lr"] * h["weight_decay"])

    def _delta(self, g, st, tmp, out, sc):
        c1, b2, c2, eps_s, neg_step, wd, _ = sc
        m, v = st
        t = tmp[0]
        if wd != 0.0 and not self.decoupled:
            raise NotImplementedError("NumPy reference Adam: L2 weight decay not implemented")
        np.subtract(g, m, out=t)
        t *= c1
        m += t
        np.multiply(g, g, out=t)
        t *= c2
        v *= b2
        v += t
        np.sqrt(v, out=t)
        t += eps_s
        np.divide(m, t, out=out)
        out *= neg_step

    def _apply(self, p, delta, sc):
        decay = sc[6]
        if self.decoupled and decay != 1.0:
            p *= decay
        p += delta


class NumpyAdamW(NumpyAdam):
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    decoupled = True


class NumpySGD(NumpyOptimizer):
    """SGD with momentum as torch.optim.SGD: b = g (first step) else mu b + (1-damp) g; p -= lr b."""

    state_names = ("momentum_buffer",)
    defaults = dict(lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0)

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0 or h["momentum"] == 0.0:
            raise NotImplementedError("NumPy reference SGD: momentum > 0, no weight decay")
        return (self.step_count == 1, h["momentum"], 1.0 - h["dampening"], -h["lr"])

    def _delta(self, g, st, tmp, out, sc):
        first, mu, keep, neg_lr = sc
        (b,) = st
        if first:
            np.copyto(b, g)
        else:
            b *= mu
            if keep == 1.0:
                b += g
            else:
                t = tmp[0]
                np.multiply(g, keep, out=t)
                b += t
        np.multiply(b, neg_lr, out=out)


class NumpyRMSprop(NumpyOptimizer):
    """RMSprop as torch.optim.RMSprop (not centered, no momentum): s = a s + (1-a) g^2;
    p -= lr g / (sqrt(s) + eps)."""

    state_names = ("square_avg",)
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0)

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0 or h["momentum"] != 0.0:
            raise NotImplementedError("NumPy reference RMSprop: no momentum, no weight decay")
        return (h["alpha"], 1.0 - h["alpha"], h["eps"], -h["lr"])

    def _delta(self, g, st, tmp, out, sc):
        a, c, eps, neg_lr = sc
        (s,) = st
        t = tmp[0]
        np.multiply(g, g, out=t)
        t *= c
        s *= a
        s += t
        np.sqrt(s, out=t)
        t += eps
        np.divide(g, t, out=out)
        out *= neg_lr


class NumpyAdagrad(NumpyOptimizer):
    """Adagrad as torch.optim.Adagrad: s += g^2; p -= lr/(1+(t-1)decay) g / (sqrt(s) + eps)."""

    state_names = ("sum",)
    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, initial_accumulator_value=0.0)

    def _init_state(self):
        self.flat_state["sum"][...] = self.hyper["initial_accumulator_value"]

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference Adagrad: no weight decay")
        return (h["eps"], -h["lr"] / (1.0 + (self.step_count - 1) * h["lr_decay"]))

    def _delta(self, g, st, tmp, out, sc):
        eps, neg_clr = sc
        (s,) = st
        t = tmp[0]
        np.multiply(g, g, out=t)
        s += t
        np.sqrt(s, out=t)
        t += eps
        np.divide(g, t, out=out)
        out *= neg_clr


NUMPY_OPTIMIZERS = {
    "adam": NumpyAdam, "adamw": NumpyAdamW, "sgd": NumpySGD, "rmsprop": NumpyRMSprop,
    "adagrad": NumpyAdagrad,
}


def numpy_clip_grad_norm_(grads, max_norm):
    """clip_grad_norm_ (2-norm) in NumPy: one BLAS dot per array, then one in-place multiply each."""
    total = 0.0
    for g in grads:
        f = g.reshape(-1)
        total += float(np.dot(f, f))
    total = math.sqrt(total)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            np.multiply(g, coef, out=g)
    return total


def make_numpy_optimizer(name, params, **overrides):
    """The NumPy reference of optimizer ``name`` with the benchmark's hyperparameters."""
    return NUMPY_OPTIMIZERS[name](params, **{**CONFIGS[name][1], **overrides})


def make_fastopt_optimizer(name, params):
    import fastopt
    cls, hyper = CONFIGS[name]
    return getattr(fastopt, cls)(params, **hyper)


# ------------------------------------------------------------------------------------------------
# The C ceiling (shared/tools/limit.c), loaded in-process
# ------------------------------------------------------------------------------------------------

_CEILING_WRAPPER = r"""
#define main fastopt_limit_main
#include "%s"
#undef main
double fo_time_adam(long n, float *p, const float *g, float *m, float *v, int k) {
    double a = now();
    for (int i = 0; i < k; i++) adam(n, p, g, m, v, 1e-3f, .9f, .999f, 1e-8f, .5f, .7f);
    return now() - a;
}
double fo_time_traffic(long n, float *p, const float *g, float *m, float *v, int k) {
    double a = now();
    for (int i = 0; i < k; i++) traffic(n, p, g, m, v);
    return now() - a;
}
void fo_set_threads(int n) { omp_set_num_threads(n); }
"""


def find_ceiling_source(explicit=None):
    """limit.c: ``explicit``, else the nearest ``shared/tools/limit.c`` above the cwd or the repository."""
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd().resolve(), here):
        for d in [base, *base.parents]:      # ../shared beside the repo, or beside a worktree folder
            cand = d / "shared" / "tools" / "limit.c"
            if cand.is_file():
                return cand
    return None


class Ceiling:
    """limit.c compiled as a shared library (same flags as limit.sh), timed inside C."""

    def __init__(self, source):
        self.source = Path(source)
        self.dir = tempfile.mkdtemp(prefix="fastopt-ceiling-")
        wrapper = Path(self.dir) / "ceiling.c"
        wrapper.write_text(_CEILING_WRAPPER % str(self.source).replace("\\", "\\\\"))
        lib = Path(self.dir) / "libceiling.so"
        cmd = ["gcc", "-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC",
               "-o", str(lib), str(wrapper), "-lm"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        self.flags = " ".join(cmd[1:6])
        self.lib = ctypes.CDLL(str(lib))
        for fn in (self.lib.fo_time_adam, self.lib.fo_time_traffic):
            fn.restype = ctypes.c_double
            fn.argtypes = [ctypes.c_long] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
        self.lib.fo_set_threads.argtypes = [ctypes.c_int]

    def set_threads(self, n):
        self.lib.fo_set_threads(int(n))

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def load_ceiling(explicit=None, disabled=False, log=print):
    if disabled:
        return None
    src = find_ceiling_source(explicit)
    if src is None:
        log("C ceiling: skipped (no limit.c; pass --ceiling PATH/limit.c)" if not explicit
            else f"C ceiling: skipped ({explicit} does not exist)")
        return None
    if shutil.which("gcc") is None:
        log("C ceiling: skipped (gcc not found)")
        return None
    try:
        return Ceiling(src)
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log(f"C ceiling: skipped (could not build {src}: {detail.strip()[:300]})")
        return None


# ------------------------------------------------------------------------------------------------
# Contenders and timing
# ------------------------------------------------------------------------------------------------


class Contender:
    """``run(k)`` performs k steps and returns the seconds they took."""

    def __init__(self, name, step=None, timed=None):
        self.name = name
        self._step = step
        self._timed = timed

    def run(self, k):
        if self._timed is not None:
            return self._timed(k)
        step = self._step
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        return time.perf_counter() - t0


def measure(contenders, budget, min_reps, max_reps, repeats=None, min_sample=1e-3):
    """Seconds per step of each contender, timed round-robin.

    Each sample times ``k`` consecutive steps (``k`` chosen so a sample lasts >= ``min_sample``);
    the number of rounds fits ``budget`` seconds, clamped to [min_reps, max_reps] (or ``repeats``);
    a cell that runs far over budget (a busy machine) stops after 3 rounds.
    Returns ({name: stats}, rounds), stats = dict(median, min, q25, q75) in seconds per step.
    """
    per_step = {}
    for c in contenders:          # warm-up: state allocation, page faults, first-call costs
        per_step[c.name] = c.run(1)
    for c in contenders:          # a second, warm estimate (not needed for slow steps: k = 1 anyway)
        if per_step[c.name] < 4 * min_sample:
            per_step[c.name] = c.run(1)
        per_step[c.name] = max(per_step[c.name], 1e-7)
    ks = {c.name: max(1, int(min_sample / per_step[c.name])) for c in contenders}
    round_cost = sum(ks[n] * per_step[n] for n in ks)
    reps = repeats or int(min(max_reps, max(min_reps, budget / max(round_cost, 1e-9))))
    samples = {c.name: [] for c in contenders}
    gc_was = gc.isenabled()
    gc.disable()
    t_end = time.perf_counter() + 5 * budget
    done = 0
    try:
        for _ in range(reps):
            for c in contenders:
                k = ks[c.name]
                samples[c.name].append(c.run(k) / k)
            done += 1
            # A busy machine (or OpenMP threads waiting on a preempted core) can make steps far
            # slower than the warm-up said: keep the run bounded, with at least 3 rounds.
            if repeats is None and done >= 3 and time.perf_counter() > t_end:
                break
    finally:
        if gc_was:
            gc.enable()
    stats = {}
    for name, xs in samples.items():
        q25, med, q75 = (float(q) for q in np.percentile(xs, [25, 50, 75]))
        stats[name] = dict(median=med, min=float(min(xs)), q25=q25, q75=q75)
    return stats, done


def noise(stats):
    """The cell's noise: the largest interquartile range relative to its median, over contenders."""
    return max((s["q75"] - s["q25"]) / s["median"] for s in stats.values() if s["median"] > 0)


def parse_size(text):
    t = text.strip().lower()
    if t in (MANY, "200", "200arrays", "many"):
        return MANY
    try:
        n = int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 1e4, 1000000 or {MANY})") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1, got {text!r}")
    return n


def size_label(size):
    if size == MANY:
        return "200 arrays"
    e = math.log10(size)
    return f"1e{int(round(e))}" if abs(e - round(e)) < 1e-9 else str(size)


def shapes_of(size):
    return MANY_SHAPES if size == MANY else [(size,)]


def n_elements(size):
    return int(sum(np.prod(s) for s in shapes_of(size)))


def make_data(size, dtype, seed=0):
    """(initial params, grads) for a size: lists of arrays."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=np.float64).astype(dtype) for s in shapes_of(size)]
    grads = [(rng.standard_normal(s, dtype=np.float64) * 1e-2).astype(dtype) for s in shapes_of(size)]
    return params, grads


def _torch_contenders(torch, name, params0, grads, loop=True):
    cls, hyper = CONFIGS[name]
    out = []
    variants = [("torch-fused", dict(fused=True)), ("torch-foreach", dict(foreach=True))]
    if loop:
        variants.append(("torch-loop", dict(foreach=False)))
    for label, kw in variants:
        tparams = [torch.from_numpy(p.copy()) for p in params0]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g)
        try:
            opt = getattr(torch.optim, cls)(tparams, **hyper, **kw)
            opt.step()
        except (TypeError, RuntimeError, ValueError):
            continue          # e.g. RMSprop has no fused implementation
        out.append(Contender(label, opt.step))
    return out


def _set_threads(th, torch, ceiling):
    import fastopt
    fastopt.set_num_threads(th)
    if torch is not None:
        torch.set_num_threads(th)
    if ceiling is not None:
        ceiling.set_threads(th)


def _blas_limits(th):
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=th, user_api="blas")
    except ImportError:
        import contextlib
        return contextlib.nullcontext()


def bench_cell(name, size, dtype, th, data, torch, ceiling, timing, torch_loop=None, numpy_block=None):
    """Time one (optimizer, size, dtype, threads) cell; returns {contender: seconds per step}, reps."""
    params0, grads = data
    contenders = []
    fo_params = [p.copy() for p in params0]
    fo = make_fastopt_optimizer(name, fo_params)
    contenders.append(Contender("fastopt", lambda: fo.step(grads)))
    np_params = [p.copy() for p in params0]
    npo = make_numpy_optimizer(name, np_params, **({} if numpy_block is None else {"block": numpy_block}))
    contenders.append(Contender("numpy", lambda: npo.step(grads)))
    if torch is not None:
        # foreach=False differs from foreach=True only with several tensors (one tensor: the same
        # arithmetic, one kernel per op); by default it is timed on the 200-array case only.
        loop = (size == MANY) if torch_loop is None else torch_loop
        contenders.extend(_torch_contenders(torch, name, params0, grads, loop=loop))
    if ceiling is not None and name == "adam" and dtype == np.float32:
        n = n_elements(size)
        if size != MANY:
            # The C step runs on fastopt's own param, gradient and state buffers, so both see the
            # same memory and the same cache state: a big shared L3 otherwise favours whichever
            # contender's buffers happen to be resident.
            fo.step(grads)
            bucket = fo._buckets[0][0]
            cp, cg = fo_params[0].reshape(-1), grads[0].reshape(-1)
            cm, cv = bucket.arenas["exp_avg"], bucket.arenas["exp_avg_sq"]
        else:
            cp, cm, cv = np.ones(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
            cg = np.concatenate(grads, axis=None)
        ptrs = [a.ctypes.data for a in (cp, cg, cm, cv)]
        fn = ceiling.lib.fo_time_adam
        contenders.append(Contender("C-ceiling", timed=lambda k: fn(n, *ptrs, k)))
    _set_threads(th, torch, ceiling)
    with _blas_limits(th):
        return measure(contenders, **timing)


def restored_calls(fn, grads, fresh):
    """A timed ``run(k)``: k calls of ``fn()``, each on gradients freshly copied from ``fresh``.

    Clipping the same arrays over and over would converge to a norm just under ``max_norm`` where the
    scaling pass is skipped (fastopt and NumPy skip it when the coefficient is >= 1, torch never
    does), so the steady state would time the norm alone. Each call gets the original gradients
    back (norm ~12 > max_norm: every call scales); the copy is not timed.
    """
    def timed(k):
        total = 0.0
        for _ in range(k):
            for d, s in zip(grads, fresh):
                np.copyto(d, s)
            t0 = time.perf_counter()
            fn()
            total += time.perf_counter() - t0
        return total
    return timed


def bench_clip(size, dtype, th, data, torch, timing):
    import fastopt
    _, grads0 = data
    contenders = []
    fg = [g.copy() for g in grads0]
    contenders.append(Contender("fastopt", timed=restored_calls(
        lambda: fastopt.clip_grad_norm_(fg, CLIP_MAX_NORM), fg, grads0)))
    ng = [g.copy() for g in grads0]
    contenders.append(Contender("numpy", timed=restored_calls(
        lambda: numpy_clip_grad_norm_(ng, CLIP_MAX_NORM), ng, grads0)))
    if torch is not None:
        tparams = [torch.from_numpy(np.zeros_like(g)) for g in grads0]
        tg = [g.copy() for g in grads0]
        for tp, g in zip(tparams, tg):
            tp.grad = torch.from_numpy(g)          # shares memory with tg
        clip = torch.nn.utils.clip_grad_norm_
        contenders.append(Contender("torch-foreach", timed=restored_calls(
            lambda: clip(tparams, CLIP_MAX_NORM, foreach=True), tg, grads0)))
    _set_threads(th, torch, None)
    with _blas_limits(th):
        return measure(contenders, **timing)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

COLUMNS = ["fastopt", "C-ceiling", "torch-fused", "torch-foreach", "torch-loop", "numpy"]


def machine_info():
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    return {"cpu": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "loadavg": load}


def _fmt(x, width=8):
    if x is None or not math.isfinite(x):
        return "-".rjust(width)
    if x >= 100:
        s = f"{x:.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    elif x >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3f}"
    return s.rjust(width)


def _ratio(a, b):
    return a / b if a is not None and b else None


NOISY = 0.25


def _noise(r):
    """The cell's noise (largest IQR/median over its contenders), flagged '!' above NOISY."""
    x = r.get("noise")
    if x is None:
        return "-".rjust(6)
    return (f"{100 * x:.0f}%" + ("!" if x > NOISY else " ")).rjust(6)


def format_table(rows):
    head = (f"{'optimizer':<9} {'dtype':<7} {'size':>10} {'thr':>3} "
            + " ".join(f"{c:>13}" for c in COLUMNS)
            + f" {'fused/fo':>9} {'numpy/fo':>9} {'fo/ceil':>8} {'noise':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ns = r["ns_per_elem"]
        lines.append(
            f"{r['optimizer']:<9} {r['dtype']:<7} {r['size']:>10} {r['threads']:>3} "
            + " ".join(_fmt(ns.get(c), 13) for c in COLUMNS)
            + f" {_fmt(_ratio(ns.get('torch-fused'), ns['fastopt']), 9)}"
            + f" {_fmt(_ratio(ns.get('numpy'), ns['fastopt']), 9)}"
            + f" {_fmt(_ratio(ns['fastopt'], ns.get('C-ceiling')), 8)}"
            + f" {_noise(r)}")
    return "\n".join(lines)


def format_clip(rows):
    cols = ["fastopt", "torch-foreach", "numpy"]
    head = (f"{'dtype':<7} {'size':>10} {'thr':>3} " + " ".join(f"{c:>13}" for c in cols)
            + f" {'torch/fo':>9} {'numpy/fo':>9} {'noise':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        us = r["us_per_call"]
        lines.append(f"{r['dtype']:<7} {r['size']:>10} {r['threads']:>3} "
                     + " ".join(_fmt(us.get(c), 13) for c in cols)
                     + f" {_fmt(_ratio(us.get('torch-foreach'), us['fastopt']), 9)}"
                     + f" {_fmt(_ratio(us.get('numpy'), us['fastopt']), 9)}"
                     + f" {_noise(r)}")
    return "\n".join(lines)


def check_targets(rows, clip_rows):
    """Issue 3's targets from the measured ratios: a list of (ok or None, text)."""
    def find(size, th, opt="adam", dtype="float32"):
        for r in rows:
            if r["optimizer"] == opt and r["dtype"] == dtype and r["n_key"] == size and r["threads"] == th:
                return r
        return None

    threads = sorted({r["threads"] for r in rows} | {r["threads"] for r in clip_rows})
    out = []

    def add(ok, text, row=None):
        if row is not None and row.get("noise", 0) > NOISY:
            text += f"  [noisy cell: IQR {100 * row['noise']:.0f}% of median]"
        out.append((ok, text))

    def ratio_target(row, what, num, den, cmp, goal, goal_text):
        ns = row["ns_per_elem"] if "ns_per_elem" in row else row["us_per_call"]
        q = _ratio(ns.get(num), ns.get(den))
        if q is None:
            add(None, f"{what}: not measured ({num if ns.get(num) is None else den} missing)")
        else:
            add(cmp(q, goal), f"{what}: {goal_text} = {_fmt(q, 0).strip()} (target {'<=' if cmp is _le else '>='} {goal})", row)

    f32 = "Adam float32"
    for th in threads:
        r = find(10 ** 7, th)
        if r is None:
            add(None, f"{f32} 1 x 1e7, {th} thr: not measured")
            continue
        ratio_target(r, f"{f32} 1 x 1e7, {th} thr", "fastopt", "C-ceiling", _le, 1.05, "fastopt/ceiling")
        ratio_target(r, f"{f32} 1 x 1e7, {th} thr", "torch-fused", "fastopt", _ge, 1.0,
                     "torch fused/fastopt (faster than torch fused)")
    for th in threads:
        r = find(10 ** 4, th)
        if r is None:
            add(None, f"{f32} 1 x 1e4, {th} thr: not measured")
            continue
        ratio_target(r, f"{f32} 1 x 1e4, {th} thr", "torch-fused", "fastopt", _ge, 10, "torch fused/fastopt")
    for th in threads:
        r = find(MANY, th)
        if r is None:
            add(None, f"{f32} 200 arrays, {th} thr: not measured")
            continue
        ratio_target(r, f"{f32} 200 arrays, {th} thr", "torch-fused", "fastopt", _ge, 2.5, "torch fused/fastopt")
        ns = r["ns_per_elem"]
        if ns.get("C-ceiling") is not None:
            over = (ns["fastopt"] - ns["C-ceiling"]) * r["n"] / 1e3
            add(over <= 10.0, f"{f32} 200 arrays, {th} thr: overhead beyond memory traffic = fastopt - "
                              f"ceiling x N = {over:.1f} us/step (target <= 10 us)", r)
        else:
            add(None, f"{f32} 200 arrays, {th} thr: overhead not estimated (no C ceiling)")
    vs_numpy = [r for r in rows if r["optimizer"] == "adam" and r["dtype"] == "float32" and r["n"] >= 10 ** 4]
    for r in vs_numpy:
        ratio_target(r, f"{f32} {r['size']}, {r['threads']} thr", "numpy", "fastopt", _ge, 5, "numpy/fastopt")
    if not vs_numpy:
        add(None, f"{f32} vs NumPy from 1e4 up: not measured")
    clip32 = [c for c in clip_rows if c["dtype"] == "float32"]
    for c in clip32:
        ratio_target(c, f"clip_grad_norm_ float32 200 arrays, {c['threads']} thr", "torch-foreach", "fastopt",
                     _ge, 3, "torch (foreach)/fastopt")
    if not clip32:
        add(None, "clip_grad_norm_ float32 200 arrays: not measured")
    return out


def _le(a, b):
    return a <= b


def _ge(a, b):
    return a >= b


def write_plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(len(opts), len(dtypes), figsize=(6 * len(dtypes), 3.6 * len(opts)),
                             squeeze=False)
    colors = dict(zip(COLUMNS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = ["-", "--", ":", "-."]
    for i, opt in enumerate(opts):
        for j, dt in enumerate(dtypes):
            ax = axes[i][j]
            for c in COLUMNS:
                for ti, th in enumerate(threads):
                    sel = [r for r in rows if r["optimizer"] == opt and r["dtype"] == dt
                           and r["threads"] == th and r["ns_per_elem"].get(c) is not None]
                    single = sorted((r["n"], r["ns_per_elem"][c]) for r in sel if r["n_key"] != MANY)
                    many = [(r["n"], r["ns_per_elem"][c]) for r in sel if r["n_key"] == MANY]
                    if single:
                        ax.plot(*zip(*single), styles[ti % 4], marker="o", ms=3, color=colors[c],
                                label=f"{c} ({th} thr)")
                    if many:
                        ax.plot(*zip(*many), "*", ms=9, color=colors[c])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{opt} {dt}  (star: 200 arrays)")
            ax.set_xlabel("elements")
            ax.set_ylabel("ns / element / step")
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_lbfgs(args, log):
    """L-BFGS vs SciPy's L-BFGS-B: time per iteration outside the objective (chained Rosenbrock)."""
    from .benchmarks import lbfgs_vs_scipy as _bench_lbfgs

    sizes = (100, 1000) if args.quick else _bench_lbfgs.DEFAULT_SIZES
    repeats = args.repeats if args.repeats else (2 if args.quick else 5)
    log(f"L-BFGS vs SciPy L-BFGS-B at n = {', '.join(str(int(n)) for n in sizes)} ({repeats} runs each)")
    rows = _bench_lbfgs.compare_with_scipy(sizes=sizes, repeats=repeats)
    print("\nL-BFGS vs SciPy L-BFGS-B: microseconds per iteration spent outside the objective "
          "(chained Rosenbrock, m=10, one BLAS thread, best of the runs; ratio = fastopt / SciPy;\n"
          "history floor = one-threaded OpenBLAS doing the two passes over the 2m x n history "
          "that any L-BFGS iteration needs)")
    print(_bench_lbfgs.format_rows(rows))
    print("\nIssue 4 targets (overhead per iteration, fastopt / SciPy)")
    for r in rows:
        limit = 0.1 if r["n"] <= 1000 else (0.2 if r["n"] >= 100_000 else None)
        if limit is None:
            continue
        mark = "\u2713" if r["ratio"] <= limit else "\u2717"
        floor = ("" if r["floor_ratio"] is None
                 else f"; the history floor alone is {r['floor_ratio']:.3f}")
        print(f"  {mark} n = {r['n']:,}: {r['ratio']:.3f} (target <= {limit}{floor})")
    return rows


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def build_parser(prog="fastopt bench"):
    ap = argparse.ArgumentParser(
        prog=prog,
        description="fastopt's fused steps vs torch.optim, in-place NumPy and the C ceiling: "
                    "ns per element per step, medians of round-robin repetitions, ratios from one run.")
    ap.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS,
                    help=f"comma-separated, from {','.join(CONFIGS)} (default: all)")
    ap.add_argument("--sizes", default=None,
                    help=f"comma-separated element counts of one array, and/or {MANY} for the 200-array "
                         f"model (default {DEFAULT_SIZES}; with --quick {QUICK_SIZES})")
    ap.add_argument("--dtypes", default="float32,float64", help="float32 and/or float64 (default both)")
    ap.add_argument("--threads", default=None, help="comma-separated (default: 1 and all cores)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds per cell (default: fit ~0.2 s per cell, clamped to 5..41)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3-11 short rounds per cell, no 1e7 unless --sizes asks")
    ap.add_argument("--no-clip", action="store_true", help="skip the clip_grad_norm_ benchmark")
    ap.add_argument("--no-torch", action="store_true", help="leave torch out even when installed")
    ap.add_argument("--torch-loop", action="store_true", default=None,
                    help="time torch foreach=False at every size (default: on the 200 arrays only)")
    ap.add_argument("--numpy-block", type=int, default=None, metavar="ELEMENTS",
                    help="NumPy's cache block in elements (default: 256 KiB per stream; 0: no blocking, "
                         "whole-array ufuncs as usually written)")
    ap.add_argument("--ceiling", metavar="LIMIT_C", default=None,
                    help="path of limit.c (default: the nearest shared/tools/limit.c above the cwd or "
                         "the repository, i.e. ../shared/tools/limit.c)")
    ap.add_argument("--no-ceiling", action="store_true", help="do not build/time the C ceiling")
    ap.add_argument("--plot", nargs="?", const="fastopt-bench.png", default="fastopt-bench.png",
                    metavar="OUT.png", help="write a log-log plot (default fastopt-bench.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", metavar="OUT.json", default=None, help="write all results as JSON")
    ap.add_argument("--no-lbfgs", dest="lbfgs", action="store_false",
                    help="skip the L-BFGS vs SciPy L-BFGS-B comparison (run by default, ~5 s)")
    ap.add_argument("--lbfgs", dest="lbfgs", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv=None, prog="fastopt bench"):
    args = build_parser(prog).parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import fastopt

    try:
        opts = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
        bad = [o for o in opts if o not in CONFIGS and o != "none"]
        if bad:
            raise ValueError(f"unknown optimizer(s) {bad}; choose from {list(CONFIGS)}")
        opts = [o for o in opts if o != "none"]
        size_text = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        sizes = [parse_size(s) for s in size_text.split(",") if s.strip()]
        dtypes = [np.dtype(d.strip()) for d in args.dtypes.split(",") if d.strip()]
        if any(d not in (np.float32, np.float64) for d in dtypes):
            raise ValueError("dtypes must be float32 and/or float64")
        cores = machine_info()["usable_cpus"] or 1
        threads = ([int(t) for t in args.threads.split(",") if t.strip()] if args.threads
                   else sorted({1, cores}))
        if any(t < 1 for t in threads):
            raise ValueError("threads must be >= 1")
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        print(f"fastopt bench: error: {exc}", file=sys.stderr)
        return 2
    args.threads = threads
    if args.numpy_block is not None and args.numpy_block < 0:
        print("fastopt bench: error: --numpy-block must be >= 0", file=sys.stderr)
        return 2
    if args.quick:
        timing = dict(budget=0.03, min_reps=3, max_reps=11, repeats=args.repeats, min_sample=2e-4)
    else:
        timing = dict(budget=0.2, min_reps=5, max_reps=41, repeats=args.repeats, min_sample=1e-3)

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    ceiling = load_ceiling(args.ceiling, args.no_ceiling, log=print) if "adam" in opts else None

    info = machine_info()
    print("fastopt bench -- ns per element per step (medians; contenders interleaved round-robin)")
    print(f"machine : {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs; "
          f"load average {', '.join(f'{x:.2f}' for x in info['loadavg']) if info['loadavg'] else '?'}")
    print(f"software: Python {info['python']}, NumPy {info['numpy']}, "
          f"torch {torch.__version__ if torch is not None else 'not installed'}, fastopt {fastopt.__version__}")
    print(f"fastopt.build_info(): {fastopt.build_info()}")
    if ceiling is not None:
        print(f"C ceiling: {ceiling.source} built with gcc {ceiling.flags}, timed inside C")
    print(f"200 arrays = 4 x (512,512) + 96 x (512,) + 100 x (4096,) = {n_elements(MANY):,} elements")
    blk = ("unblocked" if args.numpy_block == 0 else
           f"cache-blocked by {args.numpy_block} elements" if args.numpy_block else
           "cache-blocked by 256 KiB per stream")
    print(f"NumPy: in-place out= ufuncs, {blk}, single-threaded whatever the thread count (NumPy's "
          "ufuncs are)\ntorch-loop (foreach=False): on the 200 arrays only unless --torch-loop")
    print(flush=True)

    cells = [(s, d, o, t) for s in sizes for d in dtypes for o in opts for t in threads]
    clip_cells = [] if args.no_clip else [(d, t) for d in dtypes for t in threads]
    total = len(cells) + len(clip_cells)
    rows, clip_rows = [], []
    t_start = time.perf_counter()
    done = 0
    try:
        data_cache = {}
        for size in sizes:
            for dtype in dtypes:
                data_cache = {(size, dtype): make_data(size, dtype)}   # one size in memory at a time
                for name in opts:
                    for th in threads:
                        done += 1
                        t0 = time.perf_counter()
                        stats, reps = bench_cell(name, size, dtype, th, data_cache[(size, dtype)], torch,
                                                 ceiling, timing, torch_loop=args.torch_loop,
                                                 numpy_block=args.numpy_block)
                        n = n_elements(size)
                        ns = {c: s["median"] * 1e9 / n for c, s in stats.items()}
                        rows.append(dict(optimizer=name, dtype=dtype.name, size=size_label(size),
                                         n_key=size, n=n, threads=th, reps=reps, ns_per_elem=ns,
                                         noise=noise(stats), seconds_per_step=stats))
                        log(f"[{done:3d}/{total}] {name:<8} {dtype.name:<7} {size_label(size):>10} "
                            f"thr={th}: fastopt {ns['fastopt']:.3g} ns/elem, "
                            f"{reps} rounds, {time.perf_counter() - t0:.1f} s")
        if clip_cells:
            for dtype in dtypes:
                data = make_data(MANY, dtype, seed=1)
                for th in threads:
                    done += 1
                    t0 = time.perf_counter()
                    stats, reps = bench_clip(MANY, dtype, th, data, torch, timing)
                    us = {c: s["median"] * 1e6 for c, s in stats.items()}
                    clip_rows.append(dict(dtype=dtype.name, size="200 arrays", n=n_elements(MANY),
                                          threads=th, reps=reps, us_per_call=us, noise=noise(stats),
                                          seconds_per_call=stats))
                    log(f"[{done:3d}/{total}] clip     {dtype.name:<7} 200 arrays thr={th}: "
                        f"fastopt {us['fastopt']:.1f} us, {reps} rounds, {time.perf_counter() - t0:.1f} s")
    finally:
        if ceiling is not None:
            ceiling.close()
    elapsed = time.perf_counter() - t_start

    if rows:
        print("Optimizer steps, ns per element per step (lower is better); ratios > 1: fastopt is faster")
        print("(fused/fo = torch fused / fastopt, numpy/fo = NumPy / fastopt, fo/ceil = fastopt / C ceiling)")
        print(format_table(rows))
    if clip_rows:
        print(f"\nclip_grad_norm_(max_norm={CLIP_MAX_NORM}) over the 200 arrays (norm ~12: every call "
              "scales), us per call")
        print(format_clip(clip_rows))
    if rows or clip_rows:
        print(f"noise: the largest interquartile range / median among a cell's contenders ('!' above "
              f"{100 * NOISY:.0f}%: the machine was busy; rerun or raise --repeats)")
    targets = check_targets(rows, clip_rows)
    print("\nIssue 3 targets (from the ratios above; one run on a possibly busy machine)")
    for ok, text in targets:
        mark = "?" if ok is None else ("\u2713" if ok else "\u2717")
        print(f"  {mark} {text}")
    print(f"\n{len(rows) + len(clip_rows)} cells in {elapsed:.1f} s")

    lbfgs = run_lbfgs(args, log) if args.lbfgs else None

    if not args.no_plot and rows:
        try:
            write_plot(rows, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("plot: skipped (matplotlib is not installed)")
    if args.json:
        payload = dict(machine=info, build_info=fastopt.build_info(),
                       torch=torch.__version__ if torch is not None else None,
                       configs={k: v[1] for k, v in CONFIGS.items()},
                       results=[{k: v for k, v in r.items() if k != "n_key"} for r in rows],
                       clip=clip_rows,
                       targets=[{"ok": ok, "text": text} for ok, text in targets],
                       lbfgs=lbfgs if isinstance(lbfgs, (dict, list)) else None,
                       elapsed_s=elapsed)
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1, default=str)
        print(f"json: {args.json}")
    return 0
