"""The ``fastopt`` command ends quietly when its reader goes away (``fastopt info | head -1``).

Each command runs as ``python -m fastopt`` in a neutral folder, its stdout the write end of a pipe
whose read end is already closed: as ``head`` would have left it, but with no race (a reader that
quits after one line may or may not do so before the rest is written). Both output paths are
covered: buffered output (the error comes when it is flushed) and unbuffered (``-u``: the first
print fails).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt

ROOT = Path(fastopt.__file__).resolve().parents[1]
#: the smallest benchmark run (it stops at its first line of output here: the closed pipe)
BENCH = ["bench", "--quick", "--optimizers", "sgd", "--sizes", "1000", "--dtypes", "float32",
         "--threads", "1", "--no-torch", "--no-ceiling", "--no-clip", "--no-plot", "--no-training",
         "--no-precision", "--no-lbfgs"]


def _run_into_closed_pipe(args, python_flags, cwd):
    read_end, write_end = os.pipe()
    os.close(read_end)                          # nobody will ever read: every write fails (EPIPE)
    try:
        done = subprocess.run([sys.executable, *python_flags, "-m", "fastopt", *args],
                              stdout=write_end, stderr=subprocess.PIPE, cwd=cwd, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    finally:
        os.close(write_end)
    return done


@pytest.mark.parametrize("python_flags", [[], ["-u"]], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["info"], ["--version"], ["--help"], BENCH], ids=" ".join)
def test_a_closed_stdout_ends_the_command_without_a_traceback(args, python_flags, tmp_path):
    done = _run_into_closed_pipe(args, python_flags, tmp_path)
    for sign in ("Traceback", "BrokenPipeError", "Exception ignored"):
        assert sign not in done.stderr, done.stderr
    assert done.returncode == 1


def test_the_command_still_prints_to_an_open_pipe(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastopt", "info"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"fastopt {fastopt.__version__}"
    assert done.stderr == ""
