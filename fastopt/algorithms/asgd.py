"""ASGD: stochastic gradient descent with iterate averaging (Polyak & Juditsky, 1992), with the
decaying step size of Bottou (2012), as torch.optim.ASGD runs it."""
from ._spec import Algorithm, Hyper, State, Switch, real
from ._fragments import L2_DECAY, L2_SWITCH, code

ASGD = Algorithm(
    name="ASGD",
    torch_name="ASGD",
    title="Averaged stochastic gradient descent, as ``torch.optim.ASGD``.",
    reference="Polyak & Juditsky, *Acceleration of Stochastic Approximation by Averaging*, SIAM J. "
              "Control Optim. 1992; Bottou, *Stochastic Gradient Descent Tricks*, 2012.",
    formula=r"""
        g &\leftarrow g + \lambda_w p \qquad \text{(if weight\_decay } \lambda_w \ne 0) \\
        p &\leftarrow p\,(1 - \lambda \eta_t) - \eta_t g \\
        a &\leftarrow a + \mu_t (p - a) \text{ if } \mu_t \ne 1 \text{, else } p \\
        \eta_{t+1} &= \eta / (1 + \lambda \eta t)^{\alpha}, \quad
             \mu_{t+1} = 1 / \max(1, t - t_0) \qquad (\eta_1 = \eta,\ \mu_1 = 1)""",
    hyperparameters=[
        Hyper("lr", 1e-2, real(low=0), r"Learning rate :math:`\eta`."),
        Hyper("lambd", 1e-4, real(), r"Decay term :math:`\lambda`."),
        Hyper("alpha", 0.75, real(), r"Power :math:`\alpha` of the step size's decay."),
        Hyper("t0", 1e6, real(), r"Step :math:`t_0` at which averaging starts."),
        Hyper("weight_decay", 0.0, real(low=0), r"L2 penalty :math:`\lambda_w`, added to the gradient."),
    ],
    state=[State("eta", r":math:`\eta_t`, this step's step size", shape="scalar"),
           State("mu", r":math:`\mu_t`, this step's averaging weight", shape="scalar", init=1.0),
           State("ax", ":math:`a`, the averaged param")],
    # torch keeps eta and mu as float32 tensors: this step uses the values the last step stored
    # (eta = lr and mu = 1 when the param first gets a gradient), then stores the next ones,
    # computed in double from the step count and rounded to float32.
    per_array="""
        if step == 1.0:
            eta = <float>lr
            mu = 1.0
        eta_now = eta
        mu_now = mu
        decay_scale = 1.0 - lambd * eta_now
        eta_neg = -eta_now
        eta = <float>(lr / pow(1.0 + lambd * lr * step, alpha))
        mu = <float>(1.0 / max(1.0, step - t0))
    """,
    scalars=("decay_scale", "eta_neg", "mu_now"),
    switches=[L2_SWITCH, Switch("average", "mu_now != 1.0")],
    update=code(L2_DECAY, """
        p = p * decay_scale
        p = p + eta_neg * g
        {{if average}}
        ax = ax + (p - ax) * mu_now
        {{else}}
        ax = p
        {{endif}}
    """),
    weight=1,
    numpy_signature="lr, lambd, alpha, t0, weight_decay, *, maximize",
    torch_signature="lr, lambd, alpha, t0, weight_decay, foreach, maximize, differentiable, "
                    "capturable",
    torch_extras={"foreach": None, "differentiable": False, "capturable": False},
)

ALGORITHMS = (ASGD,)
