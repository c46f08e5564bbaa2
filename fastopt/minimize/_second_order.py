"""Newton's method (plain and saddle-free), dense BFGS, and critical-point classification.

These are for small problems (the Hessian or inverse-Hessian approximation is a dense n x n
matrix), so they are plain NumPy around the Moré–Thuente line search of ``fastopt/minimize/_lbfgs.pyx``.
All return :class:`scipy.optimize.OptimizeResult` with the fields of
:func:`fastopt.minimize_lbfgs`.
"""
import numpy as np

from ._compiled import lbfgs as _lbfgs
from .._validation import check_search_options as _check_search_options
from .._validation import check_tolerance as _check_tolerance
from ._common import (MESSAGES, STATUS_ABNORMAL, STATUS_CALLBACK, STATUS_CONVERGED, STATUS_LIMIT,
                      CountedObjective, adapt_callback, reduction_small, stopping_status)

__all__ = ["newton", "minimize_bfgs", "classify_critical_point"]


def classify_critical_point(H, tol=1e-8):
    """Classify a critical point by the eigenvalues of its Hessian ``H``.

    Eigenvalues with ``|lambda| <= tol * max(1, max |lambda|)`` count as zero. Returns

    * ``"saddle"`` if there are eigenvalues of both signs (H indefinite: f decreases along one
      eigenvector and increases along another, whatever the higher-order terms),
    * ``"degenerate"`` if H is semi-definite with a zero eigenvalue (the second-order test is
      inconclusive),
    * ``"minimum"`` if all eigenvalues are positive, ``"maximum"`` if all are negative.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import classify_critical_point
    >>> classify_critical_point(np.diag([2.0, 1.0]))
    'minimum'
    >>> classify_critical_point(np.diag([2.0, -1.0]))         # f = x^2 - y^2/2 at 0
    'saddle'
    >>> classify_critical_point(np.diag([0.0, 1.0]))
    'degenerate'
    """
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H must be finite")
    tol = _check_tolerance("tol", tol)
    eigenvalues = np.linalg.eigvalsh(0.5 * (H + H.T))
    threshold = tol * max(1.0, np.abs(eigenvalues).max(initial=0.0))
    positive = eigenvalues > threshold
    negative = eigenvalues < -threshold
    if positive.any() and negative.any():
        return "saddle"
    if not np.all(positive | negative):
        return "degenerate"
    return "minimum" if positive.all() else "maximum"


def _search(objective, x, f, g, d, maxls, maxfun, armijo, c1, c2, stp0=1.0):
    """Line search along d from x. Returns ``(ok, x_new, f_new, g_new, nonfinite_seen)``.

    Moré–Thuente (strong Wolfe) or backtracking Armijo; trials with NaN or Inf are cut back to
    a tenth of the way from the best finite step, and the step is capped below them.

    The Moré–Thuente steps are the compiled ``dcsrch`` (:class:`MoreThuente`), the one shared
    with L-BFGS. The loop around it is these methods' own and stays here: it never evaluates
    past ``maxfun``, falls back on the best sufficient-decrease point when ``maxls`` trials find
    no strong Wolfe point, and forms trial points in NumPy, whereas the compiled L-BFGS search
    takes the step dcsrch ends on and forms them with fused multiply-adds -- the same loop for
    both would change one or the other's results.
    """
    slope0 = float(g @ d)
    nonfinite = False
    if armijo:
        stp = stp0
        for _ in range(maxls):
            if objective.nfev >= maxfun:
                break
            x_new = x + stp * d
            f_new, g_new = objective(x_new)
            if not (np.isfinite(f_new) and np.all(np.isfinite(g_new))):
                nonfinite = True
                stp *= 0.1
                continue
            if f_new <= f + c1 * stp * slope0:
                return True, x_new, f_new, g_new, nonfinite
            denom = 2.0 * (f_new - f - slope0 * stp)
            trial = -slope0 * stp * stp / denom if denom > 0 else 0.5 * stp
            stp = min(max(trial, 0.1 * stp), 0.5 * stp)
        return False, x, f, g, nonfinite

    search = _lbfgs.MoreThuente(c1=c1, c2=c2)
    stp, task = search.start(f, slope0, stp0)
    best = None
    evals = 0
    while task == "FG" and evals < maxls and objective.nfev < maxfun:
        x_new = x + stp * d
        f_new, g_new = objective(x_new)
        evals += 1
        if not (np.isfinite(f_new) and np.all(np.isfinite(g_new))):
            nonfinite = True
            search.limit_step(stp)
            stp = search.best_step + 0.1 * (stp - search.best_step)
            continue
        if f_new <= f + c1 * stp * slope0 and (best is None or f_new < best[1]):
            best = (x_new, f_new, g_new)
        stp, task = search.iterate(f_new, float(g_new @ d), stp)
        if task == "CONVERGENCE":
            return True, x_new, f_new, g_new, nonfinite
    if best is not None and best[1] < f:
        # No strong Wolfe point within maxls, but sufficient decrease was had: keep it.
        return True, best[0], best[1], best[2], nonfinite
    return False, x, f, g, nonfinite


