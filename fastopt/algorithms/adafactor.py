"""Adafactor: second moments kept as row and column statistics (Shazeer & Stern, 2018), as
torch.optim.Adafactor defines it (relative step size, update clipping, no first moment)."""
from ._spec import Algorithm, Hyper, State, Switch, real, tuple_of


def _row_shape(shape):
    return shape[:-1] + (1,) if len(shape) >= 2 else None


def _col_shape(shape):
    return shape[:-2] + (1, shape[-1]) if len(shape) >= 2 else None


def _vector_shape(shape):
    return shape if len(shape) < 2 else None


ADAFACTOR = Algorithm(
    name="Adafactor",
    torch_name="Adafactor",
    title="Adafactor, as ``torch.optim.Adafactor``.",
    reference="Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, "
              "ICML 2018.",
    formula=r"""
        \beta_t &= t^{c}\ (c = \text{beta2\_decay}), \quad
             \rho_t = \min(\eta, 1 / \sqrt t), \quad
             \alpha_t = \max(\epsilon_2, \operatorname{RMS}(p))\, \rho_t \\
        p &\leftarrow p\,(1 - \eta\lambda) \\
        R &\leftarrow R + \beta_t (\operatorname{mean}_{\text{cols}} g^2 - R), \quad
             C \leftarrow C + \beta_t (\operatorname{mean}_{\text{rows}} g^2 - C), \quad
             \hat v = R\, C / \max(\operatorname{mean}(R), \epsilon_1)
             \qquad \text{(2 or more dims, over the last two)} \\
        v &\leftarrow v + \beta_t (g^2 - v), \quad \hat v = v \qquad \text{(vectors)} \\
        u &= g / \sqrt{\max(\hat v, \epsilon_1^2)}, \quad
             p \leftarrow p - \frac{\alpha_t}{\max(1, \operatorname{RMS}(u) / d)}\, u""",
    hyperparameters=[
        Hyper("lr", 1e-2, real(low=0), r"Learning rate :math:`\eta` (an upper bound of the relative "
              r"step size :math:`\rho_t`)."),
        Hyper("beta2_decay", -0.8, real(high=0),
              r":math:`c`: the second moment's averaging weight is :math:`t^c`."),
        Hyper("eps", (None, 1e-3), tuple_of(real(low=0, optional=True), real(low=0)),
              r":math:`(\epsilon_1, \epsilon_2)`: the floor of the second-moment estimate (None: "
              r"the machine epsilon of the param's dtype) and of the param's RMS.",
              fields=("eps1", "eps2")),
        Hyper("d", 1.0, real(low=1), r"Clipping threshold :math:`d` of the update's RMS."),
        Hyper("weight_decay", 0.0, real(low=0), r"Decoupled weight decay :math:`\lambda`."),
    ],
    state=[State("row_var", r":math:`R`, the rows' mean squares", shape=_row_shape,
                 shape_doc="shape ``p.shape[:-1] + (1,)``, for params of 2 or more dims"),
           State("col_var", r":math:`C`, the columns' mean squares", shape=_col_shape,
                 shape_doc="shape ``p.shape[:-2] + (1, p.shape[-1])``, for params of 2 or more dims"),
           State("variance", r":math:`v`", shape=_vector_shape,
                 shape_doc="the param's shape, for params of fewer than 2 dims")],
    # The driver (fastopt/_core/_driver_adafactor.pxi) computes RMS(p), the row and column sums of
    # squares, RMS(u) and coef = -alpha_t / max(1, RMS(u) / d), rounding where torch rounds (each
    # norm to the param's dtype), with its reductions in float64 in a fixed order.
    per_array="""
        w = pow(step, beta2_decay)
        rho = min(lr, 1.0 / pow(step, 0.5))
        decay_scale = 1.0 - lr * weight_decay
        eps1_value = eps1 if eps1 == eps1 else {{if T == "float"}}FLT_EPSILON{{else}}DBL_EPSILON{{endif}}
        eps1_sq = eps1_value * eps1_value
    """,
    scalars=("w", "rho", "decay_scale", "eps1_value", "eps1_sq", "coef"),
    driver="AdafactorBucket",
    driver_scalars=("coef",),
    # moment_norm (vectors): v <- lerp(v, g^2, w), then u into the scratch buffer p;
    # norm (matrices, a row at a time): u into p, with the row's estimate in "variance";
    # apply: the update; apply_u: the update with u kept from pass B (in g, gmul 1);
    # factor: R or C (in p) <- lerp toward the mean squares (in g).
    phases=("moment_norm", "norm", "apply", "apply_u", "factor"),
    switches=[Switch("lerp", "<{{T}}>w >= 0.5", ("low", "high")),
              Switch("decay", "weight_decay != 0")],
    temporaries=("u",),
    update="""
        {{if phase == "factor"}}
        p = _lerp_{{lerp}}(p, g, w)
        {{elif phase == "apply_u"}}
        {{if decay}}
        p = p * decay_scale
        {{endif}}
        p = p + coef * g
        {{else}}
        {{if phase == "moment_norm"}}
        variance = _lerp_{{lerp}}(variance, g * g, w)
        {{endif}}
        u = (<{{T}}>1 / _sqrt(_where(variance < eps1_sq, eps1_sq, variance))) * g
        {{if phase == "apply"}}
        {{if decay}}
        p = p * decay_scale
        {{endif}}
        p = p + coef * u
        {{else}}
        p = u
        {{endif}}
        {{endif}}
    """,
    weight=3,
    numpy_signature="lr, beta2_decay, eps, d, weight_decay, *, maximize",
    torch_signature="lr, beta2_decay, eps, d, weight_decay, *, foreach, maximize",
    torch_extras={"foreach": None},
    torch_rejects_complex=True,
)

ALGORITHMS = (ADAFACTOR,)
