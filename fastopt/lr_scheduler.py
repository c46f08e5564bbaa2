"""Learning-rate schedulers for fastopt optimizers.

Pure-Python ports of ``torch.optim.lr_scheduler`` with the same class names, constructor
arguments, defaults and stepping semantics. A scheduler acts on any object that has a
``param_groups`` list of dicts (every fastopt optimizer does): it writes ``group["lr"]`` (and, for
:class:`OneCycleLR`, ``group["momentum"]`` or ``group["betas"][0]``), and the optimizer reads those
values at its next ``step``.

The chainable schedulers update ``group["lr"]`` recursively from its current value, exactly as
torch does, so that (a) they compose with other schedulers and with manual changes of the lr, and
(b) the sequence of learning rates is the same floating-point sequence torch produces. The closed
forms in the docstrings are what the recursions compute up to rounding.

Differences from torch, all deliberate:

* ``step(epoch)`` (deprecated in torch since 1.4) is not offered; ``step()`` takes no epoch.
* The optimizer's ``step`` is not monkey-patched to warn about calling the scheduler first.
* Arguments torch would accept but then fail on (or silently misuse) are rejected up front with a
  ``ValueError``/``TypeError`` naming the argument: a non-positive ``step_size``/``T_max``/
  ``total_iters``, decreasing ``milestones``, negative ``patience``/``cooldown``, a non-callable
  ``lr_lambda``.
* ``state_dict()`` returns copies, never references to the scheduler's live lists.
* torch's ``CosineAnnealingLR`` has a closed-form branch for a first ``step(epoch)``; without
  ``step(epoch)`` it cannot be reached, so it is left out.
"""

import copy
import math
import numbers
import types
import warnings
from bisect import bisect_right
from collections import Counter

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "StepLR",
    "MultiStepLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "CosineAnnealingLR",
    "ReduceLROnPlateau",
    "OneCycleLR",
]


def _require_param_groups(optimizer):
    if not hasattr(optimizer, "param_groups"):
        raise TypeError(
            f"optimizer must be an optimizer with a `param_groups` attribute, "
            f"got {type(optimizer).__name__}"
        )


def _require_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _require_non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")


def _require_last_epoch(last_epoch):
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral):
        raise TypeError(f"last_epoch must be an int, got {type(last_epoch).__name__}")
    if last_epoch < -1:
        raise ValueError(f"last_epoch must be -1 (start) or a non-negative index, got {last_epoch}")


def _format_param(name, optimizer, param):
    """One value per param group: a list/tuple is checked for length, a scalar is repeated."""
    if isinstance(param, (list, tuple)):
        if len(param) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(param)} values, param_groups has {len(optimizer.param_groups)}."
            )
        return list(param)
    return [param] * len(optimizer.param_groups)


def _param_groups_val_list(optimizer, key):
    return [group[key] for group in optimizer.param_groups]


def _hyperparameter_names(optimizer):
    """Names of the optimizer's hyperparameters: its ``defaults`` if it has them, else group keys."""
    defaults = getattr(optimizer, "defaults", None)
    if defaults is not None:
        return set(defaults)
    return {key for group in optimizer.param_groups for key in group if key != "params"}


