"""Plain NumPy reference implementations of fastopt's optimizers and clipping, and test helpers.

Written from the formulas in the class docstrings and from torch.optim's ``_single_tensor_*``
functions: every elementwise operation is done in the param's dtype, in torch's order, with every
Python scalar cast to that dtype first (as torch does for a float32 tensor); bias corrections and
step sizes are computed in float64 and then rounded. With ``-ffp-contract=off`` kernels the results
agree bit for bit (test_fuzz.py checks that; the other tests allow a few ulp).

``RefOptimizer`` supports param groups with their own hyperparameters, ``None`` grads (the param is
skipped: state and step count untouched) and ``skip_nonfinite``.

Nothing here imports fastopt's internals: the reference must be able to disagree with it.
"""
import math

import numpy as np

import fastopt
import trust_ratio

# Relative tolerances for reference comparisons (a few ulp over a few tens of steps).
RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-14}

DEFAULTS = {
    "SGD": dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False),
    "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False),
    "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
    "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                    maximize=False),
    "Adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                    maximize=False),
    "NAdam": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                  decoupled_weight_decay=False, maximize=False),
    "RAdam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                  maximize=False),
    "Adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False),
    "Lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False),
    "AdEMAMix": dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=None, t_beta3=None,
                     eps=1e-8, weight_decay=1e-2, maximize=False),
    "Adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False),
    "Rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False),
    "ASGD": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0, maximize=False),
    "Adafactor": dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                      maximize=False),
    "LAMB": dict(lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, adam_w_mode=True, max_unorm=1.0, maximize=False),
    # LARS has no default lr, and its default momentum (0) is refused: REQUIRED_ARGUMENTS gives them
    "LARS": dict(lr=1e-2, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                 max_unorm=0.02, maximize=False),
    # Muon takes matrices only, so it is not in CONFIGS (whose tests use every shape): tests/optim/test_muon.py
    "Muon": dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None,
                 maximize=False),
}

