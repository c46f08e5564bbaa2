"""``import fastopt`` leaves SciPy's heavy packages alone until something needs them.

``scipy.optimize`` (the minimizers' results, finite differences) and ``scipy.linalg`` (Muon's
BLAS, taken by the bucket drivers when the first Muon bucket is built) cost several times what the
rest of ``import fastopt`` does, so they are imported when a minimizer runs or the first Muon
optimizer is built (tests/core/test_core_lazy_blas.py: no other optimizer imports SciPy). Each check runs
in a fresh interpreter (this one has imported SciPy long ago), in the folder holding the fastopt
under test, so that ``python -c`` imports that one and never an unbuilt source folder.
"""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.optimize

import fastopt

HEAVY = ("scipy.optimize", "scipy.linalg")


def _run(code):
    """Run ``code`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    done = subprocess.run([sys.executable, "-c", code], cwd=str(Path(fastopt.__file__).parents[1]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _scipy_modules_after(code):
    return set(_run(f"import json, sys\n{code}\n"
                    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('scipy'))))"))


def test_import_fastopt_imports_neither_scipy_optimize_nor_scipy_linalg():
    imported = _scipy_modules_after("import fastopt")
    assert not imported & set(HEAVY), (
        f"import fastopt imported {sorted(imported & set(HEAVY))}; import them where they are "
        "first needed")


def test_the_public_names_are_there_without_importing_scipy():
    imported = _scipy_modules_after(
        "import fastopt\n"
        "for name in ('Adam', 'Muon', 'lbfgs', 'minimize_lbfgs', 'LBFGS', 'newton', "
        "'minimize_bfgs', 'classify_critical_point', 'save', 'load', 'lr_scheduler'):\n"
        "    getattr(fastopt, name)")
    assert not imported & set(HEAVY)


def test_a_minimizer_imports_scipy_optimize():
    calls = {
        "minimize_lbfgs": "fastopt.minimize_lbfgs(quadratic, np.ones(3))",
        "newton": "fastopt.newton(lambda x: float(x @ x), np.ones(3), lambda x: 2 * x, "
                  "lambda x: 2 * np.eye(3))",
        "minimize_bfgs": "fastopt.minimize_bfgs(quadratic, np.ones(3))",
    }
    for name, call in calls.items():
        imported = _scipy_modules_after("import numpy as np, fastopt\n"
                                        "def quadratic(x):\n    return float(x @ x), 2 * x\n"
                                        f"result = {call}\n"
                                        "assert result.success, result")
        assert "scipy.optimize" in imported, name


def test_results_are_scipy_optimize_results():
    quadratic = lambda x: (float(x @ x), 2 * x)   # noqa: E731
    result = fastopt.minimize_lbfgs(quadratic, np.ones(3))
    assert type(result) is scipy.optimize.OptimizeResult
    assert isinstance(result.hess_inv, scipy.optimize.LbfgsInvHessProduct)
    assert type(fastopt.minimize_bfgs(quadratic, np.ones(3))) is scipy.optimize.OptimizeResult


def test_building_a_muon_optimizer_imports_scipy_linalg():
    imported = _scipy_modules_after(
        "import numpy as np, fastopt\n"
        "w = np.ones((4, 3), dtype=np.float32)\n"
        "opt = fastopt.Muon([w], lr=0.1)\n"
        "opt.step([np.ones((4, 3), dtype=np.float32)])")
    assert "scipy.linalg" in imported


def test_a_result_unpickles_where_no_minimizer_ran_yet():
    """``hess_inv``'s class is defined on first use; pickle still finds it by name."""
    result = fastopt.minimize_lbfgs(lambda x: (float(x @ x), 2 * x), np.array([1.0, -2.0, 3.0]))
    payload = pickle.dumps(result).hex()
    dense = _run("import json, pickle, fastopt\n"
                 f"result = pickle.loads(bytes.fromhex({payload!r}))\n"
                 "print(json.dumps(result.hess_inv.todense().tolist()))")
    np.testing.assert_array_equal(dense, result.hess_inv.todense())
