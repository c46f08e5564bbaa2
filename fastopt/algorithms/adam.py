"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019)."""
from ._spec import Algorithm, Hyper, State, flag, real
from ._fragments import (BETAS, DECAY, DECAY_AFTER, DECAY_AFTER_UPDATE, DECAY_FORMULA, DECAY_SCALE,
                         DECAY_SWITCH, DECOUPLED_WEIGHT_DECAY, EPS, FIRST_MOMENT, MOMENT_WEIGHTS,
                         SECOND_MOMENT, WEIGHT_DECAY, bitsandbytes_variant, code, lerp_switch)

ADAM = Algorithm(
    name="Adam",
    torch_name="Adam",
    title="Adam, as ``torch.optim.Adam``.",
    reference="Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.",
    formula=DECAY_FORMULA + r"""
        m &\leftarrow m + (1 - \beta_1)(g - m) \\
        v &\leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ if amsgrad else } v \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t} \cdot
             \frac{m}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        BETAS,
        EPS,
        WEIGHT_DECAY,
        Hyper("amsgrad", False, flag(), r"Use the running maximum :math:`\hat v` of :math:`v` (AMSGrad)."),
        DECOUPLED_WEIGHT_DECAY,
    ],
    state=[State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`", code_map="unsigned"),
           State("max_exp_avg_sq", r":math:`\hat v`", when="amsgrad", code_map="unsigned")],
    per_array=code(MOMENT_WEIGHTS, DECAY_SCALE, """
        step_size = -(lr / (1.0 - pow(beta1, step)))
        bc2_sqrt = sqrt(1.0 - pow(beta2, step))
    """, DECAY_AFTER_UPDATE.format(step="step_size")),
    constants=[DECAY_AFTER],
    scalars=("w1", "w2", "decay_scale", "step_size", "bc2_sqrt"),
    switches=[DECAY_SWITCH, lerp_switch("w1")],
    temporaries=("denom",),
    update=code(DECAY, FIRST_MOMENT, SECOND_MOMENT, """
        {{if has_max_exp_avg_sq}}
        max_exp_avg_sq = _max_nan(max_exp_avg_sq, exp_avg_sq)
        denom = _sqrt(max_exp_avg_sq) / bc2_sqrt + eps
        {{else}}
        denom = _sqrt(exp_avg_sq) / bc2_sqrt + eps
        {{endif}}
        p = p + (step_size * exp_avg) / denom
    """),
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
        DECAY_FORMULA, "\n        " r"p &\leftarrow p\,(1 - \eta\lambda) \qquad \text{(decoupled weight decay)} \\"),
)

_BNB_SIGNATURE = "lr, betas, eps, weight_decay, amsgrad, *, maximize"
_BNB_NOTES = ("Its weight decay is decoupled (as AdamW's); ``amsgrad``, which bitsandbytes accepts "
              "and ignores, is applied.")
ADAM8BIT = bitsandbytes_variant(
    ADAM, "Adam8bit", "Adam", (("exp_avg",), ("exp_avg_sq",)), signature=_BNB_SIGNATURE,
    fixed={"decoupled_weight_decay": True}, decay_after=True, notes=_BNB_NOTES,
    groups={"alpha": 0.0, "t_alpha": None, "t_beta3": None})
ADAMW8BIT = bitsandbytes_variant(
    ADAM, "AdamW8bit", "AdamW", (("exp_avg",), ("exp_avg_sq",)), signature=_BNB_SIGNATURE,
    defaults={"weight_decay": 1e-2}, fixed={"decoupled_weight_decay": True}, decay_after=True,
    notes=_BNB_NOTES, groups={"alpha": 0.0, "t_alpha": None, "t_beta3": None})

#: bitsandbytes' LAMB8bit: its 8-bit (blockwise) kernels take the Adam step without LAMB's trust
#: ratio (max_unorm acts only through its 32-bit kernel); for the trust ratio, fastopt.LAMB.
LAMB8BIT = bitsandbytes_variant(
    ADAM, "LAMB8bit", "LAMB's Adam step on 8-bit states", (("exp_avg",), ("exp_avg_sq",)),
    signature=_BNB_SIGNATURE, fixed={"decoupled_weight_decay": True}, decay_after=True,
    notes="As bitsandbytes' 8-bit kernels, no layer-wise trust ratio is applied (bitsandbytes "
          "applies ``max_unorm`` only to params below ``min_8bit_size``, through its 32-bit "
          "kernel; its ``bias_correction``, ``adam_w_mode`` and ``max_unorm`` are not taken); "
          "``fastopt.LAMB`` has the trust ratio, with float32 states.",
    groups={"alpha": 0.0, "t_alpha": None, "t_beta3": None})

ALGORITHMS = (ADAM, ADAMW, ADAM8BIT, ADAMW8BIT, LAMB8BIT)