# One configuration per option (and a few combinations), for every optimizer.
CONFIGS = {
    "SGD": [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.1, momentum=0.9, dampening=0.5),
        dict(lr=0.1, momentum=0.9, nesterov=True),
        dict(lr=0.1, weight_decay=0.1),
        dict(lr=0.1, maximize=True),
        dict(lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.01, maximize=True),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True),
    ],
    "Adam": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, maximize=True),
        dict(lr=0.01, betas=(0.3, 0.6), eps=1e-3),   # lerp weight >= 0.5: torch's other branch
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True, maximize=True),
    ],
    "AdamW": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.0),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, maximize=True),
        dict(lr=0.02, betas=(0.4, 0.9), eps=1e-6, weight_decay=0.2, amsgrad=True, maximize=True),
    ],
    "RMSprop": [
        dict(lr=0.01),
        dict(lr=0.01, alpha=0.7),
        dict(lr=0.01, eps=1e-3),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.01, centered=True),
        dict(lr=0.01, centered=True, alpha=0.3),     # lerp weight >= 0.5 for grad_avg
        dict(lr=0.01, maximize=True),
        dict(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.05, momentum=0.5, centered=True, maximize=True),
    ],
    "Adagrad": [
        dict(lr=0.1),
        dict(lr=0.1, lr_decay=0.1),
        dict(lr=0.1, weight_decay=0.1),
        dict(lr=0.1, initial_accumulator_value=0.5),
        dict(lr=0.1, eps=1e-3),
        dict(lr=0.1, maximize=True),
        dict(lr=0.05, lr_decay=0.05, weight_decay=0.02, initial_accumulator_value=0.1, eps=1e-6, maximize=True),
    ],
    "NAdam": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, maximize=True),
        dict(lr=0.01, betas=(0.3, 0.6), eps=1e-3),   # lerp weight >= 0.5
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.02, weight_decay=0.05, maximize=True),
    ],
    "RAdam": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, maximize=True),
        dict(lr=0.01, betas=(0.3, 0.6), eps=1e-3),   # lerp weight >= 0.5; rectified from step 3
        dict(lr=0.02, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05, decoupled_weight_decay=True,
             maximize=True),
    ],
    "Adamax": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, maximize=True),
        dict(lr=0.01, betas=(0.3, 0.6), eps=1e-3),
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, maximize=True),
    ],
    "Lion": [
        dict(lr=0.001),
        dict(lr=0.001, weight_decay=0.1),
        dict(lr=0.001, maximize=True),
        dict(lr=0.001, betas=(0.3, 0.6)),
        dict(lr=0.002, betas=(0.95, 0.98), weight_decay=0.5, maximize=True),
    ],
    "AdEMAMix": [
        dict(lr=0.001),
        dict(lr=0.001, weight_decay=0.0),
        dict(lr=0.001, maximize=True),
        dict(lr=0.001, betas=(0.5, 0.9, 0.99), alpha=2.0, eps=1e-3),
        dict(lr=0.001, t_alpha=4, t_beta3=6),           # both schedules end within the run
        dict(lr=0.002, betas=(0.8, 0.95, 0.999), alpha=8.0, t_alpha=30.0, t_beta3=50.0,
             weight_decay=0.1, maximize=True),
    ],
    "Adadelta": [
        dict(lr=1.0),
        dict(lr=0.5, rho=0.5),
        dict(lr=1.0, eps=1e-3),
        dict(lr=1.0, weight_decay=0.1),
        dict(lr=1.0, maximize=True),
        dict(lr=0.7, rho=0.95, eps=1e-4, weight_decay=0.05, maximize=True),
    ],
    "Rprop": [
        dict(lr=0.01),
        dict(lr=0.01, etas=(0.3, 1.5)),
        dict(lr=0.01, step_sizes=(1e-3, 0.02)),      # both bounds reached within the run
        dict(lr=0.01, maximize=True),
        dict(lr=0.05, etas=(0.6, 1.1), step_sizes=(1e-4, 0.1), maximize=True),
    ],
    "ASGD": [
        dict(lr=0.01),
        dict(lr=0.01, lambd=0.1),
        dict(lr=0.01, t0=5),                          # averaging starts within the run
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, maximize=True),
        dict(lr=0.05, lambd=0.01, alpha=0.5, t0=3, weight_decay=0.05, maximize=True),
    ],
    "Adafactor": [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, beta2_decay=-0.5),
        dict(lr=0.01, d=1.5),
        dict(lr=0.01, eps=(1e-30, 1e-2)),
        dict(lr=0.01, maximize=True),
        dict(lr=0.5, beta2_decay=-1.0, eps=(1e-3, 0.1), d=2.0, weight_decay=0.05, maximize=True),
    ],
    "LAMB": [
        dict(lr=0.001),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, max_unorm=0.05),     # the trust ratio clips
        dict(lr=0.001, max_unorm=0.0),                                  # no trust ratio
        dict(lr=0.001, maximize=True),
        dict(lr=0.02, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.05, max_unorm=0.5, maximize=True),
    ],
    "LARS": [
        dict(lr=0.1, momentum=0.9),                                     # the trust ratio clips
        dict(lr=0.1, momentum=0.5, weight_decay=0.01),
        dict(lr=0.001, momentum=0.9, max_unorm=1e4),                    # it never clips
        dict(lr=0.01, momentum=0.9, max_unorm=0.0),                     # no trust ratio
        dict(lr=0.1, momentum=0.9, maximize=True),
        dict(lr=0.05, momentum=0.99, weight_decay=0.1, max_unorm=0.5, dampening=0, maximize=True),
    ],
}

#: Arguments an algorithm cannot be built without (bitsandbytes' LARS: no default lr, and its
#: default momentum, 0, is refused): make_fastopt and the reference fill them in when not given.
REQUIRED_ARGUMENTS = {"LARS": dict(lr=1e-2, momentum=0.9)}

ALL_CONFIGS = [(name, cfg) for name, cfgs in CONFIGS.items() for cfg in cfgs]
#: Algorithms whose step reduces over elements (norms, row and column statistics): fastopt sums in
#: float64 in its own fixed order, the reference with NumPy's, so they agree to an ulp of the
#: reductions' rounding (in the param's dtype), not bit for bit.
REDUCING = {"Adafactor", "LAMB", "LARS"}
#: The algorithms torch.optim has (Lion, AdEMAMix, LAMB and LARS are not among them): the torch
#: parity tests run these.
TORCH_NAMES = [name for name in CONFIGS if name not in ("Lion", "AdEMAMix", "LAMB", "LARS")]
TORCH_CONFIGS = [(name, cfg) for name, cfg in ALL_CONFIGS if name in TORCH_NAMES]


