"""Limited-memory BFGS with bounds: ``minimize_lbfgs``, the ``scipy.optimize.minimize`` plug-in
``lbfgs`` (a drop-in for ``method='L-BFGS-B'``) and the stepwise ``LBFGS``.

The iteration runs in Cython (``fastopt/minimize/_lbfgs.pyx``); this module checks arguments, prepares the
objective (SciPy's finite differences when there is no gradient) and packs SciPy's result.

Algorithm. Without bounds, the search direction ``d = -H g`` comes from the two-loop recursion
over the ``m`` newest pairs ``s_i = x_{i+1} - x_i``, ``y_i = g_{i+1} - g_i``,
``rho_i = 1 / (s_i'y_i)`` (Nocedal & Wright, Alg. 7.4)::

    q = -g
    for i = k-1, ..., k-m:   a_i = rho_i s_i'q;   q = q - a_i y_i
    r = gamma q,             gamma = s_{k-1}'y_{k-1} / y_{k-1}'y_{k-1}
    for i = k-m, ..., k-1:   b_i = rho_i y_i'r;   r = r + (a_i - b_i) s_i
    d = r

With bounds ``l <= x <= u`` it is L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995, with the subspace
step of Morales & Nocedal 2011): the generalized Cauchy point along the projected gradient path,
a quasi-Newton step on the variables free there, projected back into the box. Both search along
d with Moré–Thuente (``f(x + stp d) <= f(x) + c1 stp g'd`` and ``|g(x + stp d)'d| <= c2 |g'd|``,
every trial projected into the box), or backtracking Armijo. A pair with ``s'y <= eps (-g's)``
-- curvature along the step negligible next to the slope -- is not stored.

With ``l1 = alpha > 0`` the objective is ``f(x) + alpha ||x||_1``, minimized by OWL-QN (Andrew &
Gao 2007): the same two-loop direction from the pseudo-gradient, kept in its orthant.
"""
import numpy as np

from .. import _validation as V
from ._compiled import lbfgs as _lbfgs
from . import _common as C
from ._stepwise import StepwiseEngine, check_lbfgs_options

__all__ = ["minimize_lbfgs", "lbfgs", "LBFGS"]

# L-BFGS-B options that have no meaning here (no printing, no Hessians, no constraints).
_IGNORED_OPTIONS = {"return_all", "hess", "hessp", "bounds", "constraints"}
_OPTIONS = {"m", "maxcor", "gtol", "ftol", "maxiter", "maxfun", "maxls", "line_search", "c1",
            "c2", "eps", "finite_diff_rel_step", "workers", "disp", "iprint", "l1"}


