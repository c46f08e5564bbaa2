"""RAdam: Adam with a rectified adaptive learning rate (Liu et al., 2020)."""
from ._spec import Algorithm, Hyper, State, Switch, flag, pair, real

RADAM = Algorithm(
    name="RAdam",
    torch_name="RAdam",
    title="RAdam, as ``torch.optim.RAdam``.",
    reference="Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond*, ICLR 2020.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(L2 weight decay; with decoupled\_weight\_decay }
             p \leftarrow p (1 - \eta\lambda) \text{ instead)} \\
        m &\leftarrow m + (1 - \beta_1)(g - m), \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
             \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        p &\leftarrow p - \frac{m}{1 - \beta_1^t}\,\eta\,
             \frac{\sqrt{1 - \beta_2^t}}{\sqrt v + \epsilon}\, r_t \text{ if } \rho_t > 5
             \text{, else } p - \frac{m}{1 - \beta_1^t}\,\eta""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("betas", (0.9, 0.999), pair(real(0, 1, high_inclusive=False)),
              r":math:`(\beta_1, \beta_2)`, the decay rates of the moment averages.",
              fields=("beta1", "beta2")),
        Hyper("eps", 1e-8, real(low=0), r":math:`\epsilon`, added to the denominator."),
        Hyper("weight_decay", 0.0, real(low=0),
              r":math:`\lambda`: an L2 penalty added to the gradient, or decoupled."),
        Hyper("decoupled_weight_decay", False, flag(),
              "Decay the param itself (as AdamW does) instead of adding an L2 term."),
    ],
    state=[State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`")],
    # Python's x ** 0.5 is pow(x, 0.5), which torch uses for both square roots below.
    per_array="""
        w1 = 1.0 - beta1
        w2 = 1.0 - beta2
        decay_scale = 1.0 - lr * weight_decay
        bias_correction1 = 1.0 - pow(beta1, step)
        bias_correction2 = 1.0 - pow(beta2, step)
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * step * pow(beta2, step) / bias_correction2
        rect = 0.0
        if rho_t > 5.0:
            rect = pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5)
        bc2_sqrt = pow(bias_correction2, 0.5)
    """,
    scalars=("w1", "w2", "decay_scale", "bias_correction1", "rect", "bc2_sqrt"),
    switches=[Switch("decay", "0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)",
                     ("none", "l2", "decoupled")),
              Switch("lerp", "<{{T}}>w1 >= 0.5", ("low", "high")),
              Switch("rectify", "rho_t > 5.0")],
    temporaries=("update",),
    update="""
        {{if decay == "l2"}}
        g = g + weight_decay * p
        {{elif decay == "decoupled"}}
        p = p * decay_scale
        {{endif}}
        exp_avg = _lerp_{{lerp}}(exp_avg, g, w1)
        exp_avg_sq = exp_avg_sq * beta2 + (w2 * g) * g
        update = (exp_avg / bias_correction1) * lr
        {{if rectify}}
        update = update * ((<{{T}}>1 / (_sqrt(exp_avg_sq) + eps)) * bc2_sqrt)
        update = update * rect
        {{endif}}
        p = p - update
    """,
    weight=3,
    numpy_signature="lr, betas, eps, weight_decay, decoupled_weight_decay, *, maximize",
    torch_signature="lr, betas, eps, weight_decay, decoupled_weight_decay, *, foreach, maximize, "
                    "capturable, differentiable",
    torch_extras={"foreach": None, "capturable": False, "differentiable": False},
)

ALGORITHMS = (RADAM,)