def config_id(name_cfg):
    name, cfg = name_cfg
    return name + "-" + ",".join(f"{k}={v}" for k, v in cfg.items() if k != "lr")


def make_fastopt(name, params, **kwargs):
    return getattr(fastopt, name)(params, **dict(REQUIRED_ARGUMENTS.get(name, {}), **kwargs))


# ----------------------------------------------------------------------------------------------
# Elementwise helpers (in the operands' dtype)
# ----------------------------------------------------------------------------------------------

def lerp(start, end, weight):
    """torch.lerp with a scalar weight (already cast to the dtype): switches form at 0.5."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (weight.dtype.type(1) - weight)


def _arr(x, dtype):
    """Keep 0-d results as 0-d arrays of the dtype (NumPy returns scalars from 0-d ufuncs)."""
    return np.asarray(x, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# One step of each algorithm on one param; ``state`` is a dict updated in place.
# ----------------------------------------------------------------------------------------------

def sgd_step(p, g, state, lr, momentum, dampening, weight_decay, nesterov, maximize):
    t = p.dtype.type
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + t(weight_decay) * p
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = _arr(d, p.dtype).copy()
        else:
            buf = buf * t(momentum) + t(1 - dampening) * d
        state["momentum_buffer"] = _arr(buf, p.dtype)
        d = d + t(momentum) * buf if nesterov else buf
    p[...] = p + t(-lr) * d


def adam_step(p, g, state, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    t = p.dtype.type
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
        if amsgrad:
            state["max_exp_avg_sq"] = np.zeros_like(p)
    state["step"] += 1
    step = state["step"]
    d = -g if maximize else g
    pv = p
    if weight_decay != 0:
        if decoupled_weight_decay:
            pv = p * t(1 - lr * weight_decay)
        else:
            d = d + t(weight_decay) * p
    m = lerp(state["exp_avg"], d, t(1 - beta1))
    v = state["exp_avg_sq"] * t(beta2) + (t(1 - beta2) * d) * d
    state["exp_avg"] = _arr(m, p.dtype)
    state["exp_avg_sq"] = _arr(v, p.dtype)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = math.sqrt(bias_correction2)
    if amsgrad:
        vmax = np.maximum(state["max_exp_avg_sq"], v)
        state["max_exp_avg_sq"] = _arr(vmax, p.dtype)
        v = vmax
    denom = np.sqrt(v) / t(bias_correction2_sqrt) + t(eps)
    p[...] = pv + (t(-step_size) * m) / denom


def rmsprop_step(p, g, state, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    t = p.dtype.type
    if not state:
        state["step"] = 0
        state["square_avg"] = np.zeros_like(p)
        if momentum > 0:
            state["momentum_buffer"] = np.zeros_like(p)
        if centered:
            state["grad_avg"] = np.zeros_like(p)
    state["step"] += 1
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + t(weight_decay) * p
    s = state["square_avg"] * t(alpha) + (t(1 - alpha) * d) * d
    state["square_avg"] = _arr(s, p.dtype)
    if centered:
        ga = lerp(state["grad_avg"], d, t(1 - alpha))
        state["grad_avg"] = _arr(ga, p.dtype)
        avg = np.sqrt(s + (t(-1) * ga) * ga) + t(eps)
    else:
        avg = np.sqrt(s) + t(eps)
    if momentum > 0:
        buf = state["momentum_buffer"] * t(momentum) + d / avg
        state["momentum_buffer"] = _arr(buf, p.dtype)
        p[...] = p + t(-lr) * buf
    else:
        p[...] = p + (t(-lr) * d) / avg


def adagrad_init(p, state, initial_accumulator_value):
    state["step"] = 0
    state["sum"] = np.full_like(p, initial_accumulator_value)


def adagrad_step(p, g, state, lr, lr_decay, weight_decay, initial_accumulator_value, eps, maximize):
    t = p.dtype.type
    if not state:
        adagrad_init(p, state, initial_accumulator_value)
    state["step"] += 1
    step = state["step"]
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + t(weight_decay) * p
    clr = lr / (1 + (step - 1) * lr_decay)
    s = state["sum"] + d * d
    state["sum"] = _arr(s, p.dtype)
    p[...] = p + (t(-clr) * d) / (np.sqrt(s) + t(eps))


def nadam_step(p, g, state, lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
               maximize):
    t = p.dtype.type
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["mu_product"] = np.asarray(1.0, dtype=np.float32)   # torch's scalar dtype
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
    state["step"] += 1
    step = float(state["step"])
    d = -g if maximize else g
    pv = p
    if weight_decay != 0:
        if decoupled_weight_decay:
            pv = p * t(1 - lr * weight_decay)
        else:
            d = d + t(weight_decay) * p
    bias_correction2 = 1 - beta2 ** step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product = np.float32(state["mu_product"] * np.float32(mu))
    state["mu_product"] = np.asarray(mu_product, dtype=np.float32)
    m = lerp(state["exp_avg"], d, t(1 - beta1))
    v = state["exp_avg_sq"] * t(beta2) + (t(1 - beta2) * d) * d
    state["exp_avg"] = _arr(m, p.dtype)
    state["exp_avg_sq"] = _arr(v, p.dtype)
    denom = np.sqrt(v / t(bias_correction2)) + t(eps)
    mp = float(mu_product)
    pv = pv + (t(-lr * (1.0 - mu) / (1.0 - mp)) * d) / denom
    p[...] = pv + (t((-lr * mu_next) / (1.0 - mp * mu_next)) * m) / denom


def radam_step(p, g, state, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    t = p.dtype.type
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
    state["step"] += 1
    step = float(state["step"])
    d = -g if maximize else g
    pv = p
    if weight_decay != 0:
        if decoupled_weight_decay:
            pv = p * t(1 - lr * weight_decay)
        else:
            d = d + t(weight_decay) * p
    m = lerp(state["exp_avg"], d, t(1 - beta1))
    v = state["exp_avg_sq"] * t(beta2) + (t(1 - beta2) * d) * d
    state["exp_avg"] = _arr(m, p.dtype)
    state["exp_avg_sq"] = _arr(v, p.dtype)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    update = (m / t(bias_correction1)) * t(lr)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive = (t(1) / (np.sqrt(v) + t(eps))) * t(bias_correction2 ** 0.5)
        update = (update * adaptive) * t(rect)
    p[...] = pv - update


def adamax_step(p, g, state, lr, betas, eps, weight_decay, maximize):
    t = p.dtype.type
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_inf"] = np.zeros_like(p)
    state["step"] += 1
    step = float(state["step"])
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + t(weight_decay) * p
    m = lerp(state["exp_avg"], d, t(1 - beta1))
    u = np.maximum(state["exp_inf"] * t(beta2), np.abs(d) + t(eps))
    state["exp_avg"] = _arr(m, p.dtype)
    state["exp_inf"] = _arr(u, p.dtype)
    clr = lr / (1 - beta1 ** step)
    p[...] = p + (t(-clr) * m) / u


def lion_step(p, g, state, lr, betas, weight_decay, maximize):
    """Chen et al. (2023), Algorithm 2, with the authors' decoupled decay before the sign step."""
    t = p.dtype.type
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
    state["step"] += 1
    d = -g if maximize else g
    pv = p * t(1 - lr * weight_decay) if weight_decay != 0 else p
    c = state["exp_avg"] * t(beta1) + t(1 - beta1) * d
    p[...] = pv + t(-lr) * np.sign(c)
    state["exp_avg"] = _arr(state["exp_avg"] * t(beta2) + t(1 - beta2) * d, p.dtype)


