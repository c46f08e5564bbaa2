"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019)."""
from ._spec import Algorithm, Hyper, State, Switch, flag, pair, real

_DECAY = Switch("decay", "0 if weight_decay == 0 else (2 if decoupled_weight_decay else 1)",
                ("none", "l2", "decoupled"))

ADAM = Algorithm(
    name="Adam",
    torch_name="Adam",
    title="Adam, as ``torch.optim.Adam``.",
    reference="Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(L2 weight decay; with decoupled\_weight\_decay }
             p \leftarrow p (1 - \eta\lambda) \text{ instead)} \\
        m &\leftarrow m + (1 - \beta_1)(g - m) \\
        v &\leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ if amsgrad else } v \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t} \cdot
             \frac{m}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("betas", (0.9, 0.999), pair(real(0, 1, high_inclusive=False)),
              r":math:`(\beta_1, \beta_2)`, the decay rates of the moment averages.",
              fields=("beta1", "beta2")),
        Hyper("eps", 1e-8, real(low=0), r":math:`\epsilon`, added to the denominator."),
        Hyper("weight_decay", 0.0, real(low=0),
              r":math:`\lambda`: an L2 penalty added to the gradient, or decoupled."),
        Hyper("amsgrad", False, flag(), r"Use the running maximum :math:`\hat v` of :math:`v` (AMSGrad)."),
        Hyper("decoupled_weight_decay", False, flag(),
              "Decay the param itself, as AdamW does, instead of adding an L2 term."),
    ],
    state=[State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`"),
           State("max_exp_avg_sq", r":math:`\hat v`", when="amsgrad")],
    per_array="""
        w1 = 1.0 - beta1
        w2 = 1.0 - beta2
        decay_scale = 1.0 - lr * weight_decay
        step_size = -(lr / (1.0 - pow(beta1, step)))
        bc2_sqrt = sqrt(1.0 - pow(beta2, step))
    """,
    scalars=("w1", "w2", "decay_scale", "step_size", "bc2_sqrt"),
    # torch.lerp switches formula at weight 0.5 (compared in the tensor's dtype)
    switches=[_DECAY, Switch("lerp", "<{{T}}>w1 >= 0.5", ("low", "high"))],
    temporaries=("denom",),
    update="""
        {{if decay == "l2"}}
        g = g + weight_decay * p
        {{elif decay == "decoupled"}}
        p = p * decay_scale
        {{endif}}
        exp_avg = _lerp_{{lerp}}(exp_avg, g, w1)
        exp_avg_sq = exp_avg_sq * beta2 + (w2 * g) * g
        {{if has_max_exp_avg_sq}}
        max_exp_avg_sq = _max_nan(max_exp_avg_sq, exp_avg_sq)
        denom = _sqrt(max_exp_avg_sq) / bc2_sqrt + eps
        {{else}}
        denom = _sqrt(exp_avg_sq) / bc2_sqrt + eps
        {{endif}}
        p = p + (step_size * exp_avg) / denom
    """,
    weight=3,
    numpy_signature="lr, betas, eps, weight_decay, amsgrad, *, maximize, decoupled_weight_decay",
    torch_signature="lr, betas, eps, weight_decay, amsgrad, *, foreach, maximize, capturable, "
                    "differentiable, fused, decoupled_weight_decay",
    torch_extras={"foreach": None, "capturable": False, "differentiable": False, "fused": None},
)

ADAMW = ADAM.variant(
    "AdamW", "AdamW (Adam with decoupled weight decay), as ``torch.optim.AdamW``.",
    defaults={"weight_decay": 1e-2}, fixed={"decoupled_weight_decay": True},
    numpy_signature="lr, betas, eps, weight_decay, amsgrad, *, maximize",
    torch_signature="lr, betas, eps, weight_decay, amsgrad, *, maximize, foreach, capturable, "
                    "differentiable, fused",
    formula=ADAM.formula.replace(
        r"g &\leftarrow g + \lambda p \qquad \text{(L2 weight decay; with decoupled\_weight\_decay }"
        "\n" r"             p \leftarrow p (1 - \eta\lambda) \text{ instead)} \\",
        r"p &\leftarrow p\,(1 - \eta\lambda) \qquad \text{(decoupled weight decay)} \\"),
)

ALGORITHMS = (ADAM, ADAMW)
