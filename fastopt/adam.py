"""Adam and AdamW."""
from . import _validation as V
from .optimizer import Optimizer


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam``.

    For each param :math:`p` with gradient :math:`g`, at step :math:`t` (elementwise):

    .. math::

        d &\leftarrow -g \text{ if maximize else } g \\
        d &\leftarrow d + \lambda p \qquad \text{(L2 weight decay; AdamW instead does }
             p \leftarrow p (1 - \eta\lambda)) \\
        m &\leftarrow m + (1 - \beta_1)(d - m) \\
        v &\leftarrow \beta_2 v + (1 - \beta_2) d^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ if amsgrad else } v \\
        p &\leftarrow p - \frac{\eta}{1 - \beta_1^t} \cdot
             \frac{m}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}

    ``eps`` is added after dividing :math:`\sqrt{\hat v}` by the square root of the second bias
    correction, exactly where torch adds it.

    Parameters
    ----------
    params : iterable of ndarray or of dict
        Arrays to optimize (float32/float64, C-contiguous, writeable), or param groups.
    lr : float, default 1e-3
        Learning rate :math:`\eta \ge 0`.
    betas : (float, float), default (0.9, 0.999)
        :math:`(\beta_1, \beta_2)`, each in [0, 1).
    eps : float, default 1e-8
        :math:`\epsilon \ge 0`, for numerical stability.
    weight_decay : float, default 0
        :math:`\lambda \ge 0`: an L2 penalty added to the gradient (Adam) or decoupled (AdamW).
    amsgrad : bool, default False
        Use the running maximum of :math:`v` (AMSGrad).
    maximize : bool, default False
        Maximize the objective instead of minimizing it.
    skip_nonfinite : bool, default False
        Skip a step whose gradients hold NaN/Inf, leaving params and state untouched (see
        :class:`fastopt.Optimizer`); by default non-finite values propagate as in torch.optim.
    decoupled_weight_decay : bool, default False
        Decay the weights directly, as AdamW does (``AdamW`` sets it).

    State per param: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`) and, with
    amsgrad, ``max_exp_avg_sq`` (:math:`\hat v`).
    """

    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, skip_nonfinite=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        lr = V.check_real("lr", group["lr"], low=0.0)
        beta1, beta2 = V.check_betas("betas", group["betas"])
        eps = V.check_real("eps", group["eps"], low=0.0)
        weight_decay = V.check_real("weight_decay", group["weight_decay"], low=0.0)
        amsgrad = V.check_bool("amsgrad", group["amsgrad"])
        maximize = V.check_bool("maximize", group["maximize"])
        decoupled = V.check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])
        return (lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled)

    def _bucket_step(self, bucket):
        return bucket.step_adam

    def _required_state(self, group):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())


class AdamW(Adam):
    r"""AdamW (Adam with decoupled weight decay), as ``torch.optim.AdamW``.

    The Adam update of :class:`Adam`, with the weight decay applied to the param itself before it:

    .. math::

        p \leftarrow p\,(1 - \eta\lambda), \qquad \text{then the Adam step without an L2 term.}

    Parameters are those of :class:`Adam`; ``weight_decay`` defaults to ``1e-2``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, skip_nonfinite=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         skip_nonfinite=skip_nonfinite)
