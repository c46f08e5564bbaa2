"""``fastopt.torch.LBFGS``: ``torch.optim.LBFGS``'s interface and trajectories, with the vector
work on zero-copy NumPy views of the parameters and the two-loop recursion in Cython.

torch's own LBFGS runs every vector operation of an iteration as a separate tensor op from Python
(the two-loop recursion alone is ~4 m of them); here the recursion is one compiled call over a
ring buffer, and the parameters are read and moved through NumPy views of their storage (no
copies besides the flat gradient, which torch also gathers). Imported only by ``fastopt.torch``.
"""
import numpy as np
import torch

from ._lbfgs_stepwise import StepwiseEngine, check_lbfgs_options

__all__ = ["LBFGS"]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class LBFGS(torch.optim.Optimizer):
    """L-BFGS with the interface, state and trajectories of ``torch.optim.LBFGS``.

    Parameters are those of ``torch.optim.LBFGS``: ``lr`` (float or 1-element tensor),
    ``max_iter``, ``max_eval`` (default ``max_iter * 5 // 4``), ``tolerance_grad``,
    ``tolerance_change``, ``history_size`` and ``line_search_fn`` (None or ``"strong_wolfe"``).
    Parameters must be dense, contiguous CPU tensors of one floating dtype (float32 or
    float64), all in one parameter group. ``step(closure)`` takes a closure that clears the
    gradients, computes the loss, calls ``backward()`` and returns the loss, as for torch.

    The optimizer state (``state_dict()``) holds tensors: the ring buffer of pairs, their
    ``rho``, the last direction and step, and torch's counters ``func_evals`` and ``n_iter``.
    """

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr_value = lr.item() if isinstance(lr, torch.Tensor) else lr
        if not 0.0 <= lr_value:
            raise ValueError(f"Invalid learning rate: {lr}")
        (_, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
         line_search_fn) = check_lbfgs_options(lr_value, max_iter, max_eval, tolerance_grad,
                                               tolerance_change, history_size, line_search_fn)
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                        tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                        history_size=history_size, line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        for i, p in enumerate(self._params):
            if p.device.type != "cpu" or p.layout != torch.strided:
                raise ValueError(f"params[{i}] must be a dense CPU tensor")
            if p.dtype not in _NUMPY_DTYPES:
                raise TypeError(f"params[{i}] must be float32 or float64, got {p.dtype}")
            if not p.is_contiguous():
                raise ValueError(f"params[{i}] must be contiguous (its storage is viewed)")
        if len({p.dtype for p in self._params}) != 1:
            raise TypeError("params must all have the same dtype")
        self._dtype = _NUMPY_DTYPES[self._params[0].dtype]
        self._views = [p.detach().numpy() for p in self._params]
        self._sizes = [v.size for v in self._views]
        self._n = sum(self._sizes)
        self._engine = StepwiseEngine(self._n, self._dtype, history_size)

    # -- views of the parameters and gradients ----------------------------------------------------
    def _evaluate(self, closure):
        with torch.enable_grad():
            loss = closure()
        flat = np.empty(self._n, dtype=self._dtype)
        offset = 0
        for p, size in zip(self._params, self._sizes):
            if p.grad is None:
                flat[offset:offset + size] = 0.0
            else:
                flat[offset:offset + size] = p.grad.detach().reshape(-1).numpy()
            offset += size
        return loss, flat

    def _get_flat(self):
        return np.concatenate([v.ravel() for v in self._views])

    def _set_flat(self, flat):
        offset = 0
        for p, v, size in zip(self._params, self._views, self._sizes):
            v.reshape(-1)[...] = flat[offset:offset + size]
            offset += size
            torch.autograd.graph.increment_version(p)

    def _add(self, t, d):
        offset = 0
        for p, v, size in zip(self._params, self._views, self._sizes):
            flat = v.reshape(-1)
            flat += (t * d[offset:offset + size]).astype(self._dtype, copy=False)
            offset += size
            torch.autograd.graph.increment_version(p)

    # -- state as tensors (so state_dict / load_state_dict / torch.save work) ----------------------
    def _load_engine_state(self):
        saved = self.state.get(self._params[0])
        if not saved:
            self._engine.state = self._engine.initial_state()
            return
        state = {}
        for key, value in saved.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy() if value.dim() > 0 else value.item()
            state[key] = value
        state["history"] = np.ascontiguousarray(state["history"], dtype=self._dtype)
        for key in ("newest", "count", "func_evals", "n_iter"):
            state[key] = int(state[key])
        self._engine.state = state

    def _store_engine_state(self):
        self.state[self._params[0]] = {
            key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            for key, value in self._engine.state.items()}

    @torch.no_grad()
    def step(self, closure):
        """Run up to ``max_iter`` iterations; returns the loss at the entry point (torch's
        return value)."""
        if closure is None:
            raise ValueError("LBFGS needs a closure that reevaluates the model")
        group = self.param_groups[0]
        lr = group["lr"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else float(lr)
        self._load_engine_state()
        try:
            return self._engine.step(closure, self._evaluate, self._get_flat, self._set_flat,
                                     self._add, lr, group["max_iter"], group["max_eval"],
                                     group["tolerance_grad"], group["tolerance_change"],
                                     group["line_search_fn"])
        finally:
            self._store_engine_state()