def _result(x, f, g, nit, objective, status, message, **extra):
    from scipy.optimize import OptimizeResult   # imported when first needed: see _common
    return OptimizeResult(x=x, fun=f, jac=g, nit=nit, nfev=objective.nfev, njev=objective.njev,
                          status=status, success=status == 0, message=message, **extra)


def _call_callback(callback, x, f):
    """True if the callback asked to stop."""
    if callback is None:
        return False
    try:
        callback(x.copy(), f)
    except StopIteration:
        return True
    return False


def _stop_after_step(f_old, f, g, nit, nfev, gtol, ftol, maxiter, maxfun, change):
    """The stopping tests after an accepted step, in the minimizers' one order
    (:func:`fastopt.minimize._common.stopping_status`): ``(status, message)``, or None to go on.

    ``change`` is the f change the ftol test measures (``f_old - f``, or its absolute value for a
    method that may go uphill).
    """
    return stopping_status(nit, maxiter, nfev, maxfun, np.abs(g).max() <= gtol,
                           reduction_small(change, f_old, f, ftol), converged=("gtol", "ftol"))


def newton(fun, x0, jac, hess, args=(), saddle_free=False, gtol=1e-8, ftol=0.0, maxiter=100,
           maxfun=1000, maxls=20, eigenvalue_floor=1e-8, callback=None,
           line_search="more-thuente", c1=1e-4, c2=0.9):
    """Newton's method with a line search, optionally saddle-free.

    Parameters
    ----------
    fun, jac : callable
        ``fun(x, *args)``; with ``jac=True`` it returns ``(f, g)``, else ``jac(x, *args)``
        returns g.
    hess : callable
        ``hess(x, *args)`` returns the n x n Hessian.
    saddle_free : bool
        False: the Newton step ``p = -H^{-1} g``. True: ``p = -|H|^{-1} g`` with
        ``|H| = V diag(max(|lambda_i|, floor)) V'`` from the eigendecomposition
        ``H = V diag(lambda) V'`` (Dauphin et al., 2014), where
        ``floor = eigenvalue_floor * max(1, max |lambda|)``. ``|H|`` is positive definite, so p is
        always a descent direction: along negative-curvature directions it moves downhill, away
        from saddle points, instead of jumping onto them.
    gtol, ftol : float
        Success when ``max |g| <= gtol`` or ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``.
    maxiter, maxfun, maxls : int
        Limits on iterations, evaluations, and evaluations per line search. As in SciPy's
        L-BFGS-B, the limits are tested before convergence: a run whose last permitted iteration
        also converges reports the limit (status 1).

    Returns
    -------
    OptimizeResult
        With ``x, fun, jac, nit, nfev, njev, nhev, status, success, message``.

    Notes
    -----
    The step length starts at 1. When H is positive definite, the Newton step ``p`` is a descent
    direction and the line search is on f. When it is not, plain Newton does what the pure Newton
    iteration does -- it looks for a zero of the gradient -- and backtracks on the merit function
    ``||g||^2``, whose slope along p is ``2 g'Hp = -2 ||g||^2 < 0``. So plain Newton converges to
    whatever critical point is near, saddle or not; check the result with
    :func:`classify_critical_point`, or use ``saddle_free=True`` to minimize.

    Examples
    --------
    :math:`f(x, y) = x^2 - y^2 + y^4 / 4` has a saddle at the origin and minima at
    :math:`y = \\pm\\sqrt 2`. Started near the saddle, plain Newton converges to it; the
    saddle-free step moves downhill to a minimum:

    >>> import numpy as np
    >>> import fastopt
    >>> def fun(z):
    ...     x, y = z
    ...     return x * x - y * y + y ** 4 / 4, np.array([2 * x, -2 * y + y ** 3])
    >>> def hess(z):
    ...     return np.array([[2.0, 0.0], [0.0, -2.0 + 3 * z[1] ** 2]])
    >>> plain = fastopt.newton(fun, np.array([0.5, 0.1]), jac=True, hess=hess)
    >>> np.round(plain.x, 6) + 0.0, fastopt.classify_critical_point(hess(plain.x))
    (array([0., 0.]), 'saddle')
    >>> free = fastopt.newton(fun, np.array([0.5, 0.1]), jac=True, hess=hess, saddle_free=True)
    >>> np.round(free.x, 6) + 0.0, fastopt.classify_critical_point(hess(free.x))
    (array([0.      , 1.414214]), 'minimum')
    """
    if not isinstance(args, tuple):
        args = (args,)
    x, gtol, ftol, maxiter, maxfun, maxls, armijo = _check_search_options(
        x0, gtol, ftol, maxiter, maxfun, maxls, line_search, c1, c2)
    x = x.astype(np.float64)
    if not callable(hess):
        raise TypeError(f"hess must be callable, got {type(hess).__name__}")
    floor = _check_tolerance("eigenvalue_floor", eigenvalue_floor)
    n = x.size
    objective = CountedObjective(fun, jac, args, n, np.float64)
    callback = adapt_callback(callback)[0]
    nhev = 0

    f, g = objective(x)
    if not (np.isfinite(f) and np.all(np.isfinite(g))):
        return _result(x, f, g, 0, objective, STATUS_ABNORMAL, MESSAGES["nonfinite_x0"], nhev=nhev)
    if np.abs(g).max() <= gtol:
        return _result(x, f, g, 0, objective, STATUS_CONVERGED, MESSAGES["gtol"], nhev=nhev)
    nit = 0
    while True:
        H = np.asarray(hess(x.copy(), *args), dtype=np.float64)
        nhev += 1
        if H.shape != (n, n):
            raise ValueError(f"hess: the Hessian must have shape ({n}, {n}), got {H.shape}")
        if not np.all(np.isfinite(H)):
            return _result(x, f, g, nit, objective, STATUS_ABNORMAL, MESSAGES["nonfinite_hessian"], nhev=nhev)
        H = 0.5 * (H + H.T)
        if saddle_free:
            eigenvalues, V = np.linalg.eigh(H)
            magnitude = np.abs(eigenvalues)
            magnitude = np.maximum(magnitude, floor * max(1.0, magnitude.max()))
            p = -V @ ((V.T @ g) / magnitude)
            positive_definite = True
        else:
            try:
                p = -_cho_solve(np.linalg.cholesky(H), g)
                positive_definite = True
            except np.linalg.LinAlgError:
                positive_definite = False
                try:
                    p = np.linalg.solve(H, -g)
                except np.linalg.LinAlgError:
                    p = np.linalg.lstsq(H, -g, rcond=None)[0]
        if positive_definite and float(g @ p) < 0.0:
            ok, x_new, f_new, g_new, nonfinite = _search(objective, x, f, g, p, maxls, maxfun,
                                                         armijo, c1, c2)
        else:
            ok, x_new, f_new, g_new, nonfinite = _gradient_norm_search(objective, x, f, g, p,
                                                                        maxls, maxfun)
        if not ok:
            if objective.nfev >= maxfun:
                return _result(x, f, g, nit, objective, STATUS_LIMIT, MESSAGES["maxfun"], nhev=nhev)
            return _result(x, f, g, nit, objective, STATUS_ABNORMAL,
                           MESSAGES["nonfinite"] if nonfinite else MESSAGES["line_search"], nhev=nhev)
        f_old, x, f, g = f, x_new, f_new, g_new
        nit += 1
        if _call_callback(callback, x, f):
            return _result(x, f, g, nit, objective, STATUS_CALLBACK, MESSAGES["callback_stop"], nhev=nhev)
        stop = _stop_after_step(f_old, f, g, nit, objective.nfev, gtol, ftol, maxiter, maxfun,
                                abs(f_old - f))
        if stop is not None:
            return _result(x, f, g, nit, objective, *stop, nhev=nhev)
        if objective.nfev >= maxfun:
            # The line search evaluates at most up to maxfun, so the budget is spent: stop
            # before computing a Hessian no line search could use.
            return _result(x, f, g, nit, objective, STATUS_LIMIT, MESSAGES["maxfun"], nhev=nhev)


