"""What every SciPy-compatible minimizer here shares: the objective (analytic or finite-difference
gradients), callbacks in both of SciPy's forms, the order of the stopping tests and the messages
that report them, SciPy's option warnings, bounds as L-BFGS-B stores them, and the result.

Finite differences go through SciPy's own machinery (``ScalarFunction``, as SciPy's L-BFGS-B
uses it), so step sizes, bounds handling and evaluation counts are SciPy's. With an analytic
gradient the objective is called directly from the compiled iteration instead (no caching layer),
which is where most of the per-iteration overhead SciPy spends goes.

SciPy is imported here only when a minimizer runs, never at module level: ``scipy.optimize``
costs several times what the rest of ``import fastopt`` does, and most users of fastopt only
step optimizers.
"""
import functools
import inspect
import warnings

import numpy as np

from .._validation import objective_value
from . import _scipy_compat

FINITE_DIFFERENCES = ("2-point", "3-point", "cs")
_FLOAT64 = np.dtype(np.float64)

# The one table of the minimizers' messages. Those of L-BFGS-B are SciPy's texts, which the
# compiled iteration (fastopt/minimize/_lbfgs.pyx, which cannot import this module) spells out too;
# tests/minimize/test_minimize_status.py checks that its texts are these.
MESSAGES = {
    # L-BFGS-B (fastopt.minimize_lbfgs): SciPy's texts
    "pgtol": "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL",
    "factr": "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH",
    "callback_halt": "STOP: CALLBACK REQUESTED HALT",
    "abnormal": "ABNORMAL: ",
    "all_fixed": "All independent variables were fixed by bounds.",
    # Newton and dense BFGS (no bounds, so no projected gradient; ftol is relative, not factr)
    "gtol": "CONVERGENCE: NORM OF GRADIENT <= GTOL",
    "ftol": "CONVERGENCE: RELATIVE REDUCTION OF F <= FTOL",
    "line_search": "ABNORMAL: LINE SEARCH FAILED (no step with sufficient decrease)",
    "nonfinite_hessian": "ABNORMAL: hess returned a non-finite Hessian",
    # every minimizer
    "maxiter": "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT",
    "maxfun": "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT",
    "callback_stop": "`callback` raised `StopIteration`.",      # scipy.optimize.minimize's
    "nonfinite": ("ABNORMAL: fun returned NaN or Inf along the search direction and no finite "
                  "point with sufficient decrease was found"),
    "nonfinite_x0": "ABNORMAL: fun returned a non-finite value or gradient at x0",
}
MSG_ALL_FIXED = MESSAGES["all_fixed"]
MSG_CALLBACK_STOP = MESSAGES["callback_stop"]

STATUS_CONVERGED = 0
STATUS_LIMIT = 1
STATUS_ABNORMAL = 2
STATUS_CALLBACK = 99


def reduction_small(change, f_old, f, ftol):
    """L-BFGS-B's ftol test: ``change <= ftol * max(|f_old|, |f|, 1)``, ``change`` being the
    decrease ``f_old - f`` (or its absolute value for a method that may go uphill)."""
    return change <= ftol * max(abs(f_old), abs(f), 1.0)


def stopping_status(nit, maxiter, nfev, maxfun, gradient_small, f_reduction_small,
                    converged=("pgtol", "factr")):
    """The stopping tests after an accepted step, in the one order every minimizer here uses:
    ``(status, message)``, or None to go on.

    The order is SciPy's L-BFGS-B driver's (and that of the compiled iteration,
    ``_after_iteration`` in fastopt/minimize/_lbfgs.pyx): a callback's StopIteration (handled by the
    caller, before this), then the iteration limit, then the evaluation limit (``nfev > maxfun``:
    the last line search may overrun it), and only then convergence, gradient before f
    reduction. SciPy sets ``STOP`` as soon as the limit is reached, so its iteration routine never
    gets to test convergence on that step: a run whose last permitted iteration also converges
    reports status 1. ``converged`` names the messages of the two convergence tests in
    :data:`MESSAGES`.
    """
    if nit >= maxiter:
        return STATUS_LIMIT, MESSAGES["maxiter"]
    if nfev > maxfun:
        return STATUS_LIMIT, MESSAGES["maxfun"]
    if gradient_small:
        return STATUS_CONVERGED, MESSAGES[converged[0]]
    if f_reduction_small:
        return STATUS_CONVERGED, MESSAGES[converged[1]]
    return None


def not_given(value):
    """True for None and for SciPy's ``_NoValue`` marker."""
    if value is None:
        return True
    # the "not given" marker SciPy's fmin_l_bfgs_b passes for disp / iprint
    no_value = _scipy_compat.no_value_marker()
    return no_value is not None and value is no_value


