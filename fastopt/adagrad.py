"""Adagrad."""
from . import _validation as V
from .optimizer import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``.

    For each param :math:`p` with gradient :math:`g`, at step :math:`t` (elementwise):

    .. math::

        d &\leftarrow -g \text{ if maximize else } g \\
        d &\leftarrow d + \lambda p \qquad \text{(if weight\_decay } \lambda \ne 0) \\
        \tilde\eta &= \eta / (1 + (t - 1)\,\delta) \\
        s &\leftarrow s + d^2 \\
        p &\leftarrow p - \tilde\eta\, d / (\sqrt{s} + \epsilon)

    with :math:`s` starting at ``initial_accumulator_value``.

    Parameters
    ----------
    params : iterable of ndarray or of dict
        Arrays to optimize (float32/float64, C-contiguous, writeable), or param groups.
    lr : float, default 1e-2
        Learning rate :math:`\eta \ge 0`.
    lr_decay : float, default 0
        :math:`\delta \ge 0`.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda \ge 0`.
    initial_accumulator_value : float, default 0
        Starting value of :math:`s` (:math:`\ge 0`).
    eps : float, default 1e-10
        :math:`\epsilon \ge 0`, added after the square root.
    maximize : bool, default False
        Maximize the objective instead of minimizing it.
    skip_nonfinite : bool, default False
        Skip a step whose gradients hold NaN/Inf, leaving params and state untouched (see
        :class:`fastopt.Optimizer`); by default non-finite values propagate as in torch.optim.

    State per param (from construction on, as in torch): ``step`` and ``sum`` (:math:`s`).
    """

    _state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, *, maximize=False, skip_nonfinite=False):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        lr = V.check_real("lr", group["lr"], low=0.0)
        lr_decay = V.check_real("lr_decay", group["lr_decay"], low=0.0)
        weight_decay = V.check_real("weight_decay", group["weight_decay"], low=0.0)
        eps = V.check_real("eps", group["eps"], low=0.0)
        initial = V.check_real("initial_accumulator_value", group["initial_accumulator_value"], low=0.0)
        maximize = V.check_bool("maximize", group["maximize"])
        return (lr, lr_decay, weight_decay, eps, initial, maximize)

    def _bucket_step(self, bucket):
        return bucket.step_adagrad

    def _init_group_state(self, group, buckets):
        for bucket in buckets:
            bucket.arena("sum", group["initial_accumulator_value"])

    def _has_state(self, bucket, k):
        return True

    def _state_fill(self, name, group):
        return group["initial_accumulator_value"]

    def _required_state(self, group):
        return ("sum",)
