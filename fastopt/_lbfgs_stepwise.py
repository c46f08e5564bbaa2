"""Stepwise L-BFGS over NumPy arrays with the semantics of ``torch.optim.LBFGS`` (one ``step``
runs up to ``max_iter`` iterations on a closure)."""
import numpy as np

from . import _validation as V
from ._lbfgs import MoreThuente, two_loop_direction

__all__ = ["LBFGS"]


class LBFGS:
    """Stepwise L-BFGS over NumPy arrays, with the semantics of ``torch.optim.LBFGS``.

    Parameters
    ----------
    params : sequence of ndarray
        Float arrays (one dtype), updated in place.
    lr : float
        Step length (``t = lr``; on the very first iteration ``t = min(1, 1/||g||_1) lr``).
    max_iter : int
        Iterations per :meth:`step`.
    max_eval : int, optional
        Evaluations per :meth:`step` (default ``max_iter * 5 // 4``).
    tolerance_grad : float
        A step ends when ``max |g| <= tolerance_grad``.
    tolerance_change : float
        A step ends when ``max |t d|`` or ``|loss change|`` falls below this.
    history_size : int
        Number of correction pairs kept.
    line_search_fn : None or "strong_wolfe"
        None takes the fixed step ``t``; "strong_wolfe" uses the Moré–Thuente search
        (``c1 = 1e-4``, ``c2 = 0.9``, at most 25 evaluations) starting from ``t``.

    Notes
    -----
    ``closure()`` must re-evaluate the model at the current values of ``params`` and return
    ``(loss, grads)`` with ``grads`` a list aligned with ``params``. As in torch, pairs with
    ``y's <= 1e-10`` are skipped and ``H0 = (y's / y'y) I`` from the newest stored pair.
    """

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        params = list(params)
        if not params:
            raise ValueError("params: need at least one array")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise TypeError(f"params[{i}] must be a float32 or float64 ndarray")
            if not p.flags.writeable:
                raise ValueError(f"params[{i}] must be writeable (it is updated in place)")
        if len({p.dtype for p in params}) != 1:
            raise TypeError("params must all have the same dtype")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        max_iter = V.check_count("max_iter", max_iter, 1)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        max_eval = V.check_count("max_eval", max_eval, 1)
        history_size = V.check_count("history_size", history_size, 1)
        V.check_tolerance("tolerance_grad", tolerance_grad)
        V.check_tolerance("tolerance_change", tolerance_change)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError("line_search_fn must be None or 'strong_wolfe', got "
                             f"{line_search_fn!r}")
        self.params = params
        self.lr = float(lr)
        self.max_iter = max_iter
        self.max_eval = max_eval
        self.tolerance_grad = float(tolerance_grad)
        self.tolerance_change = float(tolerance_change)
        self.history_size = history_size
        self.line_search_fn = line_search_fn
        self.dtype = params[0].dtype
        self._sizes = [p.size for p in params]
        self._n = sum(self._sizes)
        self.state = {"func_evals": 0, "n_iter": 0}
        self._history = np.zeros((2 * history_size, self._n), dtype=self.dtype)
        self._rho = np.zeros(history_size)
        self._newest = history_size - 1
        self._count = 0
        self._h_diag = 1.0
        self._d = None
        self._t = None
        self._prev_flat_grad = None

    # -- helpers -------------------------------------------------------------------------------
    def _flatten_grads(self, grads):
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"closure: got {len(grads)} gradients for {len(self.params)} params")
        flat = np.empty(self._n, dtype=self.dtype)
        offset = 0
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"closure: grads[{i}] has shape {g.shape}, params[{i}] has "
                                 f"shape {p.shape}")
            flat[offset:offset + p.size] = g.ravel()
            offset += p.size
        return flat

    def _evaluate(self, closure):
        loss, grads = closure()
        return float(loss), self._flatten_grads(grads)

    def _get_flat_params(self):
        return np.concatenate([p.ravel() for p in self.params]).astype(self.dtype, copy=False)

    def _set_flat_params(self, flat):
        offset = 0
        for p in self.params:
            p[...] = flat[offset:offset + p.size].reshape(p.shape)
            offset += p.size

    def _add_direction(self, t, d):
        offset = 0
        for p in self.params:
            p += (t * d[offset:offset + p.size]).reshape(p.shape).astype(self.dtype, copy=False)
            offset += p.size

    def _strong_wolfe(self, closure, x_init, t, d, loss, flat_grad, gtd):
        """Moré–Thuente search from the current point; returns (loss, grad, t, evaluations).

        Non-finite trials are cut back; if the search ends without the Wolfe conditions, the
        evaluated point with the lowest loss is taken (or no move at all)."""
        search = MoreThuente(c1=1e-4, c2=0.9)
        stp, task = search.start(loss, gtd, t)
        best = (loss, flat_grad, 0.0)
        evals = 0
        while task == "FG" and evals < 25:
            self._set_flat_params(x_init + stp * d)
            new_loss, new_grad = self._evaluate(closure)
            evals += 1
            if not (np.isfinite(new_loss) and np.all(np.isfinite(new_grad))):
                search.limit_step(stp)
                stp = search.best_step + 0.1 * (stp - search.best_step)
                continue
            if new_loss < best[0]:
                best = (new_loss, new_grad, stp)
            stp_next, task = search.iterate(new_loss, float(new_grad @ d), stp)
            if task == "CONVERGENCE":
                best = (new_loss, new_grad, stp)
                break
            stp = stp_next
        loss, flat_grad, t = best
        self._set_flat_params(x_init + t * d)
        return loss, flat_grad, t, evals

    # -- the step ------------------------------------------------------------------------------
    def step(self, closure):
        """Run up to ``max_iter`` L-BFGS iterations; returns the loss at the entry point."""
        state = self.state
        orig_loss, flat_grad = self._evaluate(closure)
        loss = orig_loss
        current_evals = 1
        state["func_evals"] += 1
        if np.abs(flat_grad).max() <= self.tolerance_grad:
            return orig_loss

        d, t = self._d, self._t
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = -flat_grad
                self._count = 0
                self._h_diag = 1.0
            else:
                y = flat_grad - self._prev_flat_grad
                s = d * t
                ys = float(y @ s)
                if ys > 1e-10:
                    self._newest = (self._newest + 1) % self.history_size
                    self._history[2 * self._newest] = s
                    self._history[2 * self._newest + 1] = y
                    self._rho[self._newest] = 1.0 / ys
                    self._count = min(self._count + 1, self.history_size)
                    self._h_diag = ys / float(y @ y)
                d = two_loop_direction(flat_grad, self._history, self._rho, self._newest,
                                       self._count, self._h_diag)
            self._prev_flat_grad = flat_grad.copy()
            prev_loss = loss
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * self.lr
            else:
                t = self.lr
            gtd = float(flat_grad @ d)
            if gtd > -self.tolerance_change:
                break

            ls_evals = 0
            if self.line_search_fn == "strong_wolfe":
                x_init = self._get_flat_params()
                loss, flat_grad, t, ls_evals = self._strong_wolfe(closure, x_init, t, d, loss,
                                                                  flat_grad, gtd)
                opt_cond = np.abs(flat_grad).max() <= self.tolerance_grad
            else:
                self._add_direction(t, d)
                opt_cond = False
                if n_iter != self.max_iter:
                    loss, flat_grad = self._evaluate(closure)
                    opt_cond = np.abs(flat_grad).max() <= self.tolerance_grad
                    ls_evals = 1
            current_evals += ls_evals
            state["func_evals"] += ls_evals

            if n_iter == self.max_iter or current_evals >= self.max_eval or opt_cond:
                break
            if np.abs(d * t).max() <= self.tolerance_change:
                break
            if abs(loss - prev_loss) < self.tolerance_change:
                break
            if not np.isfinite(loss):
                break

        self._d, self._t = d, t
        return orig_loss
