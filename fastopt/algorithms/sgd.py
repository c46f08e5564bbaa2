"""Stochastic gradient descent with momentum, dampening and Nesterov momentum."""
from ._spec import Algorithm, Hyper, Rule, State, Switch, flag, real
from ._fragments import bitsandbytes_variant, L2_DECAY, L2_SWITCH, code

SGD = Algorithm(
    name="SGD",
    torch_name="SGD",
    title="Stochastic gradient descent, as ``torch.optim.SGD``.",
    formula=r"""
        g &\leftarrow g + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        b &\leftarrow g \text{ on the first step, else } \mu b + (1 - \tau) g
             \qquad \text{(if momentum } \mu \ne 0) \\
        g &\leftarrow g + \mu b \text{ if nesterov else } b \qquad \text{(if momentum } \mu \ne 0) \\
        p &\leftarrow p - \eta g""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("momentum", 0.0, real(low=0), r"Momentum factor :math:`\mu`."),
        Hyper("dampening", 0.0, real(), r"Dampening :math:`\tau` of the momentum."),
        Hyper("weight_decay", 0.0, real(low=0), r"L2 penalty :math:`\lambda`, added to the gradient."),
        Hyper("nesterov", False, flag(), "Nesterov momentum (needs momentum > 0 and dampening = 0)."),
    ],
    rules=[Rule(lambda v: not v["nesterov"] or (v["momentum"] > 0 and v["dampening"] == 0),
                "nesterov=True requires momentum > 0 and dampening = 0")],
    state=[State("momentum_buffer", r":math:`b`", when="momentum != 0", lazy=True)],
    has_step=False,
    per_array="""
        lr_neg = -lr
        keep = 1.0 - dampening
    """,
    scalars=("lr_neg", "keep"),
    switches=[L2_SWITCH, Switch("nesterov", "nesterov"),
              Switch("first", "first_use")],
    update=code(L2_DECAY, """
        {{if has_momentum_buffer}}
        {{if first}}
        momentum_buffer = g
        {{else}}
        momentum_buffer = momentum_buffer * momentum + keep * g
        {{endif}}
        {{if nesterov}}
        g = g + momentum * momentum_buffer
        {{else}}
        g = momentum_buffer
        {{endif}}
        {{endif}}
        p = p + lr_neg * g
    """),
    weight=1,
    numpy_signature="lr, momentum, dampening, weight_decay, nesterov, *, maximize",
    torch_signature="lr, momentum, dampening, weight_decay, nesterov, *, maximize, foreach, "
                    "differentiable, fused",
    torch_extras={"foreach": None, "differentiable": False, "fused": None},
    torch_load_defaults={"fused": False},
)

SGD8BIT = bitsandbytes_variant(
    SGD, "SGD8bit", "SGD with momentum", (("momentum_buffer",),),
    signature="lr, momentum, dampening, weight_decay, nesterov, *, maximize",
    groups={"betas": ("momentum", "dampening"), "eps": 0.0},
    notes=("``dampening`` and ``nesterov``, which bitsandbytes accepts and ignores, are applied, and "
           "``momentum=0`` (which bitsandbytes refuses) is plain SGD without state."))

#: bitsandbytes' LARS8bit: its 8-bit (blockwise) kernels take the momentum step without LARS's trust
#: ratio; for the trust ratio, fastopt.LARS.
LARS8BIT = bitsandbytes_variant(
    SGD, "LARS8bit", "LARS's momentum step on 8-bit states", (("momentum_buffer",),),
    signature="lr, momentum, dampening, weight_decay, nesterov, *, maximize",
    groups={"betas": ("momentum", "dampening"), "eps": 0.0},
    notes="As bitsandbytes' 8-bit kernels, no layer-wise trust ratio is applied (bitsandbytes "
          "applies ``max_unorm`` only to params below ``min_8bit_size``, through its 32-bit "
          "kernel; its ``max_unorm`` is not taken); ``fastopt.LARS`` has the trust ratio, with "
          "float32 states.")

ALGORITHMS = (SGD, SGD8BIT, LARS8BIT)
