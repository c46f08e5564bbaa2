"""AdEMAMix: Adam with a mixture of a fast and a slow momentum (Pagliardini, Ablin & Grangier,
2024). torch.optim has no AdEMAMix; the arguments and defaults are bitsandbytes'."""
from ._spec import Algorithm, Hyper, State, Switch, real, tuple_of
from ._fragments import (DECAY_AFTER, DECAY_AFTER_UPDATE, DECAY_SCALE, EPS, MOMENT_WEIGHTS,
                         SECOND_MOMENT, bitsandbytes_variant, code)

_BETA = real(0, 1, high_inclusive=False)
# beta3's schedule runs from beta1 to beta3 through their logarithms: both must be positive
_POSITIVE_BETA = real(0, 1, low_inclusive=False, high_inclusive=False)

ADEMAMIX = Algorithm(
    name="AdEMAMix",
    torch_name=None,
    title="AdEMAMix (an Adam whose update mixes a fast and a slow momentum), the update rule of "
          "Pagliardini et al. (2024).",
    reference="Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster, Older*, "
              "ICLR 2025, Algorithm 1 (with the schedulers of its section 3). Arguments and "
              "defaults are those of ``bitsandbytes.optim.AdEMAMix``.",
    formula=r"""
        \alpha_t &= \min(t \alpha / T_\alpha, \alpha) \text{ (or } \alpha \text{ without } T_\alpha), \quad
             \beta_{3,t} = \min\Big(\exp\Big(\frac{\ln\beta_1 \ln\beta_3}
                 {(1 - t/T_{\beta_3}) \ln\beta_3 + (t/T_{\beta_3}) \ln\beta_1}\Big), \beta_3\Big)
             \text{ (or } \beta_3 \text{ without } T_{\beta_3}) \\
        p &\leftarrow p\,(1 - \eta\lambda) \\
        m_1 &\leftarrow \beta_1 m_1 + (1 - \beta_1) g, \quad
             m_2 \leftarrow \beta_{3,t} m_2 + (1 - \beta_{3,t}) g, \quad
             v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        p &\leftarrow p - \eta\, \frac{m_1 / (1 - \beta_1^t) + \alpha_t m_2}
             {\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}""",
    hyperparameters=[
        Hyper("lr", 1e-3, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("betas", (0.9, 0.999, 0.9999), tuple_of(_POSITIVE_BETA, _BETA, _POSITIVE_BETA),
              r":math:`(\beta_1, \beta_2, \beta_3)`: the decay rates of the fast momentum, the "
              "second moment and the slow momentum.", fields=("beta1", "beta2", "beta3")),
        Hyper("alpha", 5.0, real(low=0), r":math:`\alpha`, the weight of the slow momentum."),
        Hyper("t_alpha", None, real(low=0, low_inclusive=False, optional=True),
              r":math:`T_\alpha`: the steps over which :math:`\alpha_t` rises linearly to "
              r":math:`\alpha` (None: :math:`\alpha` from the first step)."),
        Hyper("t_beta3", None, real(low=0, low_inclusive=False, optional=True),
              r":math:`T_{\beta_3}`: the steps over which :math:`\beta_{3,t}` rises from "
              r":math:`\beta_1` to :math:`\beta_3` (None: :math:`\beta_3` from the first step)."),
        EPS,
        Hyper("weight_decay", 1e-2, real(low=0), r"Decoupled weight decay :math:`\lambda`."),
    ],
    state=[State("exp_avg", r":math:`m_1`, the fast momentum"),
           State("exp_avg_slow", r":math:`m_2`, the slow momentum"),
           State("exp_avg_sq", ":math:`v`", code_map="unsigned")],
    # t_alpha / t_beta3 of None arrive as NaN (which compares unequal to itself).
    per_array=code(MOMENT_WEIGHTS, DECAY_SCALE, """
        lr_neg = -lr
        bias_correction1 = 1.0 - pow(beta1, step)
        bc2_sqrt = sqrt(1.0 - pow(beta2, step))
        alpha_t = alpha
        if t_alpha == t_alpha:
            alpha_t = min(step * alpha / t_alpha, alpha)
        beta3_t = beta3
        if t_beta3 == t_beta3:
            step_scale = step / t_beta3
            beta3_t = min(exp(log(beta1) * log(beta3)
                              / ((1.0 - step_scale) * log(beta3) + step_scale * log(beta1))), beta3)
        w3 = 1.0 - beta3_t
    """, DECAY_AFTER_UPDATE.format(step="lr_neg")),
    constants=[DECAY_AFTER],
    scalars=("w1", "w2", "w3", "beta3_t", "decay_scale", "lr_neg", "bias_correction1", "bc2_sqrt",
             "alpha_t"),
    switches=[Switch("decay", "weight_decay != 0")],
    temporaries=("denom",),
    update=code("""
        {{if decay}}
        p = p * decay_scale
        {{endif}}
        exp_avg = exp_avg * beta1 + w1 * g
        exp_avg_slow = exp_avg_slow * beta3_t + w3 * g
    """, SECOND_MOMENT, """
        denom = _sqrt(exp_avg_sq) / bc2_sqrt + eps
        p = p + lr_neg * ((exp_avg / bias_correction1 + alpha_t * exp_avg_slow) / denom)
    """),
    weight=3,
    numpy_signature="lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, *, maximize",
    torch_signature="lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, *, maximize",
)

ADEMAMIX8BIT = bitsandbytes_variant(
    ADEMAMIX, "AdEMAMix8bit", "AdEMAMix", (("exp_avg", "exp_avg_slow"), ("exp_avg_sq",)),
    signature="lr, betas, alpha, t_alpha, t_beta3, eps, weight_decay, *, maximize", decay_after=True)

ALGORITHMS = (ADEMAMIX, ADEMAMIX8BIT)
