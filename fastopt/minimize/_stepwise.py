"""The engine of stepwise L-BFGS with the semantics of ``torch.optim.LBFGS``: one
``step(closure)`` runs up to ``max_iter`` iterations. ``fastopt.LBFGS`` (in ``fastopt/minimize/_lbfgs_py.py``)
runs it on NumPy arrays, ``fastopt.torch.LBFGS`` on zero-copy NumPy views of torch parameters and
gradients; it imports neither (``fastopt.LBFGS`` with bounds runs ``minimize_lbfgs`` instead).

Per iteration (torch's rules, so trajectories are torch's): the pair ``(s, y) = (t d,
g - g_prev)`` is stored when ``y's > 1e-10`` (the oldest dropped beyond ``history_size``),
``H0 = (y's / y'y) I``, ``d = -H g`` by the two-loop recursion (in Cython), the step is
``t = lr`` (``min(1, 1 / ||g||_1) lr`` on the very first iteration) or, with
``line_search_fn="strong_wolfe"``, the result of a bracketing / zoom search with cubic
interpolation (Nocedal & Wright, Alg. 3.5-3.6, the variant torch implements) for the strong Wolfe
conditions with ``c1 = 1e-4``, ``c2 = 0.9``. The step ends on ``max |g| <= tolerance_grad``,
``max |t d| <= tolerance_change``, ``|loss change| < tolerance_change``, a non-descent direction,
``max_iter`` iterations or ``max_eval`` evaluations.
"""
import math
import numbers

import numpy as np

from .. import _validation as V
from ._compiled import lbfgs as _lbfgs

__all__ = ["StepwiseEngine", "check_lbfgs_options"]


def _cubic_minimizer(x1, f1, g1, x2, f2, g2, low=None, high=None):
    """Minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clipped to [low, high]
    (by default the interval between x1 and x2); the midpoint if the cubic has none."""
    if low is None:
        low, high = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return (low + high) / 2.0
    d2 = math.sqrt(disc)
    if x1 <= x2:
        point = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
    else:
        point = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
    return min(max(point, low), high)


