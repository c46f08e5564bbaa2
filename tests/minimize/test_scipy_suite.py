"""SciPy's own L-BFGS-B tests, run against fastopt.

The test files shipped in the installed SciPy wheel (``scipy/optimize/tests``) run in a
subprocess with the plugin ``scipy_lbfgsb_redirect`` (in tests/_support): SciPy's
``_minimize_lbfgsb``, behind ``minimize(method='L-BFGS-B')``, ``fmin_l_bfgs_b``, basinhopping,
shgo, dual_annealing and differential_evolution's polishing, is replaced by ``fastopt.lbfgs``,
and only the tests that use L-BFGS-B are kept. Excluded, because they call SciPy's compiled
routine ``scipy.optimize._lbfgsb.setulb`` directly (no redirection reaches them):
``test_lbfgsb_setulb.py::test_setulb_floatround`` and ``::test_gh_issue18730``
(see ``EXCLUDED`` in the plugin). SciPy's ``minimize`` checks ``lb <= ub`` itself before it
calls the method; the plugin leaves that check to fastopt, so SciPy's tests of its message
(``test_minimize_invalid_bounds``, ``test_minimize_l_bfgs_b_incorrect_bounds``) test fastopt's.
Every kept test passes; the only skips are SciPy's own (``SCIPY_SKIPS``).
"""
import os
import re
import subprocess
import sys

import scipy

TESTS = os.path.join(os.path.dirname(scipy.__file__), "optimize", "tests")
FILES = ["test_optimize.py", "test_lbfgsb_hessinv.py", "test_lbfgsb_setulb.py",
         "test__basinhopping.py", "test__differential_evolution.py", "test__dual_annealing.py",
         "test__shgo.py", "test_minimize_constrained.py"]
# the folder of the plugin, put on the subprocess's PYTHONPATH
SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_support")
# The skips SciPy's own tests make, none of them about L-BFGS-B: its constraint tests are
# parametrized over every method, and one test needs a newer Python. Any other skip (or an
# xfail) would hide an L-BFGS-B test, so it fails the run.
SCIPY_SKIPS = ("Only SLSQP supports nonlinear constraints",
               "Requires PEP 649/749 from Python 3.14+")


def test_scipy_lbfgsb_tests_pass_with_fastopt(tmp_path):
    report = tmp_path / "redirected_calls.txt"
    env = dict(os.environ, FASTOPT_REDIRECT_REPORT=str(report),
               PYTHONPATH=os.pathsep.join([SUPPORT, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pytest", "-p", "scipy_lbfgsb_redirect",
               "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull, "-q",
               "-rfEsxX", *[os.path.join(TESTS, name) for name in FILES]]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary)}
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) == 0, summary
    assert counts.get("xfailed", 0) == 0 and counts.get("xpassed", 0) == 0, summary
    skips = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", done.stdout, re.MULTILINE)
    unexpected = [reason for _, reason in skips
                  if not any(reason.startswith(known) for known in SCIPY_SKIPS)]
    assert not unexpected, unexpected
    assert sum(int(number) for number, _ in skips) == counts.get("skipped", 0), done.stdout[-3000:]
    # Every test of SciPy's that calls L-BFGS-B (through minimize, fmin_l_bfgs_b and the global
    # optimizers) ran; 85 with SciPy 1.17 (the rest of the selection are SciPy's own skips, for
    # constraints L-BFGS-B does not take).
    assert counts.get("passed", 0) >= 80, summary
    # ... and fastopt, not SciPy, did the minimizing.
    assert int(report.read_text()) >= 400, summary
