"""The build: native and portable builds, and the run-time ISA dispatch, give bit-identical results.

The portable build is compiled here from the source tree (FASTOPT_PORTABLE=1) into a temporary
copy; it needs Cython and a C compiler, and takes about a minute, once per test session.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_trajectories.py")


def test_build_info_describes_the_kernels():
    info = fastopt.build_info()
    assert info["vector_isa"] in {"avx512", "avx2", "avx", "sse2", "generic"}
    flags = info["cflags"]
    assert "-O3" in flags and "-fno-math-errno" in flags and "-ffp-contract=off" in flags
    assert "-ffast-math" not in flags
    assert info["num_threads"] >= 1


def _record(pythonpath, out, env_extra=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    env.update(dict(env_extra))
    done = subprocess.run([sys.executable, "-P", str(SCRIPT), str(out)], env=env, cwd=str(out.parent),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="session")
def portable_build(tmp_path_factory):
    pytest.importorskip("Cython")
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    if not fastopt._backend.baseline.cpu_has_avx2_fma():
        pytest.skip("this CPU has no AVX2/FMA: the portable build's AVX2 path cannot run here")
    src = tmp_path_factory.mktemp("portable")
    shutil.copytree(REPO / "fastopt", src / "fastopt",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "*.html", "__pycache__", "_build_config.py"))
    shutil.copy(REPO / "setup.py", src / "setup.py")
    env = dict(os.environ, FASTOPT_PORTABLE="1")
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", "2"],
                          cwd=str(src), env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail("portable build failed:\n" + done.stderr[-3000:])
    return src


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_portable_and_native_builds_are_bit_identical(portable_build, tmp_path):
    native = tmp_path / "native.npz"
    avx2 = tmp_path / "avx2.npz"
    baseline = tmp_path / "baseline.npz"
    # The installed (native) fastopt: run from a folder where the source tree is not importable.
    native_module = _record(Path(fastopt.__file__).parents[1], native)
    avx2_module = _record(portable_build, avx2)
    baseline_module = _record(portable_build, baseline, {"FASTOPT_FORCE_BASELINE": "1"})
    assert avx2_module == ["fastopt._step_avx2", "avx2"]
    assert baseline_module[0] == "fastopt._step" and baseline_module[1] in ("sse2", "generic")
    assert native_module[0] == "fastopt._step"
    ref = _load(native)
    assert len(ref) > 100
    for other in (_load(avx2), _load(baseline)):
        assert other.keys() == ref.keys()
        for key, value in ref.items():
            assert value.dtype == other[key].dtype
            assert value.tobytes() == other[key].tobytes(), key


HOT_FUNCTIONS = ("_lerp", "_sgd_loop", "_adam_loop", "_rmsprop_loop", "_adagrad_loop",
                 "_sgd_span", "_adam_span", "_rmsprop_span", "_adagrad_span", "_run_span", "_run_range",
                 "_span_reduce", "_reduce_block", "_transform_span", "_transform_range")


def test_hot_loops_are_white_in_the_cython_annotation(tmp_path):
    """No line of a per-element kernel or its driver touches the Python C-API (``cython -a``)."""
    import html
    import re

    cython_build = pytest.importorskip("Cython.Build")
    del cython_build
    source = (REPO / "fastopt" / "_kernels.pxi").read_text()
    (tmp_path / "_kernels_annotated.pyx").write_text(source)
    done = subprocess.run([sys.executable, "-m", "cython", "-3", "-a", "-X",
                           "boundscheck=False,wraparound=False,cdivision=True,initializedcheck=False",
                           "_kernels_annotated.pyx"], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "_kernels_annotated.html").read_text()
    scores = {int(n): int(score) for score, n in re.findall(
        r'<pre class="cython line score-(\d+)"[^>]*>(?:&#xA0;|\+|&#x2B;)?<span class="">(\d+)</span>:', page)}
    lines = source.split("\n")
    assert len(scores) > 0.5 * len(lines)
    for name in HOT_FUNCTIONS:
        start = next(i for i, line in enumerate(lines) if line.startswith("cdef") and f" {name}(" in line)
        end = start + 1
        while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
            end += 1
        yellow = [(n, html.unescape(lines[n - 1]).strip()) for n in range(start + 1, end + 1) if scores.get(n, 0) > 0]
        assert not yellow, f"{name} has Python interaction on lines {yellow}"
