"""Every private name of SciPy that ``fastopt.minimize`` relies on, each with its fallback.

SciPy does not promise to keep its private names (a leading underscore) from one release to the
next. The minimizers use three, to behave exactly as ``scipy.optimize.minimize`` does; they are read
here only (``tests/minimize/test_scipy_compat.py`` checks that no other module names one, and runs
each fallback). Checked on SciPy 1.14–1.16. When a name is missing:

``scipy._lib.deprecation._NoValue``
    The marker ``fmin_l_bfgs_b`` passes for ``disp`` / ``iprint`` when they are not given. Without
    it only None counts as "not given" (a ``_NoValue`` would then be taken as given, and warned
    about as deprecated).
``scipy.optimize._optimize.MemoizeJac``
    The wrapper ``minimize(jac=True)`` puts around ``fun``. Without it the wrapper cannot be
    recognised and undone: ``fun`` is called through it, which gives the same values at the cost
    of its cache.
``scipy.optimize._optimize._prepare_scalar_function``
    SciPy's finite-difference gradients (``ScalarFunction``: its step sizes, its handling of bounds,
    its evaluation counts). Without it :class:`FiniteDifferences` computes them: forward ("2-point"
    and ``jac=None``), central ("3-point") or complex-step ("cs") differences with SciPy's default
    relative steps, stepping backwards where a forward step would leave the bounds.

SciPy is imported when a name is first asked for, never at module level (``import fastopt`` does
not import ``scipy.optimize``).
"""
import functools
import importlib

import numpy as np


@functools.cache
def private(module, name):
    """SciPy's private ``module.name``, or None when this SciPy has no such name."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def no_value_marker():
    """SciPy's "not given" marker for ``fmin_l_bfgs_b``'s ``disp``/``iprint``, or None."""
    return private("scipy._lib.deprecation", "_NoValue")


def memoize_jac_class():
    """The class ``minimize(jac=True)`` wraps ``fun`` in, or None."""
    return private("scipy.optimize._optimize", "MemoizeJac")


def prepare_scalar_function(fun, x0, jac, args, epsilon, bounds, finite_diff_rel_step, workers):
    """An object with ``fun_and_grad(x)`` and ``nfev`` computing the gradient of ``fun`` by finite
    differences: SciPy's ``ScalarFunction`` when this SciPy has it, else :class:`FiniteDifferences`.
    """
    prepare = private("scipy.optimize._optimize", "_prepare_scalar_function")
    if prepare is not None:
        return prepare(fun, x0, jac=jac, args=args, epsilon=epsilon, bounds=bounds,
                       finite_diff_rel_step=finite_diff_rel_step, workers=workers)
    return FiniteDifferences(fun, args, jac, epsilon, bounds, finite_diff_rel_step)


class FiniteDifferences:
    """``fun`` and its finite-difference gradient, counting evaluations as SciPy does (``nfev``:
    every call of ``fun``; ``ngev``: every gradient) -- the fallback of
    :func:`prepare_scalar_function`.

    ``jac=None`` takes absolute steps ``epsilon`` (L-BFGS-B's rule); "2-point", "3-point" and "cs"
    take relative steps ``finite_diff_rel_step`` or SciPy's defaults (``sqrt(eps)``,
    ``eps**(1/3)``, ``sqrt(eps)``) times ``max(1, |x|)``.
    """

    _DEFAULT_REL_STEP = {"2-point": np.finfo(np.float64).eps ** 0.5,
                         "3-point": np.finfo(np.float64).eps ** (1 / 3),
                         "cs": np.finfo(np.float64).eps ** 0.5}

    def __init__(self, fun, args, jac, epsilon, bounds, rel_step):
        self._fun = fun
        self._args = tuple(args)
        self._scheme = "2-point" if jac is None else jac
        self._absolute = epsilon if jac is None else None
        self._rel_step = rel_step
        self._upper = None if bounds is None else np.asarray(bounds[1], dtype=np.float64)
        self.nfev = 0
        self.ngev = 0

    def _value(self, x):
        self.nfev += 1
        return self._fun(x, *self._args)

    def _steps(self, x):
        if self._absolute is not None:
            h = np.full_like(x, self._absolute)
        else:
            rel = self._DEFAULT_REL_STEP[self._scheme] if self._rel_step is None else self._rel_step
            h = rel * np.maximum(1.0, np.abs(x))
        if self._upper is not None and self._scheme == "2-point":
            h = np.where(x + h > self._upper, -h, h)   # stay inside the box
        return h

    def fun_and_grad(self, x):
        x = np.asarray(x, dtype=np.float64)
        self.ngev += 1
        f = float(self._value(x))
        h = self._steps(x)
        g = np.empty_like(x)
        for i in range(x.size):
            if self._scheme == "cs":
                xc = x.astype(np.complex128)
                xc[i] += 1j * h[i]
                g[i] = np.imag(self._value(xc)) / h[i]
                continue
            xp = x.copy()
            xp[i] += h[i]
            if self._scheme == "3-point":
                xm = x.copy()
                xm[i] -= h[i]
                g[i] = (float(self._value(xp)) - float(self._value(xm))) / (2 * h[i])
            else:
                g[i] = (float(self._value(xp)) - f) / h[i]
        return f, g
