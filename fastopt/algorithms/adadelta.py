"""Adadelta: a per-element learning rate from running averages of g^2 and of the updates (Zeiler, 2012)."""
from ._spec import Algorithm, Hyper, State, real
from ._fragments import L2_DECAY, L2_SWITCH, code

ADADELTA = Algorithm(
    name="Adadelta",
    torch_name="Adadelta",
    title="Adadelta, as ``torch.optim.Adadelta``.",
    reference="Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, arXiv:1212.5701, 2012.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        v &\leftarrow \rho v + (1 - \rho) g^2 \\
        \Delta &\leftarrow \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g \\
        u &\leftarrow \rho u + (1 - \rho) \Delta^2 \\
        p &\leftarrow p - \eta \Delta""",
    hyperparameters=[
        Hyper("lr", 1.0, real(low=0), r"Learning rate :math:`\eta`, scaling the delta."),
        Hyper("rho", 0.9, real(0, 1), r":math:`\rho`, the decay rate of both running averages."),
        Hyper("eps", 1e-6, real(low=0), r":math:`\epsilon`, added under both square roots."),
        Hyper("weight_decay", 0.0, real(low=0), r"L2 penalty :math:`\lambda`, added to the gradient."),
    ],
    state=[State("square_avg", r":math:`v`, the running average of :math:`g^2`",
                 code_map="unsigned"),
           State("acc_delta", r":math:`u`, the running average of :math:`\Delta^2`",
                 code_map="unsigned")],
    per_array="""
        lr_neg = -lr
        w = 1.0 - rho
    """,
    scalars=("lr_neg", "w"),
    switches=[L2_SWITCH],
    temporaries=("delta",),
    update=code(L2_DECAY, """
        square_avg = square_avg * rho + (w * g) * g
        delta = _sqrt(acc_delta + eps) / _sqrt(square_avg + eps)
        delta = delta * g
        acc_delta = acc_delta * rho + (w * delta) * delta
        p = p + lr_neg * delta
    """),
    weight=3,
    numpy_signature="lr, rho, eps, weight_decay, *, maximize",
    torch_signature="lr, rho, eps, weight_decay, foreach, *, capturable, maximize, differentiable",
    torch_extras={"foreach": None, "capturable": False, "differentiable": False},
)

ALGORITHMS = (ADADELTA,)
