"""Only Muon pays for SciPy's BLAS, and only when its first bucket is built.

The bucket drivers take Muon's ``sgemm`` and ``ssyrk`` from ``scipy.linalg.cython_blas`` when a
Muon bucket is built (not through a ``cimport``, which would import all of ``scipy.linalg`` with
the drivers, that is, for the first optimizer of any kind). Each check runs in a fresh interpreter
(this one has imported SciPy long ago), in the folder holding the fastopt under test, so that
``python -c`` imports that one and never an unbuilt source folder.
"""
import json
import subprocess
import sys
from pathlib import Path

import fastopt

_OTHER_OPTIMIZERS = """
import json, sys
import numpy as np
import fastopt

rng = np.random.default_rng(0)
for make in (fastopt.Adam, fastopt.SGD, fastopt.Adafactor):
    w = rng.standard_normal((6, 5)).astype(np.float32)
    opt = make([w], lr=0.01)
    opt.step([rng.standard_normal((6, 5)).astype(np.float32)])
    opt.step([rng.standard_normal((6, 5)).astype(np.float32)])
report = {"scipy": "scipy" in sys.modules, "scipy.linalg": "scipy.linalg" in sys.modules}
"""

_MUON = """
rng = np.random.default_rng(1)
# a wide and a tall matrix: both of the driver's BLAS layouts
params = [rng.standard_normal((8, 13)).astype(np.float32),
          rng.standard_normal((17, 6)).astype(np.float32)]
opt = fastopt.Muon(params, lr=0.02, weight_decay=0.01)
for _ in range(3):
    opt.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
report["cython_blas"] = "scipy.linalg.cython_blas" in sys.modules
report["muon"] = [p.tobytes().hex() for p in params]
print(json.dumps(report))
"""


def _run(code):
    """Run ``code`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    done = subprocess.run([sys.executable, "-c", code], cwd=str(Path(fastopt.__file__).parents[1]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_other_optimizers_leave_scipy_alone_and_muon_loads_its_blas_on_first_use():
    lazy = _run(_OTHER_OPTIMIZERS + _MUON)
    assert not lazy["scipy.linalg"], "the first Adam/SGD/Adafactor step imported scipy.linalg"
    assert not lazy["scipy"], "the first Adam/SGD/Adafactor step imported scipy"
    assert lazy["cython_blas"], "Muon ran without scipy.linalg.cython_blas being imported"
    # the same Muon steps in a process that imported scipy.linalg before fastopt: the same bits
    eager = _run("import scipy.linalg\n" + _OTHER_OPTIMIZERS + _MUON)
    assert eager["scipy.linalg"]
    assert lazy["muon"] == eager["muon"]


def test_without_scipy_other_optimizers_run_and_muon_says_what_it_needs():
    blocked = _run(
        "import json, sys\n"
        "sys.modules['scipy'] = None   # as if SciPy were not installed\n"
        "import numpy as np, fastopt\n"
        "w = np.ones((4, 3), np.float32)\n"
        "fastopt.Adam([w], lr=0.1).step([np.ones((4, 3), np.float32)])\n"
        "try:\n"
        "    fastopt.Muon([np.ones((4, 3), np.float32)]).step([np.ones((4, 3), np.float32)])\n"
        "except ImportError as exc:\n"
        "    message = str(exc)\n"
        "else:\n"
        "    message = None\n"
        "print(json.dumps({'adam_moved': bool((w != 1).all()), 'muon': message}))")
    assert blocked["adam_moved"]
    assert blocked["muon"] is not None, "Muon ran without SciPy"
    assert "scipy.linalg.cython_blas" in blocked["muon"]
    assert "pip install scipy" in blocked["muon"]