class LRScheduler:
    """Base class of the epoch-indexed learning-rate schedulers.

    A subclass implements :meth:`get_lr`, which returns the learning rate of every param group at
    ``last_epoch``; :meth:`step` advances ``last_epoch`` by one and writes those values into
    ``optimizer.param_groups``. Constructing a scheduler performs one such step (to epoch 0).

    Parameters
    ----------
    optimizer : object
        Anything with a ``param_groups`` list of dicts holding an ``"lr"``, e.g. a fastopt
        optimizer.
    last_epoch : int, default -1
        Index of the last epoch seen. ``-1`` starts the schedule: every group's current ``lr`` is
        saved as its ``"initial_lr"`` (unless already present), and ``base_lrs`` are those values.
        Any other value resumes a schedule and requires ``"initial_lr"`` in every group.

    Attributes
    ----------
    optimizer : object
    base_lrs : list of float
        ``group["initial_lr"]`` of each group.
    last_epoch : int
        Number of :meth:`step` calls since the schedule started (0 right after construction).

    Notes
    -----
    Constructing a scheduler overwrites the optimizer's learning rates. When restoring a
    checkpoint, construct the scheduler before restoring the optimizer's param groups.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import LRScheduler
    >>> class HalvingLR(LRScheduler):          # halve the initial lr every epoch
    ...     def get_lr(self):
    ...         return [base / 2 ** self.last_epoch for base in self.base_lrs]
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> sched = HalvingLR(opt)
    >>> for epoch in range(3):
    ...     _ = opt.step([np.ones(3)])
    ...     sched.step()
    >>> sched.last_epoch, sched.get_last_lr(), opt.param_groups[0]["lr"]
    (3, [0.125], 0.125)
    """

    _get_lr_called_within_step = False
    _is_initial = False

    def __init__(self, optimizer, last_epoch=-1):
        _require_param_groups(optimizer)
        _require_last_epoch(last_epoch)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for index, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{index}] when "
                        f"resuming a scheduler with last_epoch={last_epoch}; restore the "
                        "optimizer's param groups from the checkpoint, or start with last_epoch=-1"
                    )
        self.base_lrs = _param_groups_val_list(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        # Some recursions must not advance the lr on the constructor's step when resuming
        # (last_epoch > -1); they test _is_initial, as in torch.
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self):
        """Return the scheduler's state: every attribute except the optimizer, copied.

        Returns
        -------
        dict
        """
        return {
            key: copy.deepcopy(value) for key, value in self.__dict__.items() if key != "optimizer"
        }

    def load_state_dict(self, state_dict):
        """Restore the state returned by :meth:`state_dict`.

        The learning rates themselves live in the optimizer's param groups; restore those too
        (after constructing the scheduler) to resume a chainable schedule.

        Parameters
        ----------
        state_dict : dict
        """
        self.__dict__.update(copy.deepcopy(state_dict))

    def get_last_lr(self):
        """Learning rate of each param group as set by the most recent step.

        Returns
        -------
        list of float
        """
        return self._last_lr

    def get_lr(self):
        """Learning rate of each param group at ``last_epoch``.

        Called by :meth:`step`; outside a step, use :meth:`get_last_lr` (chainable schedulers
        compute from the current ``group["lr"]``, so calling this directly does not return the
        current learning rates).
        """
        raise NotImplementedError

    def _warn_if_called_outside_step(self):
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use `get_last_lr()`.",
                UserWarning,
                stacklevel=3,
            )

    def step(self):
        """Advance ``last_epoch`` by one and set every group's ``lr`` to its scheduled value.

        Call it after the optimizer's ``step``.
        """
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch=None):
        # epoch is given only by SequentialLR when it switches to the next scheduler: torch then
        # restarts that scheduler from its closed form at epoch 0, where one exists.
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(
                f"the scheduler computed {len(values)} learning rates for {len(groups)} param groups"
            )
        for group, lr in zip(groups, values):
            group["lr"] = lr
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")


class LambdaLR(LRScheduler):
    r"""Set each group's learning rate to its initial lr times a function of the epoch.

    .. math:: \eta_t = \eta_0 \cdot \lambda(t)

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    lr_lambda : callable or list of callables
        ``lr_lambda(epoch) -> float`` multiplicative factor, one for all groups or one per group.
    last_epoch : int, default -1

    Notes
    -----
    :meth:`state_dict` saves the ``__dict__`` of callable *objects* among the lambdas; plain
    functions and lambdas are not saved (``None`` in their place), as in torch.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import LambdaLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=0.5)
    >>> sched = LambdaLR(opt, lr_lambda=lambda epoch: 1 / (1 + epoch))
    >>> lrs = []
    >>> for epoch in range(4):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
    ...     sched.step()
    >>> lrs
    [0.5, 0.25, 0.1667, 0.125]
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _require_param_groups(optimizer)
        self.optimizer = optimizer
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(optimizer.param_groups):
                raise ValueError(
                    f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}"
                )
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda must be callable, got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def state_dict(self):
        """Scheduler state; ``lr_lambdas`` holds each callable object's ``__dict__`` or ``None``."""
        state = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "lr_lambdas")
        }
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy()
            for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict):
        """Restore the state returned by :meth:`state_dict` (lambdas' saved attributes included)."""
        saved_lambdas = state_dict["lr_lambdas"]
        self.__dict__.update(
            {key: copy.deepcopy(value) for key, value in state_dict.items() if key != "lr_lambdas"}
        )
        for fn, saved in zip(self.lr_lambdas, saved_lambdas):
            if saved is not None:
                fn.__dict__.update(saved)

    def get_lr(self):
        self._warn_if_called_outside_step()
        return [
            base_lr * lr_lambda(self.last_epoch)
            for lr_lambda, base_lr in zip(self.lr_lambdas, self.base_lrs)
        ]