def minimize_lbfgs(fun, x0, args=(), jac=True, bounds=None, m=10, gtol=1e-5,
                   ftol=2.2204460492503131e-09, maxiter=15000, maxfun=15000, maxls=20,
                   callback=None, line_search="more-thuente", c1=1e-3, c2=0.9, eps=1e-8,
                   finite_diff_rel_step=None, workers=None, l1=0.0):
    """Minimize ``fun`` with L-BFGS (L-BFGS-B with ``bounds``, OWL-QN with ``l1``).

    Parameters
    ----------
    fun : callable
        ``fun(x, *args)``; returns ``(f, g)`` if ``jac`` is True, else ``f`` (a scalar or any
        size-1 array).
    x0 : array_like, shape (n,)
        Start point, projected into the bounds. Without bounds, float32 input is kept in float32
        (x, gradients, history); anything else is converted to float64. Must be finite.
    args : tuple
        Extra arguments for ``fun`` and ``jac``.
    jac : True, callable, None, '2-point', '3-point' or 'cs'
        True if ``fun`` returns the gradient too; a callable ``jac(x, *args)`` returning it; or
        finite differences by SciPy's ``approx_derivative`` (within the bounds): None is forward
        differences with absolute step ``eps``, the strings use the relative step
        ``finite_diff_rel_step``. Evaluations are then counted as SciPy counts them.
    bounds : scipy.optimize.Bounds or sequence of (min, max), optional
        Box constraints; None or +-inf for an open side.
    m : int
        Number of correction pairs kept (L-BFGS-B's ``maxcor``).
    gtol : float
        Success when ``max_i |proj g_i| <= gtol`` (the projected gradient: components pushing
        against an active bound do not count).
    ftol : float
        Success when ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``.
    maxiter, maxfun : int or float
        Iteration and evaluation limits (status 1), checked after each iteration as L-BFGS-B
        does (a last line search may exceed ``maxfun``). Real numbers are taken as SciPy takes
        them; ``maxiter <= 1`` runs one iteration.
    maxls : int
        Maximum evaluations per line search.
    callback : callable, optional
        ``callback(xk)`` or ``callback(intermediate_result)`` after each iteration; raising
        ``StopIteration`` stops the run (status 99).
    line_search : {"more-thuente", "armijo"}
        Strong Wolfe search of Moré & Thuente (MINPACK-2 dcsrch), or backtracking Armijo with
        safeguarded quadratic interpolation.
    c1, c2 : float
        Sufficient-decrease and curvature constants, ``0 < c1 < c2 < 1`` (L-BFGS-B's 1e-3, 0.9).
    eps, finite_diff_rel_step, workers
        Finite-difference step (absolute, for ``jac=None``), relative step (for the schemes)
        and map-like for parallel evaluation, as in SciPy.
    l1 : float or array_like, shape (n,)
        Weights ``w_i >= 0`` of an L1 penalty ``sum_i w_i |x_i|`` added to ``fun`` (a number:
        the same for every coordinate; 0 for one that must not be penalized, such as an
        intercept). Minimized by OWL-QN (Andrew & Gao 2007), which needs an analytic gradient of
        the smooth part and no bounds. ``fun`` in the result includes the penalty and ``jac`` is
        then the pseudo-gradient (the minimum-norm subgradient; 0 at the optimum).

    Returns
    -------
    OptimizeResult
        ``x, fun, jac, nit, nfev, njev, status, success, message, hess_inv`` as SciPy's
        L-BFGS-B: ``status`` 0 (converged), 1 (maxiter or maxfun reached), 2 (line search
        failed, or non-finite values: x is then the last finite iterate) or 99 (the callback
        raised StopIteration); ``hess_inv`` is a ``scipy.optimize.LbfgsInvHessProduct``.

    Notes
    -----
    If the line search fails, the history is dropped and the step retried along steepest
    descent; a failure with an empty history ends the run with status 2. Trials where ``fun``
    returns NaN or Inf are cut back toward the last finite point instead of being used.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.optimize import rosen, rosen_der
    >>> import fastopt
    >>> result = fastopt.minimize_lbfgs(lambda x: (rosen(x), rosen_der(x)), np.zeros(5))
    >>> bool(result.success), bool(np.allclose(result.x, 1.0, atol=1e-4))
    (True, True)

    With bounds (L-BFGS-B), and with an L1 penalty (OWL-QN), on
    :math:`\\lVert x - (1, 2, 3) \\rVert^2`:

    >>> def fun(x):
    ...     r = x - np.array([1.0, 2.0, 3.0])
    ...     return r @ r, 2 * r
    >>> np.round(fastopt.minimize_lbfgs(fun, np.zeros(3), bounds=[(0, 1.5)] * 3).x, 6)
    array([1. , 1.5, 1.5])
    >>> np.round(fastopt.minimize_lbfgs(fun, np.zeros(3), l1=2.0).x, 6) + 0.0
    array([0., 1., 2.])
    """
    if not isinstance(args, tuple):
        args = (args,)
    jac = C.check_jac(jac)
    m = V.check_count("m", m, 1)
    gtol = V.check_tolerance("gtol", gtol)
    ftol = V.check_tolerance("ftol", ftol)
    maxiter_limit = V.check_limit("maxiter", maxiter, exceeded=False)
    maxfun_limit = V.check_limit("maxfun", maxfun, exceeded=True)
    maxls = V.check_count("maxls", maxls, 1)
    if not isinstance(line_search, str) or line_search.lower() not in V.LINE_SEARCHES:
        raise ValueError(f"line_search must be one of {sorted(V.LINE_SEARCHES)}, got "
                         f"{line_search!r}")
    line_search = line_search.lower()
    c1, c2 = V.check_line_search_constants(c1, c2)
    analytic = jac is True or callable(jac)
    penalized = not (np.isscalar(l1) and l1 == 0)
    x = V.check_start_point(x0, keep_float32=analytic and bounds is None and not penalized)
    n = x.size
    weights = V.check_l1_weights(l1, n) if penalized else None
    penalized = penalized and bool(weights.any())

    lower = upper = None
    if bounds is not None:
        lower, upper = V.check_box(bounds, n)
        if np.isinf(lower).all() and np.isinf(upper).all():
            lower = upper = None
        else:
            x = np.clip(x, lower, upper)
    if penalized:
        if lower is not None:
            raise ValueError("l1: OWL-QN takes no bounds")
        if not analytic:
            raise ValueError("l1: OWL-QN needs the gradient of the smooth part (jac=True or a "
                             "callable)")
    if lower is not None:
        fixed = lower == upper
        if fixed.all():
            return C.all_fixed_result(fun, jac, args, lower.copy())
        if fixed.any() and not analytic:
            return _without_fixed(fun, x, args, jac, lower, upper, fixed, callback,
                                  dict(m=m, gtol=gtol, ftol=ftol, maxiter=maxiter,
                                       maxfun=maxfun, maxls=maxls, line_search=line_search,
                                       c1=c1, c2=c2, eps=eps,
                                       finite_diff_rel_step=finite_diff_rel_step,
                                       workers=workers))

    fun, jac, args, counter = C.prepare_objective(
        fun, x, args, jac, None if lower is None else (lower, upper), eps,
        finite_diff_rel_step, workers)
    adapted, wrapped = C.adapt_callback(callback)
    options = _lbfgs.LbfgsOptions(m=m, gtol=gtol, ftol=ftol, maxiter=maxiter_limit,
                                  maxfun=maxfun_limit, maxls=maxls,
                                  line_search=line_search, c1=c1, c2=c2, callback=adapted)
    if penalized:
        run = _lbfgs._run_owlqn(fun, jac, args, x, weights, options, counter)
    elif lower is None and analytic:
        run = _lbfgs._run(fun, jac, args, x, options, counter)
    else:
        # With finite differences the evaluations dominate, so the iteration is L-BFGS-B's
        # compact form even without bounds: its rounding, and so SciPy's evaluation count.
        if lower is None:
            lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        run = _lbfgs._run_bounded(fun, jac, args, x, lower, upper,
                                  C.kind_of_bounds(lower, upper), options, counter)
    nfev, njev = run.nfev, run.njev
    if counter is not None:
        nfev, njev = counter.nfev, counter.ngev
    status, message = run.status, run.message
    if status == 99:
        status, message = C.callback_stop_status(wrapped, run.nit, maxiter_limit, nfev,
                                                 maxfun_limit)
    from scipy.optimize import OptimizeResult   # imported when first needed: see _common
    return OptimizeResult(x=run.x, fun=np.float64(run.f), jac=run.g, nit=run.nit, nfev=nfev,
                          njev=njev, status=status, success=status == 0, message=message,
                          hess_inv=C.hess_inv_operator(run.pairs, run.newest, run.count,
                                                       run.updates, m))


