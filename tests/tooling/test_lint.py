"""The repository passes ``ruff check`` with the configuration in pyproject.toml (pycodestyle,
pyflakes, bugbear; 120 columns). Run from the repository, not from an installed copy."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    pytest.importorskip("ruff")
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("the tests run outside the repository (an installed wheel's test run)")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format",
                           "concise", str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