class StepLR(LRScheduler):
    r"""Decay each group's learning rate by ``gamma`` every ``step_size`` epochs.

    .. math:: \eta_t = \eta_0 \cdot \gamma^{\lfloor t / \text{step\_size} \rfloor}

    computed recursively (``lr *= gamma`` at every non-zero multiple of ``step_size``), so it
    composes with other changes to the lr.

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    step_size : int
        Period of the decay, in epochs; positive.
    gamma : float, default 0.1
        Multiplicative factor of the decay.
    last_epoch : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import StepLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> sched = StepLR(opt, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for epoch in range(6):
    ...     lrs.append(opt.param_groups[0]["lr"])
    ...     sched.step()
    >>> lrs
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        _require_positive_int("step_size", step_size)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_if_called_outside_step()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    r"""Decay each group's learning rate by ``gamma`` at each milestone epoch.

    .. math:: \eta_t = \eta_0 \cdot \gamma^{\,|\{m \in \text{milestones} : m \le t\}|}

    A milestone listed ``n`` times decays by :math:`\gamma^n` (as in torch).

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    milestones : iterable of int
        Epoch indices, non-decreasing.
    gamma : float, default 0.1
        Multiplicative factor of the decay.
    last_epoch : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import MultiStepLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> sched = MultiStepLR(opt, milestones=[2, 5], gamma=0.1)
    >>> lrs = []
    >>> for epoch in range(7):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 6))
    ...     sched.step()
    >>> lrs
    [1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01]
    """

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        milestones = list(milestones)
        for milestone in milestones:
            if isinstance(milestone, bool) or not isinstance(milestone, numbers.Integral):
                raise TypeError(f"milestones must be ints, got {milestone!r}")
        if any(later < earlier for earlier, later in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_if_called_outside_step()
        if self.last_epoch not in self.milestones:
            return _param_groups_val_list(self.optimizer, "lr")
        decay = self.gamma ** self.milestones[self.last_epoch]
        return [group["lr"] * decay for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        milestones = sorted(self.milestones.elements())
        return [
            base_lr * self.gamma ** bisect_right(milestones, self.last_epoch)
            for base_lr in self.base_lrs
        ]


class LinearLR(LRScheduler):
    r"""Scale each group's learning rate by a factor that changes linearly (e.g. a warm-up).

    .. math:: \eta_t = \eta_0 \left(f_s + (f_e - f_s)\,\frac{\min(t, T)}{T}\right)

    with :math:`f_s` = ``start_factor``, :math:`f_e` = ``end_factor``, :math:`T` = ``total_iters``;
    computed recursively, each step multiplying the lr by
    :math:`1 + (f_e - f_s) / (T f_s + (t - 1)(f_e - f_s))` for :math:`1 \le t \le T`.

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    start_factor : float, default 1/3
        Factor at epoch 0, in (0, 1].
    end_factor : float, default 1.0
        Factor from epoch ``total_iters`` on, in [0, 1].
    total_iters : int, default 5
        Number of epochs over which the factor moves; positive.
    last_epoch : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import LinearLR
    >>> opt = fastopt.Adam([np.zeros(3)], lr=1e-3)
    >>> sched = LinearLR(opt, start_factor=0.25, total_iters=3)    # a warm-up over 3 epochs
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 6))
    ...     sched.step()
    >>> lrs
    [0.00025, 0.0005, 0.00075, 0.001, 0.001]
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor (start_factor) expected to be greater than 0 and "
                f"less or equal to 1, got {start_factor}."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(
                f"Ending multiplicative factor (end_factor) expected to be between 0 and 1, got {end_factor}."
            )
        _require_positive_int("total_iters", total_iters)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_if_called_outside_step()
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _param_groups_val_list(self.optimizer, "lr")
        ratio = 1.0 + (self.end_factor - self.start_factor) / (
            self.total_iters * self.start_factor
            + (self.last_epoch - 1) * (self.end_factor - self.start_factor)
        )
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [
            base_lr
            * (
                self.start_factor
                + (self.end_factor - self.start_factor)
                * min(self.total_iters, self.last_epoch)
                / self.total_iters
            )
            for base_lr in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    r"""Decay each group's learning rate by ``gamma`` every epoch.

    .. math:: \eta_t = \eta_0 \cdot \gamma^t

    computed recursively (``lr *= gamma`` each step).

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    gamma : float
        Multiplicative factor of the decay.
    last_epoch : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import ExponentialLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> sched = ExponentialLR(opt, gamma=0.5)
    >>> lrs = []
    >>> for epoch in range(4):
    ...     lrs.append(opt.param_groups[0]["lr"])
    ...     sched.step()
    >>> lrs
    [1.0, 0.5, 0.25, 0.125]
    """

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_if_called_outside_step()
        # When resuming, the constructor's step must not decay the restored lr once more.
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Anneal each group's learning rate along a cosine from its initial lr to ``eta_min``.

    .. math::
        \eta_t = \eta_{\min} + \tfrac12(\eta_{\max} - \eta_{\min})
                 \left(1 + \cos\frac{\pi t}{T_{\max}}\right)

    with :math:`\eta_{\max}` the initial lr. As in torch it is computed recursively,

    .. math::
        \eta_t = \eta_{\min} + (\eta_{t-1} - \eta_{\min})
                 \frac{1 + \cos(\pi t / T_{\max})}{1 + \cos(\pi (t-1) / T_{\max})},

    and past :math:`T_{\max}` it keeps following the cosine (rising again; no restart), the step
    out of each minimum using
    :math:`\eta_t = \eta_{t-1} + \tfrac12(\eta_{\max} - \eta_{\min})(1 - \cos(\pi / T_{\max}))`
    because the ratio above would be 0/0 there.

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    T_max : int
        Half-period in epochs (epochs to reach ``eta_min``); positive.
    eta_min : float, default 0.0
        Minimum learning rate.
    last_epoch : int, default -1

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import CosineAnnealingLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> sched = CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
    ...     sched.step()
    >>> lrs
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        _require_positive_int("T_max", T_max)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        self._warn_if_called_outside_step()
        groups = self.optimizer.param_groups
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [
                group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                for base_lr, group in zip(self.base_lrs, groups)
            ]
        return [
            (1 + math.cos(math.pi * self.last_epoch / self.T_max))
            / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
            * (group["lr"] - self.eta_min)
            + self.eta_min
            for group in groups
        ]

    def _get_closed_form_lr(self):
        return [
            self.eta_min
            + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
            for base_lr in self.base_lrs
        ]


class SequentialLR(LRScheduler):
    r"""Run several schedulers one after another, switching at the given milestones.

    With milestones :math:`m_1 < \dots < m_{k}`, scheduler :math:`i` drives epochs
    :math:`[m_i, m_{i+1})` (with :math:`m_0 = 0`). On switching, the next scheduler restarts at its
    own epoch 0 from the groups' ``initial_lr``; e.g. ``LinearLR`` warm-up then
    ``CosineAnnealingLR``:

    .. math::
        \eta_t = \begin{cases} \text{warmup}(t) & t < m_1 \\
                               \text{cosine}(t - m_1) & t \ge m_1 \end{cases}

    Parameters
    ----------
    optimizer : object
        The optimizer every scheduler acts on.
    schedulers : list of LRScheduler
        At least one; all built on ``optimizer``; no :class:`ReduceLROnPlateau`.
    milestones : list of int
        Increasing epochs at which to switch; one fewer than ``schedulers``.
    last_epoch : int, default -1

    Notes
    -----
    :meth:`state_dict` includes the state of every wrapped scheduler.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import ExponentialLR, LinearLR, SequentialLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> warmup = LinearLR(opt, start_factor=0.5, total_iters=2)
    >>> decay = ExponentialLR(opt, gamma=0.5)
    >>> sched = SequentialLR(opt, schedulers=[warmup, decay], milestones=[2])
    >>> lrs = []
    >>> for epoch in range(5):
    ...     lrs.append(opt.param_groups[0]["lr"])
    ...     sched.step()
    >>> lrs
    [0.5, 0.75, 1.0, 0.5, 0.25]
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _require_param_groups(optimizer)
        _require_last_epoch(last_epoch)
        if len(schedulers) < 1:
            raise ValueError(
                f"{type(self).__name__} expects at least one scheduler in schedulers, but got none."
            )
        for index, scheduler in enumerate(schedulers):
            if not hasattr(scheduler, "optimizer"):
                raise TypeError(
                    f"{type(self).__name__}: schedulers[{index}] should have `optimizer` as its attribute."
                )
            if isinstance(scheduler, ReduceLROnPlateau):
                raise ValueError(
                    f"{type(self).__name__} does not support `ReduceLROnPlateau` (schedulers[{index}]) "
                    "as its `step` needs a metric."
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"{type(self).__name__} expects all schedulers to belong to the same optimizer, "
                    f"but schedulers[{index}] ({type(scheduler).__name__}) has a different one."
                )
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more than the "
                f"number of milestone points, but got number of schedulers {len(schedulers)} and the "
                f"number of milestones to be equal to {len(milestones)}"
            )
        if any(later <= earlier for earlier, later in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be increasing, got {milestones}")

        self._schedulers = list(schedulers)
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer

        # Each wrapped scheduler already stepped once when it was built; undo that, then start
        # only the one that owns epoch 0.
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        first = bisect_right(self._milestones, 0)
        self._schedulers[first]._initial_step()
        self._last_lr = self._schedulers[first].get_last_lr()

    def recursive_undo(self, sched=None):
        """Step back ``last_epoch`` of every (nested) wrapped scheduler by one."""
        scheduler = self if sched is None else sched
        if hasattr(scheduler, "_schedulers"):
            for inner in scheduler._schedulers:
                self.recursive_undo(inner)
        elif hasattr(scheduler, "last_epoch"):
            scheduler.last_epoch -= 1

    def step(self):
        """Advance one epoch, stepping the scheduler that owns it (restarting it at its milestone)."""
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self):
        """Scheduler state, with the wrapped schedulers' states under ``"_schedulers"``."""
        state = {
            key: copy.deepcopy(value)
            for key, value in self.__dict__.items()
            if key not in ("optimizer", "_schedulers")
        }
        state["_schedulers"] = [scheduler.state_dict() for scheduler in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        """Restore the state returned by :meth:`state_dict`, wrapped schedulers included."""
        self.__dict__.update(
            {key: copy.deepcopy(value) for key, value in state_dict.items() if key != "_schedulers"}
        )
        for scheduler, saved in zip(self._schedulers, state_dict["_schedulers"]):
            scheduler.load_state_dict(saved)


class ReduceLROnPlateau(LRScheduler):
    r"""Reduce the learning rate when a metric has stopped improving.

    ``step(metric)`` counts consecutive "bad" epochs, in which the metric does not beat the best
    seen so far by the threshold; once that count exceeds ``patience``, every group's lr becomes

    .. math:: \eta \leftarrow \max(\eta \cdot \text{factor},\ \text{min\_lr})

    (skipped if it would change by ``eps`` or less), and the next ``cooldown`` epochs are not
    counted. "Beats" means, with best :math:`b` and threshold :math:`\tau`:

    ==========  ===========================  ======================
    mode        ``threshold_mode='rel'``     ``threshold_mode='abs'``
    ==========  ===========================  ======================
    ``'min'``   :math:`a < b (1 - \tau)`     :math:`a < b - \tau`
    ``'max'``   :math:`a > b (1 + \tau)`     :math:`a > b + \tau`
    ==========  ===========================  ======================

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups``.
    mode : {'min', 'max'}, default 'min'
        Whether the metric should decrease or increase.
    factor : float, default 0.1
        Multiplier of the lr on reduction; in [0, 1).
    patience : int, default 10
        Bad epochs tolerated before reducing; non-negative.
    threshold : float, default 1e-4
        Least improvement that counts.
    threshold_mode : {'rel', 'abs'}, default 'rel'
    cooldown : int, default 0
        Epochs after a reduction during which bad epochs are not counted; non-negative.
    min_lr : float or list of float, default 0
        Lower bound of the lr, for all groups or per group.
    eps : float, default 1e-8
        Reductions smaller than this are skipped.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import ReduceLROnPlateau
    >>> opt = fastopt.SGD([np.zeros(3)], lr=1.0)
    >>> sched = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    >>> lrs = []
    >>> for val_loss in [1.0, 0.8, 0.8, 0.8, 0.8, 0.8]:    # stops improving after the 2nd epoch
    ...     sched.step(val_loss)
    ...     lrs.append(opt.param_groups[0]["lr"])
    >>> lrs
    [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(
        self,
        optimizer,
        mode="min",
        factor=0.1,
        patience=10,
        threshold=1e-4,
        threshold_mode="rel",
        cooldown=0,
        min_lr=0,
        eps=1e-8,
    ):
        if factor >= 1.0:
            raise ValueError(f"Factor should be < 1.0 (factor={factor}).")
        if factor < 0:
            raise ValueError(f"factor must be non-negative, got {factor}")
        self.factor = factor
        _require_param_groups(optimizer)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        _require_non_negative_int("patience", patience)
        _require_non_negative_int("cooldown", cooldown)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _param_groups_val_list(optimizer, "lr")
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self):
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics):
        """Record this epoch's metric and reduce the lr if it has plateaued.

        Parameters
        ----------
        metrics : float
            The monitored quantity (anything ``float()`` accepts, e.g. a 0-d array).
        """
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({len(groups)}) differs from "
                    f"when `ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), usually due to "
                    "a new param group being added to the optimizer. Please modify the `min_lrs` "
                    "field to match the length of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    @property
    def in_cooldown(self):
        """True while bad epochs are being ignored after a reduction."""
        return self.cooldown_counter > 0

    def _is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode, threshold, threshold_mode):
        if mode not in {"min", "max"}:
            raise ValueError(f"mode {mode!r} is unknown! (expected 'min' or 'max')")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError(
                f"threshold mode (threshold_mode) {threshold_mode!r} is unknown! (expected 'rel' or 'abs')"
            )
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict):
        """Restore the state returned by :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy: warm the lr up to ``max_lr``, then anneal it far below its start.

    Per group, with :math:`\eta_{\max}` = ``max_lr``, initial lr
    :math:`\eta_0 = \eta_{\max} / \text{div\_factor}`, final lr
    :math:`\eta_{\min} = \eta_0 / \text{final\_div\_factor}`, :math:`N` = ``total_steps`` and
    :math:`p` = ``pct_start``, step :math:`t` lies in phase :math:`k` spanning steps
    :math:`[s_k, e_k]` and the lr is

    .. math::
        \eta_t = \text{anneal}(\text{start}_k, \text{end}_k, (t - s_k) / (e_k - s_k)),

    with ``'cos'``: :math:`\text{anneal}(a, b, x) = b + \tfrac{a - b}{2}(1 + \cos \pi x)` and
    ``'linear'``: :math:`\text{anneal}(a, b, x) = a + (b - a) x`. Two phases (default):
    :math:`\eta_0 \to \eta_{\max}` over :math:`[0, pN - 1]`, then :math:`\eta_{\max} \to \eta_{\min}`
    up to :math:`N - 1`. With ``three_phase``: :math:`\eta_0 \to \eta_{\max}` over
    :math:`[0, pN - 1]`, :math:`\eta_{\max} \to \eta_0` up to :math:`2pN - 2`, then
    :math:`\eta_0 \to \eta_{\min}` up to :math:`N - 1`.

    If ``cycle_momentum``, the momentum (``group["momentum"]``, or ``group["betas"][0]`` when
    the optimizer has ``betas``) moves inversely, ``max_momentum`` → ``base_momentum`` →
    ``max_momentum``, with the same anneal and phases (staying at ``max_momentum`` in the third).

    Parameters
    ----------
    optimizer : object
        Optimizer with ``param_groups`` (and ``defaults``, used to tell momentum from betas).
    max_lr : float or list of float
        Peak lr, for all groups or per group.
    total_steps : int, optional
        Number of steps in the cycle; else ``epochs * steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
        Used when ``total_steps`` is not given.
    pct_start : float, default 0.3
        Fraction of the cycle spent increasing the lr, in [0, 1].
    anneal_strategy : {'cos', 'linear'}, default 'cos'
    cycle_momentum : bool, default True
    base_momentum, max_momentum : float or list of float, default 0.85, 0.95
        Momentum at the lr peak and at the ends of the cycle.
    div_factor : float, default 25.0
    final_div_factor : float, default 1e4
    three_phase : bool, default False
    last_epoch : int, default -1
        Index of the last *batch* when resuming.

    Raises
    ------
    ValueError
        From :meth:`step` when ``last_epoch`` would exceed ``total_steps``.

    Notes
    -----
    The cycle ends at step ``total_steps - 1`` (construction is step 0). Like torch, one more
    :meth:`step` is allowed; it extrapolates the last phase one step past ``min_lr`` (with
    ``anneal_strategy='linear'`` that can make the lr negative).

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> from fastopt.lr_scheduler import OneCycleLR
    >>> opt = fastopt.SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    >>> sched = OneCycleLR(opt, max_lr=1.0, total_steps=10)
    >>> lrs = []
    >>> for step in range(10):                 # step it after every batch
    ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
    ...     sched.step()
    >>> lrs
    [0.04, 0.52, 1.0, 0.95, 0.812, 0.611, 0.389, 0.188, 0.05, 0.0]
    """

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps=None,
        epochs=None,
        steps_per_epoch=None,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
        last_epoch=-1,
    ):
        _require_param_groups(optimizer)
        self.optimizer = optimizer

        if total_steps is not None:
            if not _is_int(total_steps) or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not _is_int(epochs) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not _is_int(steps_per_epoch) or steps_per_epoch <= 0:
                raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

        if not isinstance(pct_start, float) or pct_start < 0 or pct_start > 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._anneal_func_type = anneal_strategy

        warmup_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            self._schedule_phases = [
                _phase(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(
                    float(2 * pct_start * self.total_steps) - 2,
                    "max_lr", "initial_lr", "base_momentum", "max_momentum",
                ),
                _phase(self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._schedule_phases = [
                _phase(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]

        max_lrs = _format_param("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, group_max_lr in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = group_max_lr / div_factor
                group["max_lr"] = group_max_lr
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            hyperparameters = _hyperparameter_names(optimizer)
            if "momentum" not in hyperparameters and "betas" not in hyperparameters:
                raise ValueError(
                    "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
                )
            self.use_beta1 = "betas" in hyperparameters
            max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for group, group_max_momentum, group_base_momentum in zip(
                    optimizer.param_groups, max_momentums, base_momentums
                ):
                    self._set_momentum(group, group_max_momentum)
                    group["max_momentum"] = group_max_momentum
                    group["base_momentum"] = group_base_momentum

        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group, momentum):
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _anneal_func(self, start, end, pct):
        if self._anneal_func_type == "cos":
            return self._annealing_cos(start, end, pct)
        return self._annealing_linear(start, end, pct)

    @staticmethod
    def _annealing_cos(start, end, pct):
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out

    @staticmethod
    def _annealing_linear(start, end, pct):
        return (end - start) * pct + start

    def get_lr(self):
        # Also writes the cycled momentum into the groups, as torch does.
        self._warn_if_called_outside_step()
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total steps is {self.total_steps}"
            )
        lrs = []
        last_phase = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for index, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or index == last_phase:
                    pct = (step_num - start_step) / (end_step - start_step)
                    lrs.append(self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        momentum = self._anneal_func(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                        )
                        self._set_momentum(group, momentum)
                    break
                start_step = phase["end_step"]
        return lrs


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _phase(end_step, start_lr, end_lr, start_momentum, end_momentum):
    """One OneCycleLR phase; the lr/momentum entries name param-group keys."""
    return {
        "end_step": end_step,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "start_momentum": start_momentum,
        "end_momentum": end_momentum,
    }
