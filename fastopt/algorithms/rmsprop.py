"""RMSprop (Hinton, Lecture 6e of Neural Networks for Machine Learning, 2012)."""
from ._spec import Algorithm, Hyper, State, flag, real
from ._fragments import bitsandbytes_variant, L2_DECAY, L2_SWITCH, code, lerp_switch

RMSPROP = Algorithm(
    name="RMSprop",
    torch_name="RMSprop",
    title="RMSprop, as ``torch.optim.RMSprop``.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        s &\leftarrow \alpha s + (1 - \alpha) g^2 \\
        \bar g &\leftarrow \bar g + (1 - \alpha)(g - \bar g) \qquad \text{(centered only)} \\
        a &\leftarrow \sqrt{s - \bar g^2} + \epsilon \text{ if centered else } \sqrt{s} + \epsilon \\
        b &\leftarrow \mu b + g / a, \quad p \leftarrow p - \eta b \qquad \text{(if momentum } \mu > 0) \\
        p &\leftarrow p - \eta\, g / a \qquad \text{(otherwise)}""",
    hyperparameters=[
        Hyper("lr", 1e-2, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("alpha", 0.99, real(low=0), r"Smoothing constant :math:`\alpha`."),
        Hyper("eps", 1e-8, real(low=0), r":math:`\epsilon`, added after the square root."),
        Hyper("weight_decay", 0.0, real(low=0), r"L2 penalty :math:`\lambda`."),
        Hyper("momentum", 0.0, real(low=0), r"Momentum factor :math:`\mu`."),
        Hyper("centered", False, flag(),
              "Normalize by an estimate of the gradient's variance instead of its second moment."),
    ],
    state=[State("square_avg", ":math:`s`"),
           State("momentum_buffer", ":math:`b`", when="momentum > 0"),
           State("grad_avg", r":math:`\bar g`", when="centered")],
    per_array="""
        lr_neg = -lr
        w = 1.0 - alpha
    """,
    scalars=("lr_neg", "w"),
    switches=[L2_SWITCH,
              lerp_switch("w")],
    temporaries=("denom",),
    update=code(L2_DECAY, """
        square_avg = square_avg * alpha + (w * g) * g
        {{if has_grad_avg}}
        grad_avg = _lerp_{{lerp}}(grad_avg, g, w)
        denom = _sqrt(square_avg + (-grad_avg) * grad_avg) + eps
        {{else}}
        denom = _sqrt(square_avg) + eps
        {{endif}}
        {{if has_momentum_buffer}}
        momentum_buffer = momentum_buffer * momentum + g / denom
        p = p + lr_neg * momentum_buffer
        {{else}}
        p = p + (lr_neg * g) / denom
        {{endif}}
    """),
    weight=2,
    numpy_signature="lr, alpha, eps, weight_decay, momentum, centered, *, maximize",
    torch_signature="lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, "
                    "maximize, differentiable",
    torch_extras={"capturable": False, "foreach": None, "differentiable": False},
)

RMSPROP8BIT = bitsandbytes_variant(
    RMSPROP, "RMSprop8bit", "RMSprop", (("square_avg",),),
    signature="lr, alpha, eps, weight_decay, momentum, centered, *, maximize",
    groups={"betas": ("alpha", "momentum")},
    notes=("``momentum`` (which bitsandbytes ignores) and ``centered`` (which it refuses) are "
           "applied, their states in 8 bits too."))

ALGORITHMS = (RMSPROP, RMSPROP8BIT)
