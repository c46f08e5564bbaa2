"""The fastest in-place NumPy updates we could write: the benchmark's ``numpy`` column.

Each class follows torch.optim's update for the benchmark's configuration (the options it needs, no
more) with ``out=`` ufuncs over preallocated temporaries, cache-blocked for large arrays, with flat
state, single-threaded (as NumPy's ufuncs are). They are also the references of ``bench/``
(pytest-benchmark), and ``tests/tooling/test_bench_cli.py`` checks them against fastopt.
"""
import math

import numpy as np

from .settings import ALGORITHMS

def _average_square(acc, g, decay, weight, tmp):
    """``acc = decay * acc + weight * g**2`` in place (decay and weight 1: ``acc += g**2``)."""
    np.multiply(g, g, out=tmp)
    if weight != 1.0:
        tmp *= weight
    if decay != 1.0:
        acc *= decay
    acc += tmp


def _lerp_toward(acc, g, weight, tmp):
    """``acc += weight * (g - acc)`` in place: torch's ``lerp_`` of a first moment."""
    np.subtract(g, acc, out=tmp)
    tmp *= weight
    acc += tmp


def _scaled_ratio(num, acc, eps, scale, tmp, out):
    """``out = scale * num / (sqrt(acc) + eps)``."""
    np.sqrt(acc, out=tmp)
    tmp += eps
    np.divide(num, tmp, out=out)
    out *= scale


class NumpyOptimizer:
    """Base of the in-place NumPy reference optimizers (torch.optim semantics, flat state).

    The state lives in one flat array per state name (as fastopt's arenas). A step computes the
    update ``delta`` with ``out=`` ufuncs into preallocated temporaries, block by block so that the
    temporaries and the state stay in cache (``block_bytes`` per stream), then adds it to the param
    (blocking halves NumPy's time at 1e6-1e7 elements on a 2 MiB-L2 machine). Small params (below a
    block) are handled together: their gradients are gathered into one flat buffer by a single
    ``np.concatenate(out=)``, the update is computed flat, and each param gets one ``+=`` of its
    slice -- ~12 ufunc calls per block plus one per param, instead of ~12 per param.

    ``hyper`` are the benchmark's hyperparameters of the algorithm (``settings.ALGORITHMS[name]
    .hyper``: every number the update reads), as :func:`make_numpy_optimizer` passes them.
    """

    state_names = ()
    n_tmp = 1
    #: Bytes per stream in a block: 256 KiB x ~5 streams stay inside a 2 MiB L2 (measured best).
    block_bytes = 1 << 18

    def __init__(self, params, block=None, **hyper):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("no params")
        dtype = self.params[0].dtype
        if any(p.dtype != dtype or not p.flags.c_contiguous for p in self.params):
            raise ValueError("NumPy reference: params must share one dtype and be C-contiguous")
        self.dtype = dtype
        self.hyper = hyper
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
        _lerp_toward(m, g, c1, t)
        _average_square(v, g, b2, c2, t)
        _scaled_ratio(m, v, eps_s, neg_step, t, out)

    def _apply(self, p, delta, sc):
        decay = sc[6]
        if self.decoupled and decay != 1.0:
            p *= decay
        p += delta


class NumpyAdamW(NumpyAdam):
    decoupled = True


class NumpySGD(NumpyOptimizer):
    """SGD with momentum as torch.optim.SGD: b = g (first step) else mu b + (1-damp) g; p -= lr b."""

    state_names = ("momentum_buffer",)

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

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0 or h["momentum"] != 0.0:
            raise NotImplementedError("NumPy reference RMSprop: no momentum, no weight decay")
        return (h["alpha"], 1.0 - h["alpha"], h["eps"], -h["lr"])

    def _delta(self, g, st, tmp, out, sc):
        a, c, eps, neg_lr = sc
        (s,) = st
        _average_square(s, g, a, c, tmp[0])
        _scaled_ratio(g, s, eps, neg_lr, tmp[0], out)


class NumpyAdagrad(NumpyOptimizer):
    """Adagrad as torch.optim.Adagrad: s += g^2; p -= lr/(1+(t-1)decay) g / (sqrt(s) + eps)."""

    state_names = ("sum",)

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
        _average_square(s, g, 1.0, 1.0, tmp[0])
        _scaled_ratio(g, s, eps, neg_clr, tmp[0], out)


