"""Adamax: Adam with the infinity norm (Kingma & Ba, 2015, section 7)."""
from ._spec import Algorithm, Hyper, State, pair, real
from ._fragments import FIRST_MOMENT, L2_DECAY, L2_SWITCH, code, lerp_switch

ADAMAX = Algorithm(
    name="Adamax",
    torch_name="Adamax",
    title="Adamax, as ``torch.optim.Adamax``.",
    reference="Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015, section 7.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        m &\leftarrow m + (1 - \beta_1)(g - m) \\
        u &\leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t}\,\frac{m}{u}""",
    hyperparameters=[
        Hyper("lr", 2e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("betas", (0.9, 0.999), pair(real(0, 1, high_inclusive=False)),
              r":math:`(\beta_1, \beta_2)`, the decay rates of :math:`m` and :math:`u`.",
              fields=("beta1", "beta2")),
        Hyper("eps", 1e-8, real(low=0), r":math:`\epsilon`, added to :math:`|g|`."),
        Hyper("weight_decay", 0.0, real(low=0), r"L2 penalty :math:`\lambda`."),
    ],
    state=[State("exp_avg", ":math:`m`"), State("exp_inf", ":math:`u`, the infinity norm", code_map="unsigned")],
    per_array="""
        w1 = 1.0 - beta1
        clr_neg = -(lr / (1.0 - pow(beta1, step)))
    """,
    scalars=("w1", "clr_neg"),
    switches=[L2_SWITCH, lerp_switch("w1")],
    update=code(L2_DECAY, FIRST_MOMENT, """
        exp_inf = _max_nan(exp_inf * beta2, _abs(g) + eps)
        p = p + (clr_neg * exp_avg) / exp_inf
    """),
    weight=2,
    numpy_signature="lr, betas, eps, weight_decay, *, maximize",
    torch_signature="lr, betas, eps, weight_decay, foreach, *, maximize, differentiable, capturable",
    torch_extras={"foreach": None, "differentiable": False, "capturable": False},
)

ALGORITHMS = (ADAMAX,)