def strong_wolfe_search(evaluate, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                        max_ls=25):
    """Line search for the strong Wolfe conditions along d, as torch's ``_strong_wolfe``.

    ``evaluate(t)`` returns ``(f, g)`` at ``x + t d``. Phase 1 extrapolates (cubic
    interpolation kept in [t + 0.01 (t - t_prev), 10 t]) until an interval brackets a Wolfe
    point; phase 2 zooms into it, stepping 10% inside the interval when the cubic's point is
    too close to an end twice in a row. Returns ``(f, g, t, evaluations)`` of the best point.
    """
    d_norm = float(np.abs(d).max())
    f_new, g_new = evaluate(t)
    evals = 1
    gtd_new = float(g_new @ d)
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket = None
    while ls_iter < max_ls:
        if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
            bracket = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket = [[t, f_new, g_new, gtd_new]]
            done = True
            break
        if gtd_new >= 0:
            bracket = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
            break
        t_next = _cubic_minimizer(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                                  t + 0.01 * (t - t_prev), t * 10)
        t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new, gtd_new
        t = t_next
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = float(g_new @ d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket = [[0.0, f, g, gtd], [t, f_new, g_new, gtd_new]]
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    insufficient = False
    while not done and ls_iter < max_ls:
        lo_t, hi_t = bracket[0][0], bracket[1][0]
        if abs(hi_t - lo_t) * d_norm < tolerance_change:
            break
        t = _cubic_minimizer(bracket[0][0], bracket[0][1], bracket[0][3],
                             bracket[1][0], bracket[1][1], bracket[1][3])
        top, bottom = max(lo_t, hi_t), min(lo_t, hi_t)
        margin = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < margin:
            if insufficient or t >= top or t <= bottom:
                t = top - margin if abs(t - top) < abs(t - bottom) else bottom + margin
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = float(g_new @ d)
        ls_iter += 1
        if f_new > f + c1 * t * gtd or f_new >= bracket[low][1]:
            bracket[high] = [t, f_new, g_new, gtd_new]
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = list(bracket[low])
            bracket[low] = [t, f_new, g_new, gtd_new]
    t, f_new, g_new, _ = bracket[low]
    return f_new, g_new, t, evals


def _gradient_small(flat_grad, tolerance_grad):
    """torch's optimality test: ``max |g| <= tolerance_grad``."""
    return np.abs(flat_grad).max() <= tolerance_grad


def _as_float(value):
    """A loss as a Python float (a torch loss is detached first, as it still requires grad);
    text and other non-numbers raise TypeError."""
    detach = getattr(value, "detach", None)
    if detach is not None:
        return float(detach())
    return V.objective_value(value, source="closure")


class StepwiseEngine:
    """torch.optim.LBFGS's ``step`` on flat vectors.

    The owner supplies ``evaluate(closure) -> (loss, flat_grad)``, ``get_flat()`` (a copy of
    the parameters as one vector) and ``add(t, d)`` / ``set_flat(x)`` to move them. The state
    is a dict of plain numbers and arrays (so it can be viewed as tensors by the owner).
    """

    def __init__(self, n, dtype, history_size):
        self.n = n
        self.dtype = np.dtype(dtype)
        self.history_size = history_size
        self.state = self.initial_state()

    def initial_state(self):
        m = self.history_size
        return {"func_evals": 0, "n_iter": 0, "d": None, "t": None,
                "history": np.zeros((2 * m, self.n), dtype=self.dtype),
                "rho": np.zeros(m, dtype=self.dtype), "newest": m - 1, "count": 0,
                "H_diag": 1.0, "prev_flat_grad": None, "prev_loss": None}

    def _clear_history(self):
        """Forget every pair (torch does so on the very first iteration)."""
        st = self.state
        st["count"] = 0
        st["newest"] = self.history_size - 1
        st["H_diag"] = 1.0

    def _store_pair(self, s, y, ys):
        st = self.state
        m = self.history_size
        st["newest"] = (st["newest"] + 1) % m
        st["history"][2 * st["newest"]] = s
        st["history"][2 * st["newest"] + 1] = y
        st["rho"][st["newest"]] = 1.0 / ys
        st["count"] = min(st["count"] + 1, m)
        st["H_diag"] = ys / float(y @ y)

    def step(self, closure, evaluate, get_flat, set_flat, add, lr, max_iter, max_eval,
             tolerance_grad, tolerance_change, line_search_fn):
        st = self.state
        orig_loss, flat_grad = evaluate(closure)
        loss = _as_float(orig_loss)
        current_evals = 1
        st["func_evals"] += 1
        if _gradient_small(flat_grad, tolerance_grad):
            return orig_loss
        d, t = st["d"], st["t"]
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            st["n_iter"] += 1
            if st["n_iter"] == 1:
                d = -flat_grad
                self._clear_history()
            else:
                y = flat_grad - st["prev_flat_grad"]
                s = d * t
                ys = float(y @ s)
                if ys > 1e-10:
                    self._store_pair(s, y, ys)
                d = _lbfgs.two_loop_direction(flat_grad, st["history"],
                                       np.asarray(st["rho"], dtype=np.float64),
                                       st["newest"], st["count"], st["H_diag"])
            if st["prev_flat_grad"] is None:
                st["prev_flat_grad"] = flat_grad.copy()
            else:
                st["prev_flat_grad"][...] = flat_grad
            prev_loss = loss
            st["prev_loss"] = loss
            if st["n_iter"] == 1:
                t = min(1.0, 1.0 / float(np.abs(flat_grad).sum())) * lr
            else:
                t = lr
            gtd = float(flat_grad @ d)
            if gtd > -tolerance_change:
                break
            ls_evals = 0
            if line_search_fn is not None:
                x_init = get_flat()

                def at(step):
                    add(step, d)
                    value, grad = evaluate(closure)
                    set_flat(x_init)
                    return _as_float(value), grad

                loss, flat_grad, t, ls_evals = strong_wolfe_search(
                    at, t, d, loss, flat_grad, gtd, tolerance_change=tolerance_change,
                    max_ls=max_eval - current_evals)
                add(t, d)
                opt_cond = _gradient_small(flat_grad, tolerance_grad)
            else:
                add(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    value, flat_grad = evaluate(closure)
                    loss = _as_float(value)
                    opt_cond = _gradient_small(flat_grad, tolerance_grad)
                    ls_evals = 1
            current_evals += ls_evals
            st["func_evals"] += ls_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if np.abs(d * t).max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break
        st["d"], st["t"] = d, t
        st["prev_loss"] = loss
        return orig_loss


def check_lbfgs_options(lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
                        line_search_fn):
    """torch.optim.LBFGS's options, checked; returns them with ``max_eval`` filled in.

    ``lr = 0`` is accepted and ``lr < 0`` (or NaN) refused with torch.optim.LBFGS's error, which
    both front ends share.
    """
    if isinstance(lr, numbers.Real) and not isinstance(lr, (bool, np.bool_)) and not lr >= 0:
        raise ValueError(f"Invalid learning rate: {lr}")
    lr = V.check_real("lr", lr, low=0.0)
    max_iter = V.check_count("max_iter", max_iter, 1)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    max_eval = V.check_count("max_eval", max_eval, 1)
    history_size = V.check_count("history_size", history_size, 1)
    tolerance_grad = V.check_tolerance("tolerance_grad", tolerance_grad)
    tolerance_change = V.check_tolerance("tolerance_change", tolerance_change)
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError("line_search_fn must be None or 'strong_wolfe', got "
                         f"{line_search_fn!r}")
    return (lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
            line_search_fn)
