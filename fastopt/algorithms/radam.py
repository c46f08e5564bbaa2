"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2020)."""
from ._spec import Algorithm, Hyper, State, Switch, real
from ._fragments import (BETAS, BIAS_CORRECTION2, DECAY, DECAY_FORMULA, DECAY_SCALE, DECAY_SWITCH,
                         DECOUPLED_WEIGHT_DECAY, EPS, FIRST_MOMENT, MOMENT_WEIGHTS, MOMENTS_FORMULA,
                         SECOND_MOMENT, WEIGHT_DECAY, code, lerp_switch)

RADAM = Algorithm(
    name="RAdam",
    torch_name="RAdam",
    title="RAdam, as ``torch.optim.RAdam``.",
    reference="Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*, ICLR 2020.",
    formula=DECAY_FORMULA + MOMENTS_FORMULA + r"""
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
             \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        p &\leftarrow p - \frac{m}{1 - \beta_1^t}\,\eta\,
             \frac{\sqrt{1 - \beta_2^t}}{\sqrt v + \epsilon}\, r_t \text{ if } \rho_t > 5
             \text{, else } p - \frac{m}{1 - \beta_1^t}\,\eta""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        BETAS,
        EPS,
        WEIGHT_DECAY,
        DECOUPLED_WEIGHT_DECAY,
    ],
    state=[State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`", code_map="unsigned")],
    # Python's x ** 0.5 is pow(x, 0.5), which torch uses for both square roots below.
    per_array=code(MOMENT_WEIGHTS, DECAY_SCALE, """
        bias_correction1 = 1.0 - pow(beta1, step)
    """, BIAS_CORRECTION2, """
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * step * pow(beta2, step) / bias_correction2
        rect = 0.0
        if rho_t > 5.0:
            rect = pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5)
        bc2_sqrt = pow(bias_correction2, 0.5)
    """),
    scalars=("w1", "w2", "decay_scale", "bias_correction1", "rect", "bc2_sqrt"),
    switches=[DECAY_SWITCH, lerp_switch("w1"), Switch("rectify", "rho_t > 5.0")],
    temporaries=("update",),
    update=code(DECAY, FIRST_MOMENT, SECOND_MOMENT, """
        update = (exp_avg / bias_correction1) * lr
        {{if rectify}}
        update = update * ((<{{T}}>1 / (_sqrt(exp_avg_sq) + eps)) * bc2_sqrt)
        update = update * rect
        {{endif}}
        p = p - update
    """),
    weight=3,
    numpy_signature="lr, betas, eps, weight_decay, decoupled_weight_decay, *, maximize",
    torch_signature="lr, betas, eps, weight_decay, decoupled_weight_decay, *, foreach, maximize, "
                    "capturable, differentiable",
    torch_extras={"foreach": None, "capturable": False, "differentiable": False},
)

ALGORITHMS = (RADAM,)