class NumpyNAdam(NumpyOptimizer):
    """NAdam as torch.optim.NAdam (no weight decay): m, v as Adam;
    mu_t = b1 (1 - 0.5 * 0.96^(t psi)), mu_prod = prod mu_1..t; d = sqrt(v / bc2) + eps;
    p -= lr (1 - mu_t) / (1 - mu_prod) g / d + lr mu_{t+1} / (1 - mu_prod mu_{t+1}) m / d."""

    state_names = ("exp_avg", "exp_avg_sq")
    n_tmp = 2

    def _init_state(self):
        self.mu_product = 1.0

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference NAdam: no weight decay")
        b1, b2 = h["betas"]
        t = self.step_count
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * h["momentum_decay"]))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * h["momentum_decay"]))
        # torch keeps mu_product as a float32 tensor: rounded to float32 every step
        self.mu_product = float(np.float32(self.mu_product * float(np.float32(mu))))
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        # d = sqrt(v)/bc2_sqrt + eps = (sqrt(v) + eps bc2_sqrt) / bc2_sqrt: the bc2_sqrt goes
        # into both step sizes
        grad_step = -h["lr"] * (1.0 - mu) / (1.0 - self.mu_product) * bc2_sqrt
        avg_step = -h["lr"] * mu_next / (1.0 - self.mu_product * mu_next) * bc2_sqrt
        return (1.0 - b1, b2, 1.0 - b2, h["eps"] * bc2_sqrt, grad_step, avg_step)

    def _delta(self, g, st, tmp, out, sc):
        c1, b2, c2, eps_s, grad_step, avg_step = sc
        m, v = st
        t, u = tmp[0], tmp[1]
        _lerp_toward(m, g, c1, t)
        _average_square(v, g, b2, c2, t)
        np.sqrt(v, out=t)
        t += eps_s
        np.divide(g, t, out=u)
        np.divide(m, t, out=out)
        out *= avg_step
        u *= grad_step
        out += u


class NumpyRAdam(NumpyOptimizer):
    """RAdam as torch.optim.RAdam (no weight decay): m, v as Adam; rho_t = rho_inf - 2 t b2^t / bc2;
    if rho_t > 5: p -= lr r_t sqrt(bc2) / bc1 * m / (sqrt(v) + eps), else p -= lr / bc1 * m."""

    state_names = ("exp_avg", "exp_avg_sq")

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference RAdam: no weight decay")
        b1, b2 = h["betas"]
        t = self.step_count
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2 ** t / bc2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            return (1.0 - b1, b2, 1.0 - b2, True, h["eps"], -h["lr"] * rect * math.sqrt(bc2) / bc1)
        return (1.0 - b1, b2, 1.0 - b2, False, h["eps"], -h["lr"] / bc1)

    def _delta(self, g, st, tmp, out, sc):
        c1, b2, c2, rectified, eps, step = sc
        m, v = st
        t = tmp[0]
        _lerp_toward(m, g, c1, t)
        _average_square(v, g, b2, c2, t)
        if rectified:
            _scaled_ratio(m, v, eps, step, t, out)
        else:
            np.multiply(m, step, out=out)


class NumpyAdamax(NumpyOptimizer):
    """Adamax as torch.optim.Adamax (no weight decay): m as Adam; u = max(b2 u, |g| + eps);
    p -= lr / bc1 * m / u."""

    state_names = ("exp_avg", "exp_inf")

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference Adamax: no weight decay")
        b1, b2 = h["betas"]
        return (1.0 - b1, b2, h["eps"], -h["lr"] / (1.0 - b1 ** self.step_count))

    def _delta(self, g, st, tmp, out, sc):
        c1, b2, eps, step = sc
        m, u = st
        t = tmp[0]
        _lerp_toward(m, g, c1, t)
        np.abs(g, out=t)
        t += eps
        u *= b2
        np.maximum(u, t, out=u)
        np.divide(m, u, out=out)
        out *= step