def warn_deprecated_display(disp, iprint):
    """SciPy >= 1.15 deprecates L-BFGS-B's ``disp`` and ``iprint``; they print nothing here."""
    if not not_given(disp) or not not_given(iprint):
        warnings.warn("The `disp` and `iprint` options of the L-BFGS-B solver are deprecated "
                      "(SciPy 1.15) and have no effect.", DeprecationWarning, stacklevel=4)


def warn_unknown_options(options):
    if options:
        from scipy.optimize import OptimizeWarning
        warnings.warn(f"Unknown solver options: {', '.join(sorted(options))}", OptimizeWarning,
                      stacklevel=4)


def kind_of_bounds(lower, upper):
    """L-BFGS-B's ``nbd`` per variable: 0 no bound, 1 lower only, 2 both, 3 upper only."""
    has_lower = np.isfinite(lower)
    has_upper = np.isfinite(upper)
    kind = np.where(has_lower, np.where(has_upper, 2, 1), np.where(has_upper, 3, 0))
    return np.ascontiguousarray(kind, dtype=np.intc)


def check_jac(jac):
    """``jac`` as True, a callable, None (forward differences with absolute step ``eps``) or one
    of SciPy's finite-difference schemes."""
    if jac is True or callable(jac):
        return jac
    if jac is None or jac is False:
        return None
    if isinstance(jac, str) and jac in FINITE_DIFFERENCES:
        return jac
    raise ValueError(f"jac must be True, a callable, None or one of {FINITE_DIFFERENCES}, "
                     f"got {jac!r}")


def prepare_objective(fun, x0, args, jac, bounds, eps, finite_diff_rel_step, workers):
    """Return ``(fun, jac, args, counter)`` for the compiled iteration.

    Analytic gradients (``jac`` True or callable) are called directly; SciPy's MemoizeJac
    wrapper (``minimize(jac=True)``) is undone so each evaluation is one call. Otherwise SciPy's
    ``ScalarFunction`` computes the gradient by finite differences (within ``bounds``, a pair
    ``(lower, upper)`` or None) and ``counter`` is that object, whose ``nfev`` counts every
    evaluation as SciPy counts them.
    """
    if not callable(fun):
        raise TypeError(f"fun must be callable, got {type(fun).__name__}")
    # scipy.optimize.minimize wraps ``fun`` in MemoizeJac when jac=True
    memoize_jac = _scipy_compat.memoize_jac_class()
    if (memoize_jac is not None and isinstance(fun, memoize_jac)
            and getattr(jac, "__self__", None) is fun):
        return fun.fun, True, args, None
    if jac is True or callable(jac):
        return fun, jac, args, None
    sf = _scipy_compat.prepare_scalar_function(fun, x0, jac, args, eps, bounds, finite_diff_rel_step,
                                               workers)
    return sf.fun_and_grad, True, (), sf


def adapt_callback(callback):
    """Return ``(cb(x, f), scipy_wrapped)``, ``cb`` calling ``callback`` in the style it asks for.

    A callback whose only parameter is named ``intermediate_result`` gets an
    ``OptimizeResult(x=..., fun=...)``, any other gets x (SciPy's ``_wrap_callback`` rule, which
    ``minimize`` does not apply to custom methods). A callback already wrapped by SciPy (it has a
    ``stop_iteration`` attribute: ``minimize(method='L-BFGS-B')`` rerouted here) gets the
    ``OptimizeResult`` and, on StopIteration, the attribute set, from which ``minimize`` reports
    status 99 itself.
    """
    if callback is None:
        return None, False
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    from scipy.optimize import OptimizeResult
    if hasattr(callback, "stop_iteration"):
        def adapted(x, f):
            try:
                callback(OptimizeResult(x=x, fun=f))
            except StopIteration:
                callback.stop_iteration = True
                raise
        return adapted, True
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
    return adapted, False


class CountedObjective:
    """The objective as ``(f, g)`` with evaluation counts, for the minimizers iterating in Python
    (the compiled L-BFGS has the same wrapper, ``_Objective``, in Cython); x is handed over as a
    copy, ``f`` checked as SciPy checks it and ``g`` converted to ``dtype``, shape ``(n,)``."""

    def __init__(self, fun, jac, args, n, dtype):
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        if jac is not True and not callable(jac):
            raise TypeError("jac must be True (fun returns (f, g)) or a callable returning the "
                            f"gradient, got {jac!r}")
        self.fun, self.jac, self.args = fun, jac, args
        self.n, self.dtype = n, dtype
        self.nfev = 0
        self.njev = 0

    def __call__(self, x):
        if self.jac is True:
            value, grad = self.fun(x.copy(), *self.args)
        else:
            value = self.fun(x.copy(), *self.args)
            grad = self.jac(x.copy(), *self.args)
        self.nfev += 1
        self.njev += 1
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != (self.n,):
            raise ValueError(f"jac: the gradient must have shape ({self.n},) like x, got shape "
                             f"{grad.shape}")
        return objective_value(value), grad