def _cho_solve(L, b):
    """Solve (L L') x = b for lower-triangular L."""
    from scipy.linalg import solve_triangular
    return solve_triangular(L.T, solve_triangular(L, b, lower=True), lower=False)


def _gradient_norm_search(objective, x, f, g, p, maxls, maxfun):
    """Backtrack on ``phi(t) = ||g(x + t p)||^2`` (slope ``-2 ||g||^2`` at 0 for a Newton step)."""
    merit0 = float(g @ g)
    stp = 1.0
    for _ in range(maxls):
        if objective.nfev >= maxfun:
            break
        x_new = x + stp * p
        f_new, g_new = objective(x_new)
        if np.isfinite(f_new) and np.all(np.isfinite(g_new)):
            if float(g_new @ g_new) <= (1.0 - 2e-4 * stp) * merit0:
                return True, x_new, f_new, g_new, False
        stp *= 0.5
    return False, x, f, g, False


def minimize_bfgs(fun, x0, args=(), jac=True, gtol=1e-5, ftol=2.2e-9, maxiter=15000,
                  maxfun=15000, maxls=20, callback=None, line_search="more-thuente", c1=1e-4,
                  c2=0.9):
    """Dense BFGS for small n, with the API and result of :func:`fastopt.minimize_lbfgs`.

    The inverse Hessian approximation is updated with ``rho = 1 / (s'y)``::

        H <- (I - rho s y') H (I - rho y s') + rho s s'

    starting from ``H0 = I`` scaled, before the first update, by ``gamma = s'y / y'y``
    (Nocedal & Wright, eq. 6.20). Pairs with ``s'y <= eps (-g's)`` are skipped; if the line
    search fails, H is reset to the identity and steepest descent tried once before giving up.
    The stopping tests run in L-BFGS-B's order (limits before convergence). The result also
    carries ``hess_inv``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.optimize import rosen, rosen_der
    >>> import fastopt
    >>> result = fastopt.minimize_bfgs(lambda x: (rosen(x), rosen_der(x)), np.zeros(5))
    >>> bool(result.success), bool(np.allclose(result.x, 1.0, atol=1e-4)), result.hess_inv.shape
    (True, True, (5, 5))
    """
    if not isinstance(args, tuple):
        args = (args,)
    x, gtol, ftol, maxiter, maxfun, maxls, armijo = _check_search_options(
        x0, gtol, ftol, maxiter, maxfun, maxls, line_search, c1, c2)
    dtype = x.dtype
    eps = np.finfo(dtype).eps
    n = x.size
    objective = CountedObjective(fun, jac, args, n, dtype)
    callback = adapt_callback(callback)[0]

    f, g = objective(x)
    identity = np.eye(n)
    H = identity.copy()
    if not (np.isfinite(f) and np.all(np.isfinite(g))):
        return _result(x, f, g, 0, objective, STATUS_ABNORMAL, MESSAGES["nonfinite_x0"], hess_inv=H)
    if np.abs(g).max() <= gtol:
        return _result(x, f, g, 0, objective, STATUS_CONVERGED, MESSAGES["gtol"], hess_inv=H)
    fresh = True
    nit = 0
    while True:
        d = -(H @ g).astype(dtype) if not fresh else -g
        if not fresh and not float(g @ d) < 0.0:
            H, fresh, d = identity.copy(), True, -g
        stp0 = min(1.0 / np.linalg.norm(d), 1e10) if fresh else 1.0
        ok, x_new, f_new, g_new, nonfinite = _search(objective, x, f, g, d, maxls, maxfun,
                                                     armijo, c1, c2, stp0)
        if not ok:
            if objective.nfev >= maxfun:
                return _result(x, f, g, nit, objective, STATUS_LIMIT, MESSAGES["maxfun"], hess_inv=H)
            if not fresh:
                H, fresh = identity.copy(), True
                continue
            return _result(x, f, g, nit, objective, STATUS_ABNORMAL,
                           MESSAGES["nonfinite"] if nonfinite else MESSAGES["line_search"], hess_inv=H)
        s = (x_new - x).astype(np.float64)
        y = (g_new - g).astype(np.float64)
        sy = float(s @ y)
        if sy > eps * -float(g @ s):
            if fresh:
                H = identity * (sy / float(y @ y))
            rho = 1.0 / sy
            Hy = H @ y
            # (I - rho s y') H (I - rho y s') + rho s s', expanded to rank-two updates
            H = H - rho * (np.outer(s, Hy) + np.outer(Hy, s)) \
                + (rho * rho * float(y @ Hy) + rho) * np.outer(s, s)
            fresh = False
        f_old, x, f, g = f, x_new, f_new, g_new
        nit += 1
        if _call_callback(callback, x, f):
            return _result(x, f, g, nit, objective, STATUS_CALLBACK, MESSAGES["callback_stop"], hess_inv=H)
        stop = _stop_after_step(f_old, f, g, nit, objective.nfev, gtol, ftol, maxiter, maxfun,
                                f_old - f)
        if stop is not None:
            return _result(x, f, g, nit, objective, *stop, hess_inv=H)
