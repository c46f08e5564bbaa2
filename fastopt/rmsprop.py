"""RMSprop."""
from . import _validation as V
from .optimizer import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    For each param :math:`p` with gradient :math:`g` (elementwise):

    .. math::

        d &\leftarrow -g \text{ if maximize else } g \\
        d &\leftarrow d + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        s &\leftarrow \alpha s + (1 - \alpha) d^2 \\
        \bar g &\leftarrow \bar g + (1 - \alpha)(d - \bar g) \qquad \text{(centered only)} \\
        a &\leftarrow \sqrt{s - \bar g^2} + \epsilon \text{ if centered else } \sqrt{s} + \epsilon \\
        b &\leftarrow \mu b + d / a, \quad p \leftarrow p - \eta b \qquad \text{(if momentum } \mu > 0) \\
        p &\leftarrow p - \eta\, d / a \qquad \text{(otherwise)}

    Parameters
    ----------
    params : iterable of ndarray or of dict
        Arrays to optimize (float32/float64, C-contiguous, writeable), or param groups.
    lr : float, default 1e-2
        Learning rate :math:`\eta \ge 0`.
    alpha : float, default 0.99
        Smoothing constant :math:`\alpha \ge 0`.
    eps : float, default 1e-8
        :math:`\epsilon \ge 0`, added to the denominator after the square root.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda \ge 0`.
    momentum : float, default 0
        Momentum factor :math:`\mu \ge 0`.
    centered : bool, default False
        Normalize by an estimate of the gradient's variance instead of its second moment.
    maximize : bool, default False
        Maximize the objective instead of minimizing it.
    skip_nonfinite : bool, default False
        Skip a step whose gradients hold NaN/Inf, leaving params and state untouched (see
        :class:`fastopt.Optimizer`); by default non-finite values propagate as in torch.optim.

    State per param: ``step``, ``square_avg`` (:math:`s`), ``momentum_buffer`` (:math:`b`, when
    momentum > 0) and ``grad_avg`` (:math:`\bar g`, when centered).
    """

    _state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        lr = V.check_real("lr", group["lr"], low=0.0)
        alpha = V.check_real("alpha", group["alpha"], low=0.0)
        eps = V.check_real("eps", group["eps"], low=0.0)
        weight_decay = V.check_real("weight_decay", group["weight_decay"], low=0.0)
        momentum = V.check_real("momentum", group["momentum"], low=0.0)
        centered = V.check_bool("centered", group["centered"])
        maximize = V.check_bool("maximize", group["maximize"])
        return (lr, alpha, eps, weight_decay, momentum, centered, maximize)

    def _bucket_step(self, bucket):
        return bucket.step_rmsprop

    def _required_state(self, group):
        names = ("square_avg",)
        if group["momentum"] > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names
