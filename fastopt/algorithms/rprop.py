"""Rprop: resilient backpropagation, per-element step sizes driven by the gradient's sign (Riedmiller
& Braun, 1993), in torch.optim's form (iRprop-: no step where the gradient changed sign)."""
from ._spec import Algorithm, Hyper, Rule, State, Switch, pair, real

RPROP = Algorithm(
    name="Rprop",
    torch_name="Rprop",
    title="Rprop, as ``torch.optim.Rprop``.",
    reference="Riedmiller & Braun, *A Direct Adaptive Method for Faster Backpropagation "
              "Learning: The RPROP Algorithm*, ICNN 1993.",
    formula=r"""
        s &= \operatorname{sign}(g\, g_{\text{prev}}) \\
        \delta &\leftarrow \operatorname{clamp}(\delta \cdot
             \{\eta_+ \text{ if } s > 0;\ \eta_- \text{ if } s < 0;\ 1 \text{ if } s = 0\},\
             \delta_{\min}, \delta_{\max}) \qquad (\delta = \eta \text{ before the first step}) \\
        g &\leftarrow 0 \text{ where } s < 0 \\
        p &\leftarrow p - \operatorname{sign}(g)\, \delta, \quad g_{\text{prev}} \leftarrow g""",
    hyperparameters=[
        Hyper("lr", 1e-2, real(low=0), r"Learning rate :math:`\eta`: every step size's first value."),
        Hyper("etas", (0.5, 1.2), pair(real(low=0, low_inclusive=False)),
              r":math:`(\eta_-, \eta_+)`, the factors that shrink and grow a step size "
              r"(:math:`0 < \eta_- < 1 < \eta_+`).", fields=("etaminus", "etaplus")),
        Hyper("step_sizes", (1e-6, 50), pair(real(low=0)),
              r":math:`(\delta_{\min}, \delta_{\max})`, the bounds of every step size.",
              fields=("step_size_min", "step_size_max")),
    ],
    rules=[Rule(lambda v: 0 < v["etaminus"] < 1 < v["etaplus"],
                "etas must satisfy 0 < etas[0] < 1 < etas[1]"),
           Rule(lambda v: v["step_size_min"] <= v["step_size_max"],
                "step_sizes must satisfy step_sizes[0] <= step_sizes[1]")],
    state=[State("prev", r":math:`g_{\text{prev}}`, the last gradient, zeroed where its sign flipped"),
           State("step_size", r":math:`\delta`, the per-element step size", init="lr", lazy=True)],
    per_array="",
    scalars=(),
    # torch fills step_size with the group's lr when the param first gets a gradient
    switches=[Switch("first", "first_use")],
    temporaries=("factor",),
    # torch's sequence: sign(g * prev), then factor[> 0] = etaplus, factor[< 0] = etaminus,
    # factor[== 0] = 1, clamp (NaN propagates), and g = 0 where factor == etaminus. torch.sign is
    # 0 for NaN: an element whose gradient is NaN keeps its step size and param this step.
    # p + (-sign(g)) * step_size is written as a choice between -step_size, step_size and
    # step_size * 0 (the same values, signed zeros and NaN included): with sign(g) of the g just
    # chosen, GCC turns the loop into branches and does not vectorize it (8.7 against 0.7 ns an
    # element; GCC 12 on an AMD EPYC, 2 cores, 2026).
    update="""
        {{if first}}
        step_size = lr
        {{endif}}
        factor = _sign0(g * prev)
        factor = _where(factor > 0, etaplus, factor)
        factor = _where(factor < 0, etaminus, factor)
        factor = _where(factor == 0, <{{T}}>1, factor)
        step_size = step_size * factor
        step_size = _where(step_size < step_size_min, step_size_min, step_size)
        step_size = _where(step_size_max < step_size, step_size_max, step_size)
        g = _where(factor == etaminus, <{{T}}>0, g)
        p = p - _where(g > 0, step_size, _where(g < 0, -step_size, step_size * <{{T}}>0))
        prev = g
    """,
    weight=2,
    numpy_signature="lr, etas, step_sizes, *, maximize",
    torch_signature="lr, etas, step_sizes, *, capturable, foreach, maximize, differentiable",
    torch_extras={"capturable": False, "foreach": None, "differentiable": False},
)

ALGORITHMS = (RPROP,)
