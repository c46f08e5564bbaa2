"""The compiled L-BFGS iteration (``_lbfgs.pyx``) for the instruction-set variant
:mod:`fastopt._backend` chose for this CPU; every minimizer imports it from here."""
import importlib

from .. import _validation
from .._backend import VARIANT
from .._core import _isa

#: ``fastopt.minimize._lbfgs`` compiled for the chosen variant.
lbfgs = importlib.import_module(_isa.variant_module(f"{__package__}._lbfgs", VARIANT))
# the compiled iteration checks objective values with the same rule as the Python layer
lbfgs.set_objective_value(_validation.objective_value)
