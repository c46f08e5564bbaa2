"""The ``fastopt`` command: ``fastopt info``, ``fastopt --version``, usage errors, and the console
script and ``python -m fastopt`` as a user runs them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt
from fastopt import cli

ROOT = Path(fastopt.__file__).resolve().parents[1]


def test_info_prints_build_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"fastopt {fastopt.__version__}"
    assert out[1:] == [f"{key}: {value}" for key, value in fastopt.build_info().items()]


def test_version_and_usage(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"fastopt {fastopt.__version__}\n"
    assert cli.main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "usage: fastopt <command>" in capsys.readouterr().err
    assert cli.main(["benhc"]) == 2
    assert "unknown command 'benhc'" in capsys.readouterr().err
    assert cli.main(["info", "--extra"], prog="python -m fastopt") == 2
    assert "python -m fastopt info: takes no arguments" in capsys.readouterr().err


def _script():
    """The console script pip installed next to this interpreter, if any."""
    for name in ("fastopt", "fastopt.exe"):
        path = Path(sys.executable).parent / name
        if path.exists():
            return path
    return None


def test_console_script_at_the_repository_root(under_ci):
    """The script runs the installed package even where ./fastopt is the source folder. Under CI,
    which installs with pip, a missing script fails."""
    if _script() is None:
        assert not under_ci, f"no fastopt console script next to {sys.executable}"
        pytest.skip("fastopt is not installed with pip (no console script)")
    done = subprocess.run([str(_script()), "info"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"fastopt {fastopt.__version__}\nbuild: ")


def test_python_m_fastopt_elsewhere(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "fastopt", "info"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "vector_isa: " in done.stdout