def ademamix_step(p, g, state, lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, maximize):
    """Pagliardini, Ablin & Grangier (2024), Algorithm 1, with the alpha and beta3 schedulers of
    their section 3; decoupled weight decay on the param before the update."""
    t = p.dtype.type
    beta1, beta2, beta3 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_slow"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
    state["step"] += 1
    step = state["step"]
    alpha_t = alpha if t_alpha is None else min(step * alpha / t_alpha, alpha)
    beta3_t = beta3
    if t_beta3 is not None:
        s = step / t_beta3
        beta3_t = min(math.exp(math.log(beta1) * math.log(beta3)
                               / ((1 - s) * math.log(beta3) + s * math.log(beta1))), beta3)
    d = -g if maximize else g
    pv = p * t(1 - lr * weight_decay) if weight_decay != 0 else p
    m1 = _arr(state["exp_avg"] * t(beta1) + t(1 - beta1) * d, p.dtype)
    m2 = _arr(state["exp_avg_slow"] * t(beta3_t) + t(1 - beta3_t) * d, p.dtype)
    v = _arr(state["exp_avg_sq"] * t(beta2) + (t(1 - beta2) * d) * d, p.dtype)
    state["exp_avg"], state["exp_avg_slow"], state["exp_avg_sq"] = m1, m2, v
    denom = np.sqrt(v) / t(math.sqrt(1 - beta2 ** step)) + t(eps)
    p[...] = pv + t(-lr) * ((m1 / t(1 - beta1 ** step) + t(alpha_t) * m2) / denom)


