"""LAMB: Adam's update scaled per param by a trust ratio (You et al., 2020), in the float32-state
form of bitsandbytes' ``LAMB`` (``optim_bits=32``), whose arguments and defaults it takes.

bitsandbytes accepts ``bias_correction``, ``amsgrad`` and ``adam_w_mode`` and ignores them; fastopt
takes only the value whose behaviour it implements (True, False, True: a one-value choice) and
refuses any other, so that a setting never silently does nothing.
"""
from ._spec import Algorithm, Hyper, State, Switch, choice, real
from ._fragments import BETAS, EPS, MOMENT_WEIGHTS, SECOND_MOMENT, code

# The first two phases run when max_unorm > 0 (the driver takes the norms in between); "fused" is
# the whole step in one pass, for max_unorm = 0 (no trust ratio: nothing to measure).
_MOMENTS = code("""
    exp_avg = exp_avg * beta1 + w1 * g
""", SECOND_MOMENT, """
    u = exp_avg / (_sqrt(exp_avg_sq) + eps_c2)
""")
_APPLY = """
    p = p + coef * u
    {{if decay}}
    p = p * decay_scale
    {{endif}}
"""

LAMB = Algorithm(
    name="LAMB",
    torch_name=None,
    title="LAMB (layer-wise adaptive moments: Adam's update scaled by a trust ratio per param), "
          "the 32-bit LAMB of bitsandbytes.",
    reference="You et al., *Large Batch Optimization for Deep Learning: Training BERT in 76 "
              "minutes*, ICLR 2020 (arXiv:1904.00962). Arguments, defaults and update rule: "
              "``bitsandbytes.optim.LAMB`` with ``optim_bits=32`` (its trust ratio, not the "
              "paper's).",
    formula=r"""
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        u &= \frac{m}{\sqrt{v} + \epsilon \sqrt{1 - \beta_2^t}}, \quad
             s = \min\Big(1, \frac{\mu \lVert p \rVert}{\lVert u \rVert}\Big)
             \text{ if } \mu > 0 \text{ else } 1
             \qquad (\mu = \text{max\_unorm}; \text{ norms over the whole param, } p
             \text{ before the step}) \\
        p &\leftarrow \Big(p - \frac{\eta \sqrt{1 - \beta_2^t}}{1 - \beta_1^t}\, s\, u\Big)
             (1 - \eta\lambda)""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("bias_correction", True, choice(True),
              "Correct the moments' bias: always (bitsandbytes accepts False and ignores it; "
              "fastopt refuses it rather than silently doing nothing)."),
        BETAS,
        EPS,
        Hyper("weight_decay", 0.0, real(low=0),
              r"Decoupled weight decay :math:`\lambda`, applied after the update as bitsandbytes' "
              "CUDA kernel applies it (its CPU path applies it before: the two differ by "
              r":math:`\eta^2 \lambda` times the update)."),
        Hyper("amsgrad", False, choice(False),
              "AMSGrad: never (bitsandbytes accepts True and ignores it; fastopt refuses it)."),
        Hyper("adam_w_mode", True, choice(True),
              "Decoupled weight decay: always (bitsandbytes accepts False and ignores it; fastopt "
              "refuses it)."),
        Hyper("max_unorm", 1.0, real(low=0),
              r":math:`\mu`: the update's norm is clipped to :math:`\mu` times the param's norm, "
              r"taken before the step (0: no clipping, :math:`s = 1`). bitsandbytes' CPU path "
              r"measures :math:`u`, as fastopt does; its CUDA kernel measures the bias-corrected "
              r"update :math:`\sqrt{1 - \beta_2^t} / (1 - \beta_1^t)\, u`."),
    ],
    state=[State("exp_avg", ":math:`m`"), State("exp_avg_sq", ":math:`v`")],
    per_array=code(MOMENT_WEIGHTS, """
        bc2_sqrt = sqrt(1.0 - pow(beta2, step))
        eps_c2 = eps * bc2_sqrt
        step_size = -(lr * bc2_sqrt / (1.0 - pow(beta1, step)))
        decay_scale = 1.0 - lr * weight_decay
    """),
    scalars=("w1", "w2", "eps_c2", "step_size", "decay_scale", "coef"),
    # coef = step_size * s: the trust ratio s needs the norms of u and p over the whole param
    # (fastopt/_core/_driver_lamb.pxi)
    driver="LambBucket",
    driver_scalars=("coef",),
    # moment: m, v, and u into the driver's scratch (through p); apply: the update, u recomputed
    # from m (through g, gmul 1) and v; fused: the whole step, when max_unorm = 0
    phases=("moment", "apply", "fused"),
    switches=[Switch("decay", "weight_decay != 0")],
    temporaries=("u",),
    update=code("""
        {{if phase == "moment"}}
    """, _MOMENTS, """
        p = u
        {{elif phase == "apply"}}
        u = g / (_sqrt(exp_avg_sq) + eps_c2)
    """, _APPLY, """
        {{else}}
    """, _MOMENTS, _APPLY, """
        {{endif}}
    """),
    weight=3,
    numpy_signature="lr, bias_correction, betas, eps, weight_decay, amsgrad, adam_w_mode, *, "
                    "max_unorm, maximize",
    torch_signature="lr, bias_correction, betas, eps, weight_decay, amsgrad, adam_w_mode, *, "
                    "max_unorm, maximize",
)

ALGORITHMS = (LAMB,)
