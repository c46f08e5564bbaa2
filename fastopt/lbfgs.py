"""Limited-memory BFGS: a SciPy-compatible ``minimize_lbfgs``, a ``scipy.optimize.minimize``
plug-in ``lbfgs`` and a stepwise ``LBFGS`` optimizer shaped like ``torch.optim.LBFGS``.

The iteration itself runs in Cython (:mod:`fastopt._lbfgs`); this module only checks arguments and
packs results.

Algorithm (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 7.4 and 7.5). With the ``m``
most recent pairs ``s_i = x_{i+1} - x_i``, ``y_i = g_{i+1} - g_i`` and ``rho_i = 1 / (s_i' y_i)``,
the search direction ``d = -H g`` comes from the two-loop recursion::

    q = -g
    for i = k-1, ..., k-m:   a_i = rho_i s_i' q;   q = q - a_i y_i
    r = gamma q,             gamma = s_{k-1}' y_{k-1} / y_{k-1}' y_{k-1}
    for i = k-m, ..., k-1:   b_i = rho_i y_i' r;   r = r + (a_i - b_i) s_i
    d = r

and ``x_{k+1} = x_k + stp d`` with ``stp`` from a line search: Moré–Thuente (strong Wolfe,
``f(x + stp d) <= f(x) + c1 stp g'd`` and ``|g(x + stp d)'d| <= c2 |g'd|``), or backtracking
Armijo (sufficient decrease only). As in L-BFGS-B, a pair with ``s'y <= eps (-g's)`` -- curvature
along the step negligible next to the slope -- is not stored: it would make H indefinite or
wildly scaled. (The stepwise :class:`LBFGS` uses torch's rule, ``y's > 1e-10``, instead.)
"""
import inspect
import numbers
import warnings

import numpy as np
from scipy.optimize import OptimizeResult, OptimizeWarning

from . import _lbfgs
from ._lbfgs import MoreThuente, two_loop_direction

try:  # scipy.optimize.minimize wraps ``fun`` in MemoizeJac when jac=True
    from scipy.optimize._optimize import MemoizeJac as _MemoizeJac
except ImportError:  # pragma: no cover - private SciPy name
    _MemoizeJac = None

__all__ = ["minimize_lbfgs", "lbfgs", "LBFGS", "MoreThuente", "two_loop_direction"]

LINE_SEARCHES = {"more-thuente": False, "armijo": True}

# L-BFGS-B options that have no meaning here (no bounds, analytic gradients, no printing).
_IGNORED_OPTIONS = {"disp", "iprint", "eps", "finite_diff_rel_step", "return_all", "workers",
                    "hess", "hessp", "bounds", "constraints", "maxcor"}


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_tolerance(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be non-negative, got {value}")
    return float(value)


def _as_start_point(x0):
    x = np.atleast_1d(np.asarray(x0))
    if x.ndim != 1:
        raise ValueError(f"x0 must be one-dimensional, got shape {x.shape}")
    if np.iscomplexobj(x):
        raise TypeError("x0 must be real, got a complex array")
    if x.dtype != np.float32:
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"x0 must be numeric, got dtype {x.dtype}") from None
    if x.size == 0:
        raise ValueError("x0 must not be empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 must be finite (it contains NaN or Inf)")
    return np.ascontiguousarray(x)


def _adapt_callback(callback):
    """Return ``cb(x, f)`` calling ``callback`` in the style its signature asks for.

    SciPy passes a custom method's callback through unwrapped, so the rule of
    ``scipy.optimize._optimize._wrap_callback`` is applied here: a callback whose only parameter
    is named ``intermediate_result`` gets an ``OptimizeResult(x=..., fun=...)``, any other gets x.
    """
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    try:
        parameters = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):
        parameters = set()
    if parameters == {"intermediate_result"}:
        def adapted(x, f):
            return callback(intermediate_result=OptimizeResult(x=x, fun=f))
    else:
        def adapted(x, f):
            return callback(x)
    return adapted


def _check_search_options(x0, gtol, ftol, maxiter, maxfun, maxls, line_search, c1, c2):
    """Check the options every line-search minimizer here shares; return them with x0 as an array.

    Returns ``(x, gtol, ftol, maxiter, maxfun, maxls, armijo)`` where ``armijo`` selects the
    backtracking line search over More-Thuente.
    """
    gtol = _check_tolerance("gtol", gtol)
    ftol = _check_tolerance("ftol", ftol)
    maxiter = _check_int("maxiter", maxiter, 1)
    maxfun = _check_int("maxfun", maxfun, 1)
    maxls = _check_int("maxls", maxls, 1)
    if not isinstance(line_search, str) or line_search.lower() not in LINE_SEARCHES:
        raise ValueError(f"line_search must be one of {sorted(LINE_SEARCHES)}, got {line_search!r}")
    c1 = float(c1)
    c2 = float(c2)
    if not (0.0 < c1 < c2 < 1.0):
        raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
    return _as_start_point(x0), gtol, ftol, maxiter, maxfun, maxls, LINE_SEARCHES[line_search.lower()]


