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

CONFTEST = Path(__file__).parents[1] / "conftest.py"

MODULE_LEVEL = """
import pytest
missing = pytest.importorskip("fastopt_no_such_reference_module")

def test_uses_it():
    pass
"""

# A test file that imports a missing reference with a plain import statement (as `import torch`
# at the top of a torch test file does): skipped elsewhere, failed under CI, never a bare
# collection error.
PLAIN_IMPORT = """
import fastopt_no_such_plain_import_module

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
    (tmp_path / "test_plain_import.py").write_text(PLAIN_IMPORT)
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
    # errors: two collections (importorskip, plain import) and a fixture
    assert "1 failed, 1 passed, 1 skipped, 3 errors" in summary, summary
    for module in ("fastopt_no_such_reference_module", "fastopt_no_such_fixture_module",
                   "scipy.optimize._fastopt_no_such_private", "fastopt_no_such_plain_import_module"):
        assert f"CI: a package the tests need is missing (could not import '{module}'" in out, module
    assert "not about a missing package" in out


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_packages_skip_elsewhere(tmp_path, ci):
    done = _run(tmp_path, ci)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith("1 passed, 5 skipped")


def test_a_broken_fastopt_import_is_never_a_skip(tmp_path):
    """A test module that fails to import fastopt itself (a build or packaging bug) is an error
    everywhere, not a skip for a missing package."""
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_broken.py").write_text("import fastopt._no_such_compiled_module\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "1 error" in done.stdout.strip().splitlines()[-1], done.stdout
