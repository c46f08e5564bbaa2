"""Lion: sign momentum found by program search (Chen et al., 2023). torch.optim has no Lion."""
from ._spec import Algorithm, Hyper, State, Switch, pair, real
from ._fragments import DECAY_SCALE, MOMENT_WEIGHTS, bitsandbytes_variant, code

LION = Algorithm(
    name="Lion",
    torch_name=None,
    title="Lion (EvoLved Sign Momentum), the update rule of Chen et al. (2023).",
    reference="Chen et al., *Symbolic Discovery of Optimization Algorithms*, NeurIPS 2023, "
              "Algorithm 2. The weight decay is applied to the param before the sign step, as in "
              "the authors' implementation.",
    formula=r"""
        c &= \beta_1 m + (1 - \beta_1) g \\
        p &\leftarrow p\,(1 - \eta\lambda) - \eta\,\operatorname{sign}(c) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2) g""",
    hyperparameters=[
        Hyper("lr", 1e-4, real(low=0), r"Learning rate :math:`\eta` (typically 3-10x smaller "
              "than AdamW's)."),
        Hyper("betas", (0.9, 0.99), pair(real(0, 1, high_inclusive=False)),
              r":math:`(\beta_1, \beta_2)`: the interpolation of the update direction and the "
              "decay rate of the momentum.", fields=("beta1", "beta2")),
        Hyper("weight_decay", 0.0, real(low=0), r"Decoupled weight decay :math:`\lambda`."),
    ],
    state=[State("exp_avg", ":math:`m`")],
    per_array=code(MOMENT_WEIGHTS, "lr_neg = -lr", DECAY_SCALE),
    scalars=("w1", "w2", "lr_neg", "decay_scale"),
    switches=[Switch("decay", "weight_decay != 0")],
    temporaries=("c",),
    update="""
        {{if decay}}
        p = p * decay_scale
        {{endif}}
        c = exp_avg * beta1 + w1 * g
        p = p + lr_neg * _sign(c)
        exp_avg = exp_avg * beta2 + w2 * g
    """,
    weight=1,
    numpy_signature="lr, betas, weight_decay, *, maximize",
    torch_signature="lr, betas, weight_decay, *, maximize",
)

LION8BIT = bitsandbytes_variant(LION, "Lion8bit", "Lion", (("exp_avg",),),
                                signature="lr, betas, weight_decay, *, maximize",
                                groups={"eps": 0.0})

ALGORITHMS = (LION, LION8BIT)