def adadelta_step(p, g, state, lr, rho, eps, weight_decay, maximize):
    t = p.dtype.type
    if not state:
        state["step"] = 0
        state["square_avg"] = np.zeros_like(p)
        state["acc_delta"] = np.zeros_like(p)
    state["step"] += 1
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + t(weight_decay) * p
    v = state["square_avg"] * t(rho) + (t(1 - rho) * d) * d
    delta = np.sqrt(state["acc_delta"] + t(eps)) / np.sqrt(v + t(eps))
    delta = delta * d
    state["square_avg"] = _arr(v, p.dtype)
    state["acc_delta"] = _arr(state["acc_delta"] * t(rho) + (t(1 - rho) * delta) * delta, p.dtype)
    p[...] = p + t(-lr) * delta


def torch_sign(x):
    """torch.sign on CPU: 0 for NaN (np.sign keeps NaN)."""
    x = np.asarray(x)
    return np.where(np.isnan(x), x.dtype.type(0), np.sign(x))


def rprop_step(p, g, state, lr, etas, step_sizes, maximize):
    t = p.dtype.type
    etaminus, etaplus = t(etas[0]), t(etas[1])
    if not state:
        state["step"] = 0
        state["prev"] = np.zeros_like(p)
        state["step_size"] = np.full_like(p, lr)
    state["step"] += 1
    d = np.array(-g if maximize else g, dtype=p.dtype)
    factor = np.asarray(torch_sign(d * state["prev"]), dtype=p.dtype)
    factor[factor > 0] = etaplus
    factor[factor < 0] = etaminus
    factor[factor == 0] = 1
    size = np.clip(state["step_size"] * factor, t(step_sizes[0]), t(step_sizes[1]))
    d[factor == etaminus] = 0
    state["step_size"] = _arr(size, p.dtype)
    p[...] = p + (t(-1) * torch_sign(d)) * size
    state["prev"] = _arr(d, p.dtype)


def asgd_step(p, g, state, lr, lambd, alpha, t0, weight_decay, maximize):
    t = p.dtype.type
    if not state:
        state["step"] = 0
        state["eta"] = np.asarray(lr, dtype=np.float32)     # torch's scalar dtype
        state["mu"] = np.asarray(1.0, dtype=np.float32)
        state["ax"] = np.zeros_like(p)
    state["step"] += 1
    step = float(state["step"])
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + t(weight_decay) * p
    eta = float(state["eta"])
    mu = float(state["mu"])
    pv = p * t(1 - lambd * eta)
    pv = pv + t(-eta) * d
    if mu != 1:
        state["ax"] = _arr(state["ax"] + (pv - state["ax"]) * t(mu), p.dtype)
    else:
        state["ax"] = _arr(pv, p.dtype).copy()
    p[...] = pv
    # torch's next step size, lr / (1 + lambd lr step) ** alpha in double, in IEEE arithmetic (C's
    # pow and division, which Python's float operators are where they return a float): where the
    # base is <= 0 (lambd < 0, by the step 1 / (-lambd lr)) Python's ** raises ZeroDivisionError
    # (torch too) or returns a complex number (torch keeps its real part); the reference, like
    # fastopt, gives pow's nan/inf/0 there.
    with np.errstate(all="ignore"):
        base = np.float64(1 + lambd * lr * step)
        state["eta"] = np.asarray(np.float64(lr) / base ** np.float64(alpha), dtype=np.float32)
    state["mu"] = np.asarray(1 / max(1, step - t0), dtype=np.float32)