def all_fixed_result(fun, jac, args, x):
    """SciPy's result when the bounds fix every variable: nothing to iterate."""
    from scipy.optimize import OptimizeResult
    value = fun(x.copy(), *args)
    if jac is True:
        value = value[0]
    return OptimizeResult(x=x, fun=np.float64(objective_value(value)), success=True, status=0,
                          message=MSG_ALL_FIXED, nfev=1, njev=0, nit=0)


class WithFixed:
    """``fun`` of the free variables only: inserts the fixed values (for finite differences,
    which must not step a variable whose bounds leave no room, as SciPy's ``minimize`` does)."""

    def __init__(self, fun, fixed, values):
        self.fun = fun
        self.fixed = fixed
        self.values = values

    def full(self, x_free):
        x = np.empty(self.fixed.size, dtype=np.result_type(x_free, self.values))
        x[self.fixed] = self.values
        x[~self.fixed] = x_free
        return x

    def __call__(self, x_free, *args):
        return self.fun(self.full(x_free), *args)


def hess_inv_operator(pairs, newest, count, updates, m):
    """SciPy's ``LbfgsInvHessProduct`` of the ``count`` pairs ending at slot ``newest`` of the
    ring buffer ``pairs`` (rows: s of slot 0, y of slot 0, s of slot 1, ...).

    SciPy's L-BFGS-B hands its pairs over in storage order: pair k (the k-th since the history
    was last dropped, from 1) in slot (k - 1) mod m. The same order is used here, so
    ``hess_inv`` is SciPy's operator (which applies them in that order)."""
    ring = pairs.shape[0] // 2
    slots = [(newest - count + 1 + i) % ring for i in range(count)]   # oldest first
    if updates > count:
        # The ring wrapped: storage slot 0 holds the pair with (k - 1) mod m = 0.
        first = (count - updates) % m
        slots = slots[first:] + slots[:first]
    return _lazy_inv_hess_product_class()(pairs, slots)


@functools.cache
def _lazy_inv_hess_product_class():
    """The class ``_LazyInvHessProduct``, defined on first use: its base class is SciPy's, and
    ``scipy.optimize`` is imported only when a minimizer runs."""
    from scipy.optimize import LbfgsInvHessProduct

    class _LazyInvHessProduct(LbfgsInvHessProduct):
        """``LbfgsInvHessProduct`` whose ``sk`` / ``yk`` are gathered from the ring buffer on
        first use: most results never touch ``hess_inv``, and copying m pairs out of the ring
        costs as much as several iterations at large n."""

        def __init__(self, pairs, order):
            # What LinearOperator.__init__ sets, without its argument checks (~10 us a result on
            # an AMD EPYC, 2 cores, 2026).
            self.dtype = _FLOAT64
            self.shape = (pairs.shape[1], pairs.shape[1])
            self._pairs = pairs
            self._order = order
            self.n_corrs = len(order)

        def _gather(self, offset):
            rows = [2 * slot + offset for slot in self._order]
            return np.array(self._pairs[rows], dtype=np.float64).reshape(self.n_corrs,
                                                                          self._pairs.shape[1])

        @functools.cached_property
        def sk(self):
            return self._gather(0)

        @functools.cached_property
        def yk(self):
            return self._gather(1)

        @functools.cached_property
        def rho(self):
            return 1.0 / np.einsum("ij,ij->i", self.sk, self.yk)

    # Named as if defined at module level, where pickle finds it (through __getattr__ below).
    _LazyInvHessProduct.__qualname__ = "_LazyInvHessProduct"
    return _LazyInvHessProduct


def __getattr__(name):
    # pickle (and copy) find a result's hess_inv class here by name, as for any module-level class
    if name == "_LazyInvHessProduct":
        return _lazy_inv_hess_product_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def callback_stop_status(wrapped, nit, maxiter, nfev, maxfun):
    """Status and message after a callback raised StopIteration.

    Called directly: status 99 (what ``minimize`` reports for its own methods). Through SciPy's
    wrapped callback: L-BFGS-B's own status and message, which ``minimize`` then turns into 99.
    """
    if not wrapped:
        return STATUS_CALLBACK, MESSAGES["callback_stop"]
    # SciPy's driver sets "CALLBACK REQUESTED HALT" and then lets the limits overwrite it.
    limit = stopping_status(nit, maxiter, nfev, maxfun, False, False)
    return limit if limit is not None else (STATUS_ABNORMAL, MESSAGES["callback_halt"])