class NumpyLion(NumpyOptimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; no weight decay):
    p -= lr sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g."""

    state_names = ("exp_avg",)
    n_tmp = 2

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference Lion: no weight decay")
        b1, b2 = h["betas"]
        return (b1, 1.0 - b1, b2, 1.0 - b2, -h["lr"])

    def _delta(self, g, st, tmp, out, sc):
        b1, c1, b2, c2, neg_lr = sc
        (m,) = st
        t = tmp[1]             # out may be tmp[0]
        np.multiply(m, b1, out=out)
        np.multiply(g, c1, out=t)
        out += t
        np.sign(out, out=out)
        out *= neg_lr
        m *= b2
        np.multiply(g, c2, out=t)
        m += t


class NumpyAdadelta(NumpyOptimizer):
    """Adadelta as torch.optim.Adadelta: v = rho v + (1-rho) g^2; d = sqrt(u + eps)/sqrt(v + eps) g;
    u = rho u + (1-rho) d^2; p -= lr d."""

    state_names = ("square_avg", "acc_delta")
    n_tmp = 2

    def _scalars(self):
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference Adadelta: no weight decay")
        return (h["rho"], 1.0 - h["rho"], h["eps"], -h["lr"])

    def _delta(self, g, st, tmp, out, sc):
        rho, c, eps, neg_lr = sc
        v, u = st
        d, t = tmp
        _average_square(v, g, rho, c, d)
        np.add(u, eps, out=d)
        np.sqrt(d, out=d)
        np.add(v, eps, out=t)
        np.sqrt(t, out=t)
        d /= t
        d *= g
        _average_square(u, d, rho, c, t)
        np.multiply(d, neg_lr, out=out)


class NumpyRprop(NumpyOptimizer):
    """Rprop as torch.optim.Rprop: s = sign(g prev); step sizes times etaplus (s > 0) or etaminus
    (s < 0), clamped; g = 0 where s < 0; p -= sign(g) step_size; prev = g."""

    state_names = ("prev", "step_size")
    n_tmp = 2

    def _init_state(self):
        self.flat_state["step_size"][...] = self.hyper["lr"]
        self._mask = np.empty(min(max(self.n, 1), self.block), dtype=bool)

    def _scalars(self):
        h = self.hyper
        return h["etas"] + h["step_sizes"]

    def _delta(self, g, st, tmp, out, sc):
        etaminus, etaplus, lo, hi = sc
        prev, size = st
        s, f = tmp
        mask = self._mask[:len(g)]
        np.multiply(g, prev, out=s)
        f.fill(1.0)
        np.greater(s, 0, out=mask)
        np.copyto(f, etaplus, where=mask)
        np.less(s, 0, out=mask)
        np.copyto(f, etaminus, where=mask)
        size *= f
        np.clip(size, lo, hi, out=size)
        np.copyto(prev, g)
        np.copyto(prev, 0, where=mask)          # no step where the gradient changed sign
        np.sign(prev, out=out)
        out *= size
        np.negative(out, out=out)


class NumpyASGD(NumpyOptimizer):
    """ASGD as torch.optim.ASGD: p = p (1 - lambd eta) - eta g; ax += mu (p - ax) (ax = p while
    mu = 1); then eta and mu of the next step, as float32 (torch's scalar tensors). The update
    needs the new p, so this class steps each block in place itself."""

    state_names = ("ax",)

    def _init_state(self):
        self._eta = float(np.float32(self.hyper["lr"]))
        self._mu = 1.0

    def step(self, grads):
        if isinstance(grads, np.ndarray):
            grads = [grads]
        h = self.hyper
        if h["weight_decay"] != 0.0:
            raise NotImplementedError("NumPy reference ASGD: no weight decay")
        self.step_count += 1
        t = self.step_count
        eta, mu, decay = self._eta, self._mu, 1.0 - h["lambd"] * self._eta
        tmp = self._tmp[0]
        ax = self.flat_state["ax"]
        B = self.block
        for k, p in enumerate(self.params):
            flat_p, flat_g = p.reshape(-1), grads[k].reshape(-1)
            start, n = self._start[k], self.sizes[k]
            for lo in range(0, n, B):
                hi = min(lo + B, n)
                pb, gb, ab, tb = flat_p[lo:hi], flat_g[lo:hi], ax[start + lo:start + hi], tmp[:hi - lo]
                pb *= decay
                np.multiply(gb, -eta, out=tb)
                pb += tb
                if mu != 1.0:
                    np.subtract(pb, ab, out=tb)
                    tb *= mu
                    ab += tb
                else:
                    np.copyto(ab, pb)
        self._eta = float(np.float32(h["lr"] / ((1 + h["lambd"] * h["lr"] * t) ** h["alpha"])))
        self._mu = float(np.float32(1 / max(1, t - h["t0"])))


NUMPY_OPTIMIZERS = {
    "adam": NumpyAdam, "adamw": NumpyAdamW, "sgd": NumpySGD, "rmsprop": NumpyRMSprop,
    "adagrad": NumpyAdagrad, "nadam": NumpyNAdam, "radam": NumpyRAdam, "adamax": NumpyAdamax,
    "lion": NumpyLion, "adadelta": NumpyAdadelta, "rprop": NumpyRprop, "asgd": NumpyASGD,
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
    """The NumPy reference of algorithm ``name`` with the benchmark's hyperparameters."""
    return NUMPY_OPTIMIZERS[name](params, **{**ALGORITHMS[name].hyper, **overrides})