def _without_fixed(fun, x, args, jac, lower, upper, fixed, callback, options):
    """Minimize over the variables the bounds leave free (finite differences must not step a
    fixed one), as SciPy's ``minimize`` does; the result is over all variables, ``jac`` NaN and
    ``hess_inv`` None for the fixed ones."""
    reduced = C.WithFixed(fun, fixed, lower[fixed])
    adapted = None
    if callback is not None:
        inner, _ = C.adapt_callback(callback)

        def adapted(xk):
            return inner(reduced.full(xk), None)
    result = minimize_lbfgs(reduced, x[~fixed], args=args, jac=jac,
                            bounds=list(zip(lower[~fixed], upper[~fixed])), callback=adapted,
                            **options)
    result.x = reduced.full(result.x)
    jac_full = np.full(fixed.size, np.nan)
    jac_full[~fixed] = result.jac
    result.jac = jac_full
    result.hess_inv = None
    return result


def lbfgs(fun, x0, args=(), jac=None, hess=None, hessp=None, bounds=None, constraints=(),
          callback=None, tol=None, **options):
    """L-BFGS-B as a custom method for :func:`scipy.optimize.minimize`.

    ``scipy.optimize.minimize(fun, x0, method=fastopt.lbfgs, bounds=..., options={...})`` is a
    drop-in for ``method='L-BFGS-B'``: the same options (``maxcor``, ``ftol``, ``gtol``,
    ``eps``, ``maxfun``, ``maxiter``, ``maxls``, ``finite_diff_rel_step``, ``workers``;
    ``disp`` and ``iprint`` with SciPy's deprecation warning), bounds, gradients (``jac=True``,
    a callable, or finite differences when ``jac`` is not given), results and messages, plus
    those of :func:`minimize_lbfgs` (``m`` for ``maxcor``, ``line_search``, ``c1``, ``c2``,
    ``l1``). ``tol`` sets ``gtol`` and ``ftol`` unless they are given. ``hess`` and ``hessp``
    are ignored; constraints are refused. Unknown options are ignored with an
    ``OptimizeWarning``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.optimize import minimize, rosen, rosen_der
    >>> import fastopt
    >>> ours = minimize(rosen, np.zeros(5), jac=rosen_der, method=fastopt.lbfgs,
    ...                 bounds=[(-2, 0.5)] * 5, options={"maxcor": 10})
    >>> scipy = minimize(rosen, np.zeros(5), jac=rosen_der, method="L-BFGS-B",
    ...                  bounds=[(-2, 0.5)] * 5, options={"maxcor": 10})
    >>> ours.message == scipy.message, bool(np.allclose(ours.x, scipy.x, atol=1e-6))
    (True, True)
    """
    if constraints:
        raise ValueError("constraints: fastopt.lbfgs handles bounds only; use "
                         "method='SLSQP' or 'trust-constr' for general constraints")
    options = dict(options)
    if "maxcor" in options:
        options.setdefault("m", options["maxcor"])
    if tol is not None:
        options.setdefault("gtol", tol)
        options.setdefault("ftol", tol)
    C.warn_deprecated_display(options.pop("disp", None), options.pop("iprint", None))
    C.warn_unknown_options(set(options) - _OPTIONS - _IGNORED_OPTIONS)
    kwargs = {k: v for k, v in options.items() if k in _OPTIONS and k != "maxcor"}
    return minimize_lbfgs(fun, x0, args=args, jac=jac, bounds=bounds, callback=callback,
                          **kwargs)


