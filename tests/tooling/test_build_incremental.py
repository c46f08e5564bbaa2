"""A build with nothing changed compiles nothing.

Built from the source tree into a temporary copy (a native build: one variant, the quickest), then:
a second ``setup.py build_ext --inplace`` runs neither Cython nor the compiler; nor does an editable
build (setuptools' PEP 660 hook, what ``pip install -e ".[test]"`` runs after ``pip install -e .``),
which builds in a fresh temporary folder each time; nor does a change to an algorithm declaration
that leaves the generated code as it was (the generated files keep their text and their times).
"""
import os
import subprocess
import sys

import pytest

from source_copies import build_source_copy as _build_source_copy


def _compiled(log):
    """The C files a build log shows compiled, and whether Cython ran."""
    compiled = [line.split(" -c ", 1)[1].split()[0] for line in log.splitlines() if " -c " in line]
    return compiled, "Cythonizing" in log


def _run(folder, args):
    done = subprocess.run([sys.executable, *args], cwd=str(folder), capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ, FASTOPT_NATIVE="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_build_with_nothing_changed_compiles_nothing(tmp_path):
    src = tmp_path / "src"
    first = _build_source_copy(src, {"FASTOPT_NATIVE": "1"}, os.environ.get("CC", "cc"))
    assert _compiled(first)[0]

    assert _compiled(_run(src, ["setup.py", "build_ext", "--inplace"])) == ([], False)

    hook = ("from setuptools import build_meta; "
            f"build_meta.build_editable({str(tmp_path / 'dist')!r})")
    assert _compiled(_run(src, ["-c", hook])) == ([], False)

    declaration = src / "fastopt" / "algorithms" / "lion.py"
    declaration.write_text(declaration.read_text() + "\n# changed\n")
    os.utime(declaration)
    compiled, _ = _compiled(_run(src, ["setup.py", "build_ext", "--inplace"]))
    assert compiled == [], compiled
