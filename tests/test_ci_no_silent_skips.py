"""Under CI a missing reference package fails the run (tests/conftest.py); elsewhere it skips.

A small test directory with a copy of this suite's conftest.py is run in a subprocess: tests that
``pytest.importorskip`` a module that does not exist, at module level, inside a test and inside a
fixture, next to a test skipped for another reason.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

MODULE_LEVEL = """
import pytest
missing = pytest.importorskip("fastopt_no_such_reference_module")

def test_uses_it():
    pass
"""

IN_TESTS = """
import pytest

@pytest.fixture
def reference():
    return pytest.importorskip("fastopt_no_such_fixture_module")

def test_in_test():
    pytest.importorskip("scipy.optimize._fastopt_no_such_private")

def test_in_fixture(reference):
    pass

def test_other_skip():
    pytest.skip("not about a missing package")

def test_passes():
    pass
"""


def _run(tmp_path, ci):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    (tmp_path / "test_in_tests.py").write_text(IN_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "--continue-on-collection-errors",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_packages_fail_under_ci(tmp_path, ci):
    done = _run(tmp_path, ci)
    out = done.stdout
    assert done.returncode == 1, out
    summary = out.strip().splitlines()[-1]
    assert "1 failed, 1 passed, 1 skipped, 2 errors" in summary, summary   # errors: collection, fixture
    for module in ("fastopt_no_such_reference_module", "fastopt_no_such_fixture_module",
                   "scipy.optimize._fastopt_no_such_private"):
        assert f"CI: a package the tests need is missing (could not import '{module}'" in out, module
    assert "not about a missing package" in out


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_packages_skip_elsewhere(tmp_path, ci):
    done = _run(tmp_path, ci)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("1 passed, 4 skipped")
