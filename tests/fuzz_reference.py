"""Small NumPy references of fastopt's optimizers, for the fuzz tests.

Each reference keeps its own params and state and applies torch.optim's update elementwise in the
param's dtype, one rounded operation at a time in the documented order (scalars rounded to the
param's dtype first, bias corrections and step sizes computed in float64), so the results are
bit-identical to the compiled kernels (built with -ffp-contract=off). A ``None`` gradient skips its
param (state and step count untouched); ``skip_nonfinite`` skips the whole step.
"""
import math

import numpy as np


def _lerp(start, end, weight, T):
    """torch.lerp's formula in the param's dtype, switching form at weight 0.5."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (T(1) - weight)


class Reference:
    state_names = ()

    def __init__(self, groups, skip_nonfinite=False):
        # groups: list of (list of param arrays (copied), hyperparameter dict)
        self.groups = [([p.copy() for p in params], dict(hyper)) for params, hyper in groups]
        self.params = [p for params, _ in self.groups for p in params]
        self.state = [dict() for _ in self.params]
        self.steps = [0] * len(self.params)
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self.init_state()

    def init_state(self):
        pass

    def step(self, grads):
        with np.errstate(all="ignore"):   # NaN/Inf are expected inputs here
            return self._step(grads)

    def _step(self, grads):
        if self.skip_nonfinite and not all(g is None or np.all(np.isfinite(g)) for g in grads):
            self.skipped_steps += 1
            return False
        i = 0
        for params, hyper in self.groups:
            for p in params:
                g = grads[i]
                if g is not None:
                    self.update(i, p, g, hyper)
                    self.steps[i] += 1
                i += 1
        return True

    def buffer(self, i, name, fill=0.0):
        st = self.state[i]
        if name not in st:
            st[name] = np.full(self.params[i].shape, fill, dtype=self.params[i].dtype)
        return st[name]


class SGDRef(Reference):
    def update(self, i, p, g, h):
        T = p.dtype.type
        lr_neg, wd, sign = T(-h["lr"]), T(h["weight_decay"]), T(-1.0 if h["maximize"] else 1.0)
        momentum, keep = T(h["momentum"]), T(1.0 - h["dampening"])
        d = sign * g
        if h["weight_decay"] != 0:
            d = d + wd * p
        if h["momentum"] == 0:
            p[...] = p + lr_neg * d
            return
        first = "momentum_buffer" not in self.state[i]
        buf = self.buffer(i, "momentum_buffer")
        if first:
            buf[...] = d
            if h["nesterov"]:
                d = d + momentum * d
        else:
            b = buf * momentum + keep * d
            buf[...] = b
            d = d + momentum * b if h["nesterov"] else b
        p[...] = p + lr_neg * d


class AdamRef(Reference):
    def update(self, i, p, g, h):
        T = p.dtype.type
        lr, (beta1, beta2), wd = h["lr"], h["betas"], h["weight_decay"]
        decoupled = h.get("decoupled_weight_decay", False)
        s = self.steps[i] + 1
        step_neg = T(-(lr / (1.0 - math.pow(beta1, float(s)))))
        bc2_sqrt = T(math.sqrt(1.0 - math.pow(beta2, float(s))))
        w1, b2, w2, eps = T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(h["eps"])
        sign = T(-1.0 if h["maximize"] else 1.0)
        m, v = self.buffer(i, "exp_avg"), self.buffer(i, "exp_avg_sq")
        d = sign * g
        pi = p.copy()
        if wd != 0 and not decoupled:
            d = d + T(wd) * pi
        if wd != 0 and decoupled:
            pi = pi * T(1.0 - lr * wd)
        mi = _lerp(m, d, w1, T)
        vi = v * b2 + (w2 * d) * d
        m[...] = mi
        v[...] = vi
        if h["amsgrad"]:
            vmax = self.buffer(i, "max_exp_avg_sq")
            vmax[...] = np.where(vmax >= vi, vmax, vi)
            vi = vmax.copy()
        denom = np.sqrt(vi) / bc2_sqrt + eps
        p[...] = pi + (step_neg * mi) / denom


class RMSpropRef(Reference):
    def update(self, i, p, g, h):
        T = p.dtype.type
        lr_neg, wd, sign = T(-h["lr"]), T(h["weight_decay"]), T(-1.0 if h["maximize"] else 1.0)
        alpha, w, momentum, eps = T(h["alpha"]), T(1.0 - h["alpha"]), T(h["momentum"]), T(h["eps"])
        d = sign * g
        if h["weight_decay"] != 0:
            d = d + wd * p
        sq = self.buffer(i, "square_avg")
        s = sq * alpha + (w * d) * d
        sq[...] = s
        if h["centered"]:
            gavg = self.buffer(i, "grad_avg")
            ga = _lerp(gavg, d, w, T)
            gavg[...] = ga
            a = np.sqrt(s + (-ga) * ga) + eps
        else:
            a = np.sqrt(s) + eps
        if h["momentum"] > 0:
            buf = self.buffer(i, "momentum_buffer")
            b = buf * momentum + d / a
            buf[...] = b
            p[...] = p + lr_neg * b
        else:
            p[...] = p + (lr_neg * d) / a


class AdagradRef(Reference):
    def init_state(self):
        i = 0
        for params, h in self.groups:
            for _ in params:
                self.buffer(i, "sum", h["initial_accumulator_value"])
                i += 1

    def update(self, i, p, g, h):
        T = p.dtype.type
        clr_neg = T(-(h["lr"] / (1.0 + float(self.steps[i]) * h["lr_decay"])))
        wd, sign, eps = T(h["weight_decay"]), T(-1.0 if h["maximize"] else 1.0), T(h["eps"])
        d = sign * g
        if h["weight_decay"] != 0:
            d = d + wd * p
        acc = self.state[i]["sum"]
        s = acc + d * d
        acc[...] = s
        p[...] = p + (clr_neg * d) / (np.sqrt(s) + eps)


REFERENCES = {"SGD": SGDRef, "Adam": AdamRef, "AdamW": AdamRef, "RMSprop": RMSpropRef, "Adagrad": AdagradRef}


def clip_grad_norm_reference(grads, max_norm, norm_type):
    """(total norm, clipped copies): the norm in float64 over all elements, as torch computes it."""
    flat = np.concatenate([g.astype(np.float64).ravel() for g in grads]) if grads else np.zeros(0)
    if norm_type == math.inf:
        total = float(np.max(np.abs(flat))) if flat.size else 0.0
    else:
        total = float(np.sum(np.abs(flat) ** norm_type) ** (1.0 / norm_type))
    coef = max_norm / (total + 1e-6)
    out = [g.copy() for g in grads]
    if coef < 1.0:
        out = [g * g.dtype.type(coef) for g in out]
    return total, out


def clip_grad_value_reference(grads, clip_value):
    return [np.clip(g, g.dtype.type(-clip_value), g.dtype.type(clip_value)) for g in grads]
