"""NAdam: Adam with Nesterov momentum (Dozat, 2016), with the momentum schedule of torch.optim."""
from ._spec import Algorithm, Hyper, State, Switch, flag, pair, real

NADAM = Algorithm(
    name="NAdam",
    torch_name="NAdam",
    title="NAdam, as ``torch.optim.NAdam``.",
    reference="Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR 2016 workshop.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(L2 weight decay; with decoupled\_weight\_decay }
             p \leftarrow p (1 - \eta\lambda) \text{ instead)} \\
        \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t \psi}), \quad
             \mu_{t+1} = \beta_1 (1 - \tfrac12\, 0.96^{(t+1) \psi}), \quad
             \Pi_t = \Pi_{t-1} \mu_t \\
        m &\leftarrow m + (1 - \beta_1)(g - m), \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        d &= \sqrt{v / (1 - \beta_2^t)} + \epsilon \\
        p &\leftarrow p - \eta\,\frac{1 - \mu_t}{1 - \Pi_t}\,\frac{g}{d}
             - \eta\,\frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}}\,\frac{m}{d}""",
    hyperparameters=[
        Hyper("lr", 2e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("betas", (0.9, 0.999), pair(real(0, 1, high_inclusive=False)),
              r":math:`(\beta_1, \beta_2)`, the decay rates of the moment averages.",
              fields=("beta1", "beta2")),
        Hyper("eps", 1e-8, real(low=0), r":math:`\epsilon`, added to the denominator."),
        Hyper("weight_decay", 0.0, real(low=0),
              r":math:`\lambda`: an L2 penalty added to the gradient, or decoupled."),
        Hyper("momentum_decay", 4e-3, real(low=0), r":math:`\psi`, the momentum schedule's decay."),
        Hyper("decoupled_weight_decay", False, flag(),
              "Decay the param itself (as AdamW does) instead of adding an L2 term."),
    ],
    state=[State("mu_product", r":math:`\Pi_t`, the product of the momentum schedule",
                 shape="scalar", init=1.0),
           State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`")],
    # torch keeps mu_product as a float32 tensor: its product is rounded to float32 every step,
    # and the coefficients are then computed in double from that float32 value.
    per_array="""
        w1 = 1.0 - beta1
        w2 = 1.0 - beta2
        decay_scale = 1.0 - lr * weight_decay
        bias_correction2 = 1.0 - pow(beta2, step)
        mu = beta1 * (1.0 - 0.5 * pow(0.96, step * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * pow(0.96, (step + 1.0) * momentum_decay))
        mu_product = <float>(mu_product * <float>mu)
        grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product)
        exp_avg_coef = (-lr * mu_next) / (1.0 - mu_product * mu_next)
    """,
    scalars=("w1", "w2", "decay_scale", "bias_correction2", "grad_coef", "exp_avg_coef"),
    switches=[Switch("decay", "0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)",
                     ("none", "l2", "decoupled")),
              Switch("lerp", "<{{T}}>w1 >= 0.5", ("low", "high"))],
    temporaries=("denom",),
    update="""
        {{if decay == "l2"}}
        g = g + weight_decay * p
        {{elif decay == "decoupled"}}
        p = p * decay_scale
        {{endif}}
        exp_avg = _lerp_{{lerp}}(exp_avg, g, w1)
        exp_avg_sq = exp_avg_sq * beta2 + (w2 * g) * g
        denom = _sqrt(exp_avg_sq / bias_correction2) + eps
        p = p + (grad_coef * g) / denom
        p = p + (exp_avg_coef * exp_avg) / denom
    """,
    weight=3,
    numpy_signature="lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, *, maximize",
    torch_signature="lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, *, "
                    "foreach, maximize, capturable, differentiable",
    torch_extras={"foreach": None, "capturable": False, "differentiable": False},
)

ALGORITHMS = (NADAM,)
