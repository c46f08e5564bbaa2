"""Stochastic gradient descent with momentum, dampening and Nesterov momentum."""
from . import _validation as V
from .optimizer import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent, as ``torch.optim.SGD``.

    For each param :math:`p` with gradient :math:`g` (elementwise, in the param's dtype):

    .. math::

        d &\leftarrow -g \text{ if maximize else } g \\
        d &\leftarrow d + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        b &\leftarrow d \text{ on the first step, else } \mu b + (1 - \tau) d
             \qquad \text{(if momentum } \mu \ne 0) \\
        d &\leftarrow d + \mu b \text{ if nesterov else } b \\
        p &\leftarrow p - \eta d

    Parameters
    ----------
    params : iterable of ndarray or of dict
        Arrays to optimize (float32/float64, C-contiguous, writeable), or param groups.
    lr : float, default 1e-3
        Learning rate :math:`\eta \ge 0`.
    momentum : float, default 0
        Momentum factor :math:`\mu \ge 0`.
    dampening : float, default 0
        Dampening :math:`\tau` for momentum.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda \ge 0`, added to the gradient.
    nesterov : bool, default False
        Nesterov momentum (needs momentum > 0 and dampening = 0).
    maximize : bool, default False
        Maximize the objective instead of minimizing it.
    skip_nonfinite : bool, default False
        Skip a step whose gradients hold NaN/Inf, leaving params and state untouched (see
        :class:`fastopt.Optimizer`); by default non-finite values propagate as in torch.optim.

    State per param: ``momentum_buffer`` (when momentum is used).
    """

    _state_names = ("momentum_buffer",)
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        lr = V.check_real("lr", group["lr"], low=0.0)
        momentum = V.check_real("momentum", group["momentum"], low=0.0)
        dampening = V.check_real("dampening", group["dampening"])
        weight_decay = V.check_real("weight_decay", group["weight_decay"], low=0.0)
        nesterov = V.check_bool("nesterov", group["nesterov"])
        maximize = V.check_bool("maximize", group["maximize"])
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        return (lr, momentum, dampening, weight_decay, nesterov, maximize)

    def _bucket_step(self, bucket):
        return bucket.step_sgd

    def _has_state(self, bucket, k):
        return bool(bucket.initialized[k])

    def _mark_loaded(self, bucket, k, entry):
        if "momentum_buffer" in entry:
            bucket.initialized[k] = 1
