"""Adagrad (Duchi, Hazan & Singer, 2011)."""
from ._spec import Algorithm, Hyper, State, real
from ._fragments import bitsandbytes_variant, L2_DECAY, L2_SWITCH, code

ADAGRAD = Algorithm(
    name="Adagrad",
    torch_name="Adagrad",
    title="Adagrad, as ``torch.optim.Adagrad``.",
    reference="Duchi, Hazan & Singer, *Adaptive Subgradient Methods for Online Learning and "
              "Stochastic Optimization*, JMLR 2011.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        \tilde\eta &= \eta / (1 + (t - 1)\,\delta) \\
        s &\leftarrow s + g^2 \\
        p &\leftarrow p - \tilde\eta\, g / (\sqrt{s} + \epsilon)""",
    hyperparameters=[
        Hyper("lr", 1e-2, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("lr_decay", 0.0, real(low=0), r"Learning-rate decay :math:`\delta`."),
        Hyper("weight_decay", 0.0, real(low=0), r"L2 penalty :math:`\lambda`."),
        Hyper("initial_accumulator_value", 0.0, real(low=0), r"Starting value of :math:`s`."),
        Hyper("eps", 1e-10, real(low=0), r":math:`\epsilon`, added after the square root."),
    ],
    state=[State("sum", ":math:`s` (from construction on, as in torch)",
                 init="initial_accumulator_value", eager=True)],
    per_array="""
        clr_neg = -(lr / (1.0 + (step - 1.0) * lr_decay))
    """,
    scalars=("clr_neg",),
    switches=[L2_SWITCH],
    update=code(L2_DECAY, """
        sum = sum + g * g
        p = p + (clr_neg * g) / (_sqrt(sum) + eps)
    """),
    weight=2,
    numpy_signature="lr, lr_decay, weight_decay, initial_accumulator_value, eps, *, maximize",
    torch_signature="lr, lr_decay, weight_decay, initial_accumulator_value, eps, foreach, *, "
                    "maximize, differentiable, fused",
    torch_extras={"foreach": None, "differentiable": False, "fused": None},
)

ADAGRAD8BIT = bitsandbytes_variant(
    ADAGRAD, "Adagrad8bit", "Adagrad", (("sum",),),
    signature="lr, lr_decay, weight_decay, initial_accumulator_value, eps, *, maximize",
    groups={"betas": (0.0, 0.0), "lr_decay": 0.0, "initial_accumulator_value": 0.0},
    notes=("``lr_decay`` and ``initial_accumulator_value``, which bitsandbytes refuses unless 0, are "
           "applied."))

ALGORITHMS = (ADAGRAD, ADAGRAD8BIT)