def _rounded_norm(x, dtype, axis=None):
    """torch's ``x.norm(2, dim=axis)`` rounded to x's dtype; the sum of squares in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    keep = axis is not None
    return np.asarray(np.sqrt(np.sum(x64 * x64, axis=axis, keepdims=keep)), dtype=dtype)


def adafactor_step(p, g, state, lr, beta2_decay, eps, d, weight_decay, maximize):
    """torch's _single_tensor_adafactor, with its norms' sums of squares in float64. A param
    without elements is counted and left alone (torch raises ZeroDivisionError)."""
    t = p.dtype.type
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = float(np.finfo(p.dtype).eps)
    factored = p.ndim >= 2
    if not state:
        state["step"] = 0
        if factored:
            state["row_var"] = np.zeros(p.shape[:-1] + (1,), dtype=p.dtype)
            state["col_var"] = np.zeros(p.shape[:-2] + (1, p.shape[-1]), dtype=p.dtype)
        else:
            state["variance"] = np.zeros_like(p)
    state["step"] += 1
    if p.size == 0:
        return
    step = float(state["step"])
    d_ = np.asarray(-g if maximize else g, dtype=p.dtype)
    w = t(step ** beta2_decay)
    rho = min(lr, 1 / (step ** 0.5))
    alpha = max(eps2, float(_rounded_norm(p, p.dtype)) / (p.size ** 0.5)) * rho
    pv = p * t(1 - lr * weight_decay) if weight_decay != 0 else p
    if factored:
        rows, cols = p.shape[-2], p.shape[-1]
        n = _rounded_norm(d_, p.dtype, axis=-1)
        row_var = _arr(lerp(state["row_var"], (n * n) / t(cols), w), p.dtype)
        n = _rounded_norm(d_, p.dtype, axis=-2)
        col_var = _arr(lerp(state["col_var"], (n * n) / t(rows), w), p.dtype)
        state["row_var"], state["col_var"] = row_var, col_var
        mean = np.asarray(np.sum(row_var.astype(np.float64), axis=-2, keepdims=True), dtype=p.dtype)
        mean = np.maximum(mean / t(rows), t(eps1))          # clamp_(min=eps1); NaN stays NaN
        estimate = (row_var * col_var) / mean
    else:
        state["variance"] = _arr(lerp(state["variance"], d_ * d_, w), p.dtype)
        estimate = state["variance"]
    u = (t(1) / np.sqrt(np.maximum(estimate, t(eps1 * eps1)))) * d_
    denom = max(1.0, float(_rounded_norm(u, p.dtype)) / ((u.size ** 0.5) * d))
    p[...] = pv + t(-alpha / denom) * u


def bf16(x):
    """Round to the nearest bfloat16 (ties to even; every NaN to the quiet NaN), kept as float32,
    as torch's ``.bfloat16()`` does (a float64 goes through float32 first, as in torch)."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return np.where(np.isnan(x), np.float32(np.nan), u.view(np.float32))


