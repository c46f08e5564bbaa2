"""Stand-ins for fastopt.SGD and fastopt.Adam, used until the real optimizers land.

They have the interface the schedulers rely on -- ``param_groups`` (list of dicts with ``params``
and hyperparameters, read at every ``step``), ``defaults`` and ``step(grads)`` -- with the same
constructor signature and defaults as fastopt's classes, and plain NumPy updates following
torch.optim's formulas so that a scheduled run can be compared with torch parameter by parameter.
"""

import numpy as np


class _FakeOptimizer:
    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            group = dict(group)
            group["params"] = list(group["params"])
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            self.param_groups.append(group)
        self.state = {}

    def _params_and_grads(self, grads):
        params = [p for group in self.param_groups for p in group["params"]]
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"expected {len(params)} grads, got {len(grads)}")
        return iter(zip(params, grads))


class FakeSGD(_FakeOptimizer):
    """SGD with momentum (no dampening/nesterov/weight decay): ``b = μ b + g; p -= lr b``."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov),
        )

    def step(self, grads):
        pairs = self._params_and_grads(grads)
        for group in self.param_groups:
            for _ in group["params"]:
                param, grad = next(pairs)
                if group["momentum"] != 0:
                    buf = self.state.get(id(param))
                    buf = grad.copy() if buf is None else group["momentum"] * buf + grad
                    self.state[id(param)] = buf
                    grad = buf
                param -= group["lr"] * grad


class FakeAdam(_FakeOptimizer):
    """Adam (no weight decay/amsgrad), written as torch.optim.Adam's single-tensor path."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False):
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        )

    def step(self, grads):
        pairs = self._params_and_grads(grads)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for _ in group["params"]:
                param, grad = next(pairs)
                state = self.state.setdefault(
                    id(param), {"step": 0, "exp_avg": np.zeros_like(param), "exp_avg_sq": np.zeros_like(param)}
                )
                state["step"] += 1
                state["exp_avg"] += (grad - state["exp_avg"]) * (1 - beta1)
                state["exp_avg_sq"] = state["exp_avg_sq"] * beta2 + grad * grad * (1 - beta2)
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
                denom = np.sqrt(state["exp_avg_sq"]) / bias_correction2_sqrt + group["eps"]
                param -= (group["lr"] / bias_correction1) * state["exp_avg"] / denom