def minimize_lbfgs(fun, x0, args=(), jac=True, m=10, gtol=1e-5, ftol=2.2e-9, maxiter=15000,
                   maxfun=15000, maxls=20, callback=None, line_search="more-thuente",
                   c1=1e-4, c2=0.9):
    """Minimize ``fun`` with L-BFGS.

    Parameters
    ----------
    fun : callable
        ``fun(x, *args)``; returns ``(f, g)`` if ``jac`` is True, else ``f``.
    x0 : array_like, shape (n,)
        Start point. float32 input is kept in float32 (x, gradients, history); anything else is
        converted to float64. Must be finite.
    args : tuple
        Extra arguments for ``fun`` and ``jac``.
    jac : True or callable
        True if ``fun`` returns the gradient too, else ``jac(x, *args)`` returns it.
    m : int
        Number of correction pairs kept (L-BFGS-B's ``maxcor``).
    gtol : float
        Stop with success when ``max_i |g_i| <= gtol``.
    ftol : float
        Stop with success when ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``.
    maxiter, maxfun : int
        Iteration and evaluation limits (status 1). As in L-BFGS-B, ``maxfun`` is checked after
        each iteration, so a last line search may exceed it by a few evaluations.
    maxls : int
        Maximum evaluations per line search.
    callback : callable, optional
        ``callback(xk)`` or ``callback(intermediate_result)`` after each iteration; raising
        ``StopIteration`` stops the run (status 99).
    line_search : {"more-thuente", "armijo"}
        Strong Wolfe search of Moré & Thuente (MINPACK-2 dcsrch), or backtracking Armijo with
        safeguarded quadratic interpolation.
    c1, c2 : float
        Sufficient-decrease and curvature constants, ``0 < c1 < c2 < 1``.

    Returns
    -------
    OptimizeResult
        ``x, fun, jac, nit, nfev, njev, status, success, message``. ``status`` is 0 (converged),
        1 (maxiter or maxfun reached), 2 (line search failed or non-finite values: x is then the
        last finite iterate), or 99 (the callback raised StopIteration).

    Notes
    -----
    If the line search fails, the history is dropped and the step retried once along steepest
    descent; a second failure ends the run with status 2. Trials where ``fun`` returns NaN or Inf
    are cut back toward the last finite point instead of being used.
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    if not isinstance(args, tuple):
        args = (args,)
    if jac is not True and not callable(jac):
        raise TypeError("jac must be True (fun returns (f, g)) or a callable returning the "
                        f"gradient, got {jac!r}")
    # Called through scipy.optimize.minimize(jac=True): undo its MemoizeJac wrapper so each
    # evaluation is one direct call instead of two cached ones.
    if (_MemoizeJac is not None and isinstance(fun, _MemoizeJac)
            and getattr(jac, "__self__", None) is fun):
        fun, jac = fun.fun, True
    m = _check_int("m", m, 1)
    x, gtol, ftol, maxiter, maxfun, maxls, armijo = _check_search_options(
        x0, gtol, ftol, maxiter, maxfun, maxls, line_search, c1, c2)

    x, f, g, nit, nfev, njev, status, message = _lbfgs._run(
        fun, jac, args, x, m, gtol, ftol, maxiter, maxfun, maxls, armijo, c1, c2,
        _adapt_callback(callback))
    return OptimizeResult(x=x, fun=f, jac=g, nit=nit, nfev=nfev, njev=njev, status=status,
                          success=status == 0, message=message)


def lbfgs(fun, x0, args=(), jac=None, hess=None, hessp=None, bounds=None, constraints=(),
          callback=None, tol=None, **options):
    """L-BFGS as a custom method for :func:`scipy.optimize.minimize`.

    ``scipy.optimize.minimize(fun, x0, jac=True, method=fastopt.lbfgs.lbfgs, options={...})``.
    Options are those of :func:`minimize_lbfgs` (``m``, ``gtol``, ``ftol``, ``maxiter``,
    ``maxfun``, ``maxls``, ``line_search``, ``c1``, ``c2``); L-BFGS-B's ``maxcor`` is
    accepted for ``m``. ``tol`` sets both ``gtol`` and ``ftol`` unless they are
    given. ``hess``, ``hessp``, ``disp`` and the like are ignored; finite bounds and constraints
    are refused (this is an unconstrained method). Unknown options are ignored with an
    ``OptimizeWarning``.
    """
    if bounds is not None:
        lower_upper = _bounds_arrays(bounds, np.size(x0))
        if np.any(np.isfinite(lower_upper)):
            raise ValueError("bounds: fastopt.lbfgs is unconstrained; use method='L-BFGS-B' "
                             "for bound constraints")
    if constraints:
        raise ValueError("constraints: fastopt.lbfgs is unconstrained")
    options = dict(options)
    if "maxcor" in options:
        options.setdefault("m", options["maxcor"])
    if tol is not None:
        options.setdefault("gtol", tol)
        options.setdefault("ftol", tol)
    known = {"m", "gtol", "ftol", "maxiter", "maxfun", "maxls", "line_search", "c1", "c2"}
    unknown = set(options) - known - _IGNORED_OPTIONS
    if unknown:
        warnings.warn(f"Unknown solver options: {', '.join(sorted(unknown))}", OptimizeWarning,
                      stacklevel=3)
    kwargs = {k: v for k, v in options.items() if k in known}
    if jac is None or jac is False:
        raise TypeError("jac: fastopt.lbfgs needs analytic gradients; pass jac=True or a callable")
    return minimize_lbfgs(fun, x0, args=args, jac=jac, callback=callback, **kwargs)


def _bounds_arrays(bounds, n):
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        return np.array([np.broadcast_to(bounds.lb, (n,)), np.broadcast_to(bounds.ub, (n,))],
                        dtype=float)
    pairs = [(-np.inf if lo is None else lo, np.inf if hi is None else hi) for lo, hi in bounds]
    return np.array(pairs, dtype=float)


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
        max_iter = _check_int("max_iter", max_iter, 1)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        max_eval = _check_int("max_eval", max_eval, 1)
        history_size = _check_int("history_size", history_size, 1)
        _check_tolerance("tolerance_grad", tolerance_grad)
        _check_tolerance("tolerance_change", tolerance_change)
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
        self._prev_loss = None

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
        self._prev_loss = loss
        return orig_loss