def newton_schulz(update, a, b, c, steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz: bfloat16 values, float32 products (NumPy's
    matmul), each result rounded to bfloat16 where torch's bfloat16 tensors round it."""
    x = bf16(update)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    norm = bf16(np.float32(np.sqrt(np.sum(x.astype(np.float64) ** 2))))
    x = bf16(x / np.maximum(norm, bf16(np.float32(eps))))      # clamp(min=eps): NaN stays NaN
    for _ in range(steps):
        gram = bf16(x @ x.T)
        gram = bf16(np.float32(b) * gram + np.float32(c) * (gram @ gram))
        x = bf16(np.float32(a) * x + gram @ x)
    return x.T if tall else x


def muon_step(p, g, state, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
              adjust_lr_fn, maximize):
    """torch's _single_tensor_muon (plus fastopt's maximize). The Newton-Schulz products are summed
    in another order than torch's kernels (and fastopt's BLAS): compare to a few bfloat16 ulps."""
    t = p.dtype.type
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = np.zeros_like(p)
    d = np.asarray(-g if maximize else g, dtype=p.dtype)
    buf = _arr(lerp(state["momentum_buffer"], d, t(1 - momentum)), p.dtype)
    state["momentum_buffer"] = buf
    update = lerp(d, buf, t(momentum)) if nesterov else buf
    x = newton_schulz(update, *ns_coefficients, ns_steps, eps)
    rows, cols = p.shape
    if p.size == 0:       # nothing to update (torch's ratio below divides by zero columns)
        return
    if adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = math.sqrt(max(1, rows / cols))
    pv = p * t(1 - lr * weight_decay)
    p[...] = pv + t(-(lr * ratio)) * x.astype(p.dtype)


def lamb_reference_step(p, g, state, lr, bias_correction, betas, eps, weight_decay, amsgrad,
                        adam_w_mode, max_unorm, maximize):
    """tests/_support/trust_ratio.py's LAMB (the flags take their one accepted value)."""
    assert bias_correction and adam_w_mode and not amsgrad
    trust_ratio.lamb_step(p, g, state, lr, betas, eps, weight_decay, max_unorm, maximize)


def lars_reference_step(p, g, state, lr, momentum, dampening, weight_decay, nesterov, max_unorm,
                        maximize):
    """tests/_support/trust_ratio.py's LARS (dampening and nesterov take their one accepted value)."""
    assert dampening == 0 and not nesterov
    trust_ratio.lars_step(p, g, state, lr, momentum, weight_decay, max_unorm, maximize)


STEP_FUNCTIONS = {"SGD": sgd_step, "Adam": adam_step, "AdamW": adam_step, "RMSprop": rmsprop_step,
                  "Adagrad": adagrad_step, "NAdam": nadam_step, "RAdam": radam_step,
                  "Adamax": adamax_step, "Lion": lion_step, "AdEMAMix": ademamix_step,
                  "Adadelta": adadelta_step,
                  "Rprop": rprop_step, "ASGD": asgd_step, "Adafactor": adafactor_step,
                  "Muon": muon_step, "LAMB": lamb_reference_step, "LARS": lars_reference_step}


class RefOptimizer:
    """The reference optimizer over its own copies of the params, with torch.optim's grouping.

    ``params`` is a list of arrays or of param-group dicts (``{"params": [...], **hyper}``, each
    group's hyperparameters over the defaults). ``step(grads)`` takes one grad per param, in order;
    a ``None`` grad skips its param. With ``skip_nonfinite``, a step where any grad holds a NaN or
    Inf changes nothing and counts in ``skipped_steps``. ``step`` returns whether it stepped.
    """

    def __init__(self, name, params, skip_nonfinite=False, **kwargs):
        self.name = name
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        defaults = dict(DEFAULTS[name])
        defaults.update(kwargs)
        if name in ("Adam", "AdamW"):   # AdamW is Adam with it fixed; Adam takes it as an argument
            defaults.setdefault("decoupled_weight_decay", name == "AdamW")
        if params and isinstance(params[0], dict):
            groups = params
        else:
            groups = [{"params": params}]
        self.params = []
        self.param_groups = []
        for group in groups:
            full = dict(defaults)
            full.update({k: v for k, v in group.items() if k != "params"})
            full["params"] = [np.array(p, copy=True) for p in group["params"]]
            self.param_groups.append(full)
            self.params.extend(full["params"])
        self.state = [dict() for _ in self.params]
        if name == "Adagrad":
            i = 0
            for group in self.param_groups:
                for p in group["params"]:
                    adagrad_init(p, self.state[i], group["initial_accumulator_value"])
                    i += 1

    def step(self, grads):
        with np.errstate(all="ignore"):   # NaN/Inf grads are expected inputs in some tests
            if self.skip_nonfinite and not all(g is None or np.all(np.isfinite(g)) for g in grads):
                self.skipped_steps += 1
                return False
            fn = STEP_FUNCTIONS[self.name]
            i = 0
            for group in self.param_groups:
                hyper = {k: v for k, v in group.items() if k != "params"}
                for p in group["params"]:
                    g = grads[i]
                    if g is not None:
                        fn(p, np.asarray(g), self.state[i], **hyper)
                    i += 1
        return True


# ----------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------

def total_norm(grads, norm_type):
    """The norm of all elements together, in float64."""
    flat = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in grads]) if grads else np.zeros(0)
    if norm_type == math.inf:
        return float(np.max(np.abs(flat))) if flat.size else 0.0
    if norm_type == 2:
        return float(np.sqrt(np.sum(flat * flat)))
    return float(np.sum(np.abs(flat) ** norm_type) ** (1.0 / norm_type))


