"""NAdam: Adam with Nesterov momentum (Dozat, 2016), with the momentum schedule of torch.optim."""
from ._spec import Algorithm, Hyper, State, real
from ._fragments import (BETAS, BIAS_CORRECTION2, DECAY, DECAY_FORMULA, DECAY_SCALE, DECAY_SWITCH,
                         DECOUPLED_WEIGHT_DECAY, EPS, FIRST_MOMENT, MOMENT_WEIGHTS, MOMENTS_FORMULA,
                         SECOND_MOMENT, WEIGHT_DECAY, code, lerp_switch)

NADAM = Algorithm(
    name="NAdam",
    torch_name="NAdam",
    title="NAdam, as ``torch.optim.NAdam``.",
    reference="Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.",
    formula=DECAY_FORMULA + r"""
        \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t \psi}), \quad
             \mu_{t+1} = \beta_1 (1 - \tfrac12\, 0.96^{(t+1) \psi}), \quad
             \Pi_t = \Pi_{t-1} \mu_t \\""" + MOMENTS_FORMULA + r"""
        d &= \sqrt{v / (1 - \beta_2^t)} + \epsilon \\
        p &\leftarrow p - \eta\,\frac{1 - \mu_t}{1 - \Pi_t}\,\frac{g}{d}
             - \eta\,\frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}}\,\frac{m}{d}""",
    hyperparameters=[
        Hyper("lr", 2e-3, real(low=0), r"Learning rate :math:`\eta`."),
        BETAS,
        EPS,
        WEIGHT_DECAY,
        Hyper("momentum_decay", 4e-3, real(low=0), r":math:`\psi`, the momentum schedule's decay."),
        DECOUPLED_WEIGHT_DECAY,
    ],
    state=[State("mu_product", r":math:`\Pi_t`, the product of the momentum schedule",
                 shape="scalar", init=1.0),
           State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`", code_map="unsigned")],
    # torch keeps mu_product as a float32 tensor: its product is rounded to float32 every step,
    # and the coefficients are then computed in double from that float32 value.
    per_array=code(MOMENT_WEIGHTS, DECAY_SCALE, BIAS_CORRECTION2, """
        mu = beta1 * (1.0 - 0.5 * pow(0.96, step * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (step + 1.0) * momentum_decay))
        mu_product = <float>(mu_product * <float>mu)
        grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product)
        exp_avg_coef = (-lr * mu_next) / (1.0 - mu_product * mu_next)
    """),
    scalars=("w1", "w2", "decay_scale", "bias_correction2", "grad_coef", "exp_avg_coef"),
    switches=[DECAY_SWITCH, lerp_switch("w1")],
    temporaries=("denom",),
    update=code(DECAY, FIRST_MOMENT, SECOND_MOMENT, """
        denom = _sqrt(exp_avg_sq / bias_correction2) + eps
        p = p + (grad_coef * g) / denom
        p = p + (exp_avg_coef * exp_avg) / denom
    """),
    weight=3,
    numpy_signature="lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, *, maximize",
    torch_signature="lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, *, "
                    "foreach, maximize, capturable, differentiable",
    torch_extras={"foreach": None, "capturable": False, "differentiable": False},
)

ALGORITHMS = (NADAM,)
