"""Limited-memory BFGS with bounds: ``minimize_lbfgs``, the ``scipy.optimize.minimize`` plug-in
``lbfgs`` (a drop-in for ``method='L-BFGS-B'``) and the stepwise ``LBFGS``.

The iteration runs in Cython (:mod:`fastopt._lbfgs`); this module checks arguments, prepares the
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

from . import _lbfgs
from . import _minimize_common as C
from . import _validation as V
from ._lbfgs import MoreThuente, two_loop_direction
from ._lbfgs_stepwise import LBFGS

__all__ = ["minimize_lbfgs", "lbfgs", "LBFGS", "MoreThuente", "two_loop_direction"]

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
    armijo = V.LINE_SEARCHES[line_search.lower()]
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
    common = (m, gtol, ftol, maxiter_limit, maxfun_limit, maxls, armijo, c1, c2, adapted,
              counter)
    if penalized:
        out = _lbfgs._run_owlqn(fun, jac, args, x, weights, *common)
    elif lower is None and analytic:
        out = _lbfgs._run(fun, jac, args, x, *common)
    else:
        # With finite differences the evaluations dominate, so the iteration is L-BFGS-B's
        # compact form even without bounds: its rounding, and so SciPy's evaluation count.
        if lower is None:
            lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
        out = _lbfgs._run_bounded(fun, jac, args, x, lower, upper,
                                  C.kind_of_bounds(lower, upper), *common)
    x, f, g, nit, nfev, njev, status, message, pairs, newest, count, updates = out
    if counter is not None:
        nfev, njev = counter.nfev, counter.ngev
    if status == 99:
        status, message = C.callback_stop_status(wrapped, nit, maxiter_limit, nfev, maxfun_limit)
    from scipy.optimize import OptimizeResult   # imported when first needed: see _minimize_common
    return OptimizeResult(x=x, fun=np.float64(f), jac=g, nit=nit, nfev=nfev, njev=njev,
                          status=status, success=status == 0, message=message,
                          hess_inv=C.hess_inv_operator(pairs, newest, count, updates, m))


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