def clip_grad_norm(grads, max_norm, norm_type=2.0):
    """Clip copies of ``grads``; return (new grads, total norm)."""
    total = total_norm(grads, norm_type)
    coef = max_norm / (total + 1e-6)
    out = []
    for g in grads:
        g = np.array(g, copy=True)
        if coef < 1:
            g[...] = g * g.dtype.type(coef)
        out.append(g)
    return out, total


def clip_grad_value(grads, clip_value):
    out = []
    for g in grads:
        t = g.dtype.type
        out.append(np.clip(g, t(-clip_value), t(clip_value)))
    return out


# ----------------------------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------------------------

def assert_close(actual, expected, rtol=None, what=""):
    """Elementwise |actual - expected| <= rtol * |expected| (plus a few-ulp absolute slack at the
    array's scale, for elements that cancel to near zero); same dtype and shape."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if rtol is None:
        rtol = RTOL[expected.dtype]
    finite = np.isfinite(expected)
    scale = float(np.max(np.abs(expected[finite]))) if finite.any() else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=4 * np.finfo(expected.dtype).eps * scale,
                               err_msg=what)


def random_arrays(rng, shapes, dtypes, scale=1.0):
    return [np.ascontiguousarray((rng.standard_normal(s) * scale).astype(d)) for s, d in zip(shapes, dtypes)]


def fingerprint(opt, params):
    """Bytes of the params, every state buffer (with its dtype) and the param groups'
    hyperparameters: two fingerprints are equal exactly when the optimizers are bit-identical.

    The first ``len(params)`` entries are the params.
    """
    sd = opt.state_dict()
    out = [p.tobytes() for p in params]
    for index in sorted(sd["state"]):
        for name in sorted(sd["state"][index]):
            value = sd["state"][index][name]
            out.append((index, name, value.dtype.str, value.tobytes()) if isinstance(value, np.ndarray)
                       else (index, name, value))
    out.append(repr([sorted((k, repr(v)) for k, v in g.items() if k != "params") for g in sd["param_groups"]]))
    return out


class ElementwiseParity:
    """Compare arrays with torch's element by element, step after step, in ulps of each element.

    An element's scale is the largest magnitude it has had in the reference trajectory so far (a
    value that shrinks towards zero keeps the rounding errors of its larger past, and so does one
    that crosses zero). ``check(key, ours, theirs, ulps)`` requires, for every element,
    ``|ours - theirs| <= ulps * spacing(scale)``; ``floor`` gives elements below ``floor`` times
    the array's largest magnitude that much as their scale instead (for ill-conditioned elements,
    see ``tests/torch/test_torch_parity.py``).
    """

    def __init__(self):
        self.peaks = {}
        self.worst = {}

    def start(self, key, values):
        """Record the magnitudes ``key`` starts from (a param's initial values)."""
        self.peaks[key] = np.abs(np.asarray(values, dtype=np.float64))

    def check(self, key, ours, theirs, ulps, floor=0.0, what=""):
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (what, ours.dtype, theirs.dtype)
        if ours.size == 0:
            return
        magnitude = np.abs(theirs.astype(np.float64))
        peak = self.peaks.get(key)
        peak = magnitude if peak is None else np.maximum(peak, magnitude)
        self.peaks[key] = peak
        scale = np.maximum(peak, floor * float(magnitude.max())) if floor else peak
        spacing = np.spacing(scale.astype(ours.dtype)).astype(np.float64)   # spacing(0): tiniest
        error = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        in_ulps = error / spacing
        worst = int(np.argmax(in_ulps))
        self.worst[key] = max(self.worst.get(key, 0.0), float(in_ulps.flat[worst]))
        if not in_ulps.flat[worst] <= ulps:
            index = np.unravel_index(worst, ours.shape) if ours.ndim else ()
            raise AssertionError(
                f"{what}: element {index} is {ours.flat[worst]!r}, torch's {theirs.flat[worst]!r}: "
                f"{in_ulps.flat[worst]:.1f} ulps of its scale {scale.flat[worst]:.3g} (bound {ulps})")
