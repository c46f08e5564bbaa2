"""LARS: SGD with momentum whose step is scaled per param by a trust ratio (You, Gitman & Ginsburg,
2017), in the float32-state form of bitsandbytes' ``LARS`` (``optim_bits=32``), whose arguments
and defaults it takes (``lr`` has no default, and momentum is required, as there).

bitsandbytes accepts ``dampening`` and ``nesterov`` and ignores them; fastopt takes only their
defaults (0 and False: one-value choices) and refuses any other value, so that a setting never
silently does nothing.
"""
from ._spec import REQUIRED, Algorithm, Hyper, State, Switch, choice, real
from ._fragments import code

_MOMENTUM = """
    {{if l2}}
    g = g + weight_decay * p
    {{endif}}
    {{if first}}
    momentum_buffer = g
    {{else}}
    momentum_buffer = momentum_buffer * momentum + g
    {{endif}}
"""
_APPLY = """
    p = p + coef * momentum_buffer
"""
# the apply phase reads B through g (gmul 1)
_APPLY_B = """
    p = p + coef * g
"""

LARS = Algorithm(
    name="LARS",
    torch_name=None,
    title="LARS (layer-wise adaptive rate scaling: SGD with momentum, its step scaled by a trust "
          "ratio per param), the 32-bit LARS of bitsandbytes.",
    reference="You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, "
              "arXiv:1708.03888, 2017. Arguments, defaults and update rule: "
              "``bitsandbytes.optim.LARS`` with ``optim_bits=32`` (its trust ratio, not the "
              "paper's local learning rate).",
    formula=r"""
        g &\leftarrow g + \lambda p \\
        B &\leftarrow g \text{ at the first step, else } \mu B + g \\
        s &= \min\Big(1, \frac{\nu \lVert p \rVert}{\lVert B \rVert}\Big)
             \text{ if } \nu > 0 \text{ else } 1
             \qquad (\nu = \text{max\_unorm}; \text{ norms over the whole param, } p
             \text{ before the step}) \\
        p &\leftarrow p - \eta\, s\, B""",
    hyperparameters=[
        Hyper("lr", REQUIRED, real(low=0), r"Learning rate :math:`\eta` (required)."),
        Hyper("momentum", 0.0, real(low=0, low_inclusive=False),
              r"Momentum factor :math:`\mu`. LARS needs one: the default 0 is refused, as "
              "bitsandbytes refuses it (give a momentum, 0.9 say)."),
        Hyper("dampening", 0.0, choice(0.0, 0),
              "Dampening: none (bitsandbytes accepts any value and ignores it; fastopt refuses "
              "any but 0 rather than silently doing nothing)."),
        Hyper("weight_decay", 0.0, real(low=0),
              r":math:`\lambda`: an L2 penalty added to the gradient."),
        Hyper("nesterov", False, choice(False),
              "Nesterov momentum: never (bitsandbytes accepts True and ignores it; fastopt "
              "refuses it)."),
        Hyper("max_unorm", 0.02, real(low=0),
              r":math:`\nu`: the step's norm is clipped to :math:`\nu` times the param's norm, "
              r"taken before the step (0: no clipping, :math:`s = 1`). bitsandbytes' CPU path "
              r"measures :math:`B`, as fastopt does; its CUDA kernel measures the buffer updated "
              "without the weight-decay term (and applies the one with it)."),
    ],
    state=[State("momentum_buffer", r":math:`B`")],
    per_array="""
        lr_neg = -lr
    """,
    scalars=("lr_neg", "coef"),
    # coef = lr_neg * s: the trust ratio s needs the norms of B and p over the whole param
    # (fastopt/_core/_driver_lars.pxi)
    driver="LarsBucket",
    driver_scalars=("coef",),
    # moment: B (p, a copy in the driver's scratch, read for the decay); apply: the update, with
    # B through g (gmul 1); fused: the whole step, when max_unorm = 0
    phases=("moment", "apply", "fused"),
    switches=[Switch("l2", "weight_decay != 0"), Switch("first", "step == 1")],
    update=code('{{if phase == "moment"}}', _MOMENTUM, '{{elif phase == "apply"}}', _APPLY_B,
                '{{else}}', _MOMENTUM, _APPLY, "{{endif}}"),
    weight=1,
    numpy_signature="lr, momentum, dampening, weight_decay, nesterov, *, max_unorm, maximize",
    torch_signature="lr, momentum, dampening, weight_decay, nesterov, *, max_unorm, maximize",
)

ALGORITHMS = (LARS,)