class LBFGS:
    """Stepwise L-BFGS over NumPy arrays, with the semantics of ``torch.optim.LBFGS``.

    Parameters
    ----------
    params : sequence of ndarray
        Float arrays (one dtype), updated in place.
    lr : float
        Step length (``t = lr``; on the very first iteration ``t = min(1, 1/||g||_1) lr``);
        ``lr >= 0`` as torch requires (``lr = 0`` takes steps of length zero).
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
        None takes the fixed step ``t``; "strong_wolfe" searches from ``t`` for the strong Wolfe
        conditions as torch does (``c1 = 1e-4``, ``c2 = 0.9``, within ``max_eval``).
    bounds : scipy.optimize.Bounds or sequence of (min, max), optional
        Box constraints on the flattened parameters (torch has none). With bounds each
        :meth:`step` runs L-BFGS-B (:func:`fastopt.minimize_lbfgs` with ``bounds``) from the
        current point for up to ``max_iter`` iterations and ``max_eval`` evaluations, with
        ``history_size`` pairs, stopping on ``tolerance_grad`` (projected gradient) and
        ``tolerance_change`` (relative reduction of the loss); its projected line search
        replaces ``lr`` / ``line_search_fn``, and the history starts afresh at every step. The
        parameters are projected into the box first.

    Notes
    -----
    ``closure()`` must re-evaluate the model at the current values of ``params`` and return
    ``(loss, grads)`` with ``grads`` a list aligned with ``params``. As in torch, pairs with
    ``y's <= 1e-10`` are skipped and ``H0 = (y's / y'y) I`` from the newest stored pair.

    Examples
    --------
    >>> import numpy as np
    >>> import fastopt
    >>> x = np.zeros(2)
    >>> target = np.array([1.0, -2.0])
    >>> def closure():                    # the loss and the gradients, at the current x
    ...     r = x - target
    ...     return float(r @ r), [2 * r]
    >>> opt = fastopt.LBFGS([x], line_search_fn="strong_wolfe")
    >>> opt.step(closure)                 # the loss before the step, as torch returns it
    5.0
    >>> np.round(x, 6) + 0.0
    array([ 1., -2.])
    """

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, bounds=None):
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
        (self.lr, self.max_iter, self.max_eval, self.tolerance_grad, self.tolerance_change,
         self.history_size, self.line_search_fn) = check_lbfgs_options(
            lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
            line_search_fn)
        self.params = params
        self.dtype = params[0].dtype
        self._n = sum(p.size for p in params)
        self._engine = StepwiseEngine(self._n, self.dtype, self.history_size)
        self.bounds = None if bounds is None else V.check_box(bounds, self._n)

    @property
    def state(self):
        return self._engine.state

    def _evaluate(self, closure):
        result = closure()
        try:
            if isinstance(result, V.TEXT_TYPES):    # "ab" would unpack into two characters
                raise TypeError
            loss, grads = result
        except (TypeError, ValueError):
            raise TypeError(
                "closure must return (loss, grads) with grads a list of arrays aligned with "
                f"params, got {type(result).__name__}; this LBFGS works on NumPy arrays, "
                "without autograd, so the closure computes the gradients and returns them with "
                "the loss (fastopt.torch.LBFGS takes a closure that calls backward() and "
                "returns the loss)") from None
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
        return V.objective_value(loss, source="closure"), flat

    def _get_flat(self):
        return np.concatenate([p.ravel() for p in self.params]).astype(self.dtype, copy=False)

    def _set_flat(self, flat):
        offset = 0
        for p in self.params:
            p[...] = flat[offset:offset + p.size].reshape(p.shape)
            offset += p.size

    def _add(self, t, d):
        offset = 0
        for p in self.params:
            p += (t * d[offset:offset + p.size]).reshape(p.shape).astype(self.dtype, copy=False)
            offset += p.size

    def step(self, closure):
        """Run up to ``max_iter`` L-BFGS iterations; returns the loss at the entry point."""
        if self.bounds is not None:
            return self._bounded_step(closure)
        return self._engine.step(closure, self._evaluate, self._get_flat, self._set_flat,
                                 self._add, self.lr, self.max_iter, self.max_eval,
                                 self.tolerance_grad, self.tolerance_change, self.line_search_fn)

    def _bounded_step(self, closure):
        lower, upper = self.bounds
        self._set_flat(np.clip(self._get_flat(), lower, upper))
        entry = []

        def fun(x):
            self._set_flat(x)
            loss, grad = self._evaluate(closure)
            if not entry:
                entry.append(loss)
            return loss, grad.astype(np.float64)

        result = minimize_lbfgs(fun, self._get_flat().astype(np.float64),
                                bounds=list(zip(lower, upper)), m=self.history_size,
                                gtol=self.tolerance_grad, ftol=self.tolerance_change,
                                maxiter=self.max_iter, maxfun=self.max_eval)
        self._set_flat(result.x)
        self.state["func_evals"] += result.nfev
        self.state["n_iter"] += result.nit
        return entry[0]
