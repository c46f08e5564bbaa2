"""An independent NumPy reference of LAMB and LARS as bitsandbytes' 32-bit optimizers define them
(it imports neither fastopt nor bitsandbytes), written from the update rules:

* LAMB (bitsandbytes' "lamb", two states): m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
  u = m / (sqrt(v) + eps sqrt(1 - b2^t)), p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) s u, then the
  decoupled decay p <- p (1 - lr wd) (after the update, as bitsandbytes' CUDA kernel; its CPU path
  decays before: ``decay_first=True``);
* LARS (bitsandbytes' "lars", one state): g <- g + wd p, B <- g at the first step else
  momentum B + g, p <- p - lr s B;

with the trust ratio s = max_unorm ||p|| / ||d|| where ||d|| > max_unorm ||p|| (else 1; 1 when
max_unorm is 0), ||p|| taken before the step, d the update (u or B), both norms over the whole
param, summed in float64 and rounded to the param's dtype. Arithmetic is in the param's dtype, one
rounding per operation in the order written.
"""
import math

import numpy as np


def _norm(x):
    """The 2-norm of x, summed in float64, rounded to x's dtype."""
    return float(x.dtype.type(math.sqrt(float(np.sum(np.square(x.astype(np.float64)))))))


def trust_ratio(p, d, max_unorm):
    """bitsandbytes' update scale: max_unorm ||p|| / ||d|| when ||d|| exceeds max_unorm ||p||."""
    if max_unorm <= 0:
        return 1.0
    limit = max_unorm * _norm(p)
    d_norm = _norm(d)
    return limit / d_norm if d_norm > limit else 1.0


def lamb_step(p, g, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              max_unorm=1.0, maximize=False, decay_first=False):
    """One LAMB step of p (in place) with gradient g; ``state`` holds step, exp_avg, exp_avg_sq.
    Returns the trust ratio it took."""
    t = p.dtype.type
    beta1, beta2 = betas
    if not state:
        state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
    state["step"] += 1
    step = state["step"]
    g = -g if maximize else g
    m = state["exp_avg"] * t(beta1) + t(1 - beta1) * g
    v = state["exp_avg_sq"] * t(beta2) + (t(1 - beta2) * g) * g
    state["exp_avg"], state["exp_avg_sq"] = m, v
    bc2_sqrt = math.sqrt(1 - beta2 ** step)
    u = m / (np.sqrt(v) + t(eps * bc2_sqrt))
    scale = trust_ratio(p, u, max_unorm)
    coef = t(-(lr * bc2_sqrt / (1 - beta1 ** step)) * scale)
    decay = t(1 - lr * weight_decay)
    if weight_decay != 0 and decay_first:
        p[...] = p * decay
    p[...] = p + coef * u
    if weight_decay != 0 and not decay_first:
        p[...] = p * decay
    return scale


def lars_step(p, g, state, lr, momentum, weight_decay=0.0, max_unorm=0.02, maximize=False):
    """One LARS step of p (in place) with gradient g; ``state`` holds step, momentum_buffer.
    Returns the trust ratio it took."""
    t = p.dtype.type
    if not state:
        state.update(step=0, momentum_buffer=np.zeros_like(p))
    state["step"] += 1
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + t(weight_decay) * p
    if state["step"] == 1:
        buf = g.copy()
    else:
        buf = state["momentum_buffer"] * t(momentum) + g
    state["momentum_buffer"] = buf
    scale = trust_ratio(p, buf, max_unorm)
    p[...] = p + t(-lr * scale) * buf
    return scale
