"""Minimizers of a smooth objective: L-BFGS(-B) and OWL-QN (``minimize_lbfgs``, the
``scipy.optimize.minimize`` plug-in ``lbfgs``, the stepwise ``LBFGS``), and for small problems
Newton's method, dense BFGS and critical-point classification.

The iteration runs in Cython (``_lbfgs.pyx`` and its ``.pxi`` parts, compiled once per
instruction-set variant; :mod:`fastopt._backend` chooses one); ``_lbfgs_py`` checks arguments,
prepares the objective and packs SciPy's result around it; ``_stepwise`` holds the torch-style
stepwise engine; ``_second_order`` the dense methods; ``_common`` what they all share (objective
counting, callbacks, the one stopping order and message table).

>>> import numpy as np
>>> from fastopt.minimize import minimize_lbfgs
>>> res = minimize_lbfgs(lambda x: (float(x @ x), 2 * x), np.ones(3))
>>> bool(res.success), float(abs(res.x).max()) < 1e-6
(True, True)
"""
from ._compiled import lbfgs as _lbfgs
from ._lbfgs_py import LBFGS, lbfgs, minimize_lbfgs
from ._second_order import classify_critical_point, minimize_bfgs, newton

#: The Moré–Thuente line search (a compiled class), as used by every minimizer here.
MoreThuente = _lbfgs.MoreThuente
#: The L-BFGS two-loop recursion ``d = -H g`` over stored pairs (compiled).
two_loop_direction = _lbfgs.two_loop_direction

__all__ = ["minimize_lbfgs", "lbfgs", "LBFGS", "newton", "minimize_bfgs", "classify_critical_point",
           "MoreThuente", "two_loop_direction"]
