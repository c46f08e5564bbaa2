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
    def build_outputs(folder, names):
        """Compiled modules, Cython's generated C (a .c beside its .pyx) and other build leftovers."""
        generated = {n[:-4] + ".c" for n in names if n.endswith(".pyx")}
        return {n for n in names if n.endswith((".so", ".html")) or n in generated
                or n in ("__pycache__", "_build_config.py")}

    shutil.copytree(REPO / "fastopt", src / "fastopt", ignore=build_outputs)
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
    assert avx2_module == ["fastopt._core._kernels_avx2", "avx2"]
    assert baseline_module[0] == "fastopt._core._kernels" and baseline_module[1] in ("sse2", "generic")
    assert native_module[0] == "fastopt._core._kernels"
    ref = _load(native)
    assert len(ref) > 100
    for other in (_load(avx2), _load(baseline)):
        assert other.keys() == ref.keys()
        for key, value in ref.items():
            assert value.dtype == other[key].dtype
            assert value.tobytes() == other[key].tobytes(), key


#: The compiled core's sources whose ``nogil`` functions must not touch the Python C-API.
ANNOTATED = ("_kernels_body.pxi", "_bucket.pyx", "_reduce.pyx", "_fastopt_threads.pyx")


def _expand_includes(text):
    """``text`` with every ``include "..."`` replaced by the file (the generated ones rendered), so
    the annotation covers the generated loops and the drivers too."""
    import re
    sys.path.insert(0, str(REPO / "fastopt" / "_core"))
    try:
        import _codegen
        generated = {"_algorithms.pxi": _codegen.render_text,
                     "_drivers.pxi": _codegen.render_drivers_text}
    finally:
        sys.path.pop(0)

    def replace(match):
        name = match.group(1)
        body = generated[name]() if name in generated else (REPO / "fastopt" / "_core" / name).read_text()
        return _expand_includes(body)
    return re.sub(r'^include "([^"]+)"$', replace, text, flags=re.M)


@pytest.mark.parametrize("name", ANNOTATED)
def test_hot_loops_are_white_in_the_cython_annotation(tmp_path, name):
    """No line of a ``nogil`` function (every element loop, prologue, reduction and driver) touches
    the Python C-API (``cython -a``). The generated loops are annotated inline."""
    import html
    import re

    cython_build = pytest.importorskip("Cython.Build")
    del cython_build
    core = REPO / "fastopt" / "_core"
    source = _expand_includes((core / name).read_text())
    (tmp_path / "annotated.pyx").write_text(source)
    for header in core.glob("*.h"):
        shutil.copy(header, tmp_path / header.name)
    pxd = core / (Path(name).stem + ".pxd")
    if pxd.exists():   # the module's own declarations (cdef class attributes)
        shutil.copy(pxd, tmp_path / "annotated.pxd")
    done = subprocess.run([sys.executable, "-m", "cython", "-3", "-a", "-I", str(REPO), "-X",
                           "boundscheck=False,wraparound=False,cdivision=True,initializedcheck=False",
                           "annotated.pyx"], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "annotated.html").read_text()
    scores = {int(n): int(score) for score, n in re.findall(
        r'<pre class="cython line score-(\d+)"[^>]*>(?:&#xA0;|\+|&#x2B;)?<span class="">(\d+)</span>:', page)}
    lines = source.split("\n")
    assert len(scores) > 0.5 * len(lines)
    starts = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("cdef ") and "(" in line and "=" not in line.split("(")[0]:
            signature = " ".join(lines[i:i + 4])
            head = signature[:signature.index(":") + 1] if ":" in signature else ""
            if "nogil" in head and head.rstrip().endswith(":"):
                starts.append(i)
    assert len(starts) >= 3
    for start in starts:
        indent = len(lines[start]) - len(lines[start].lstrip())
        end = start + 1
        while end < len(lines) and (len(lines[end]) - len(lines[end].lstrip()) > indent
                                    or not lines[end].strip()):
            end += 1
        yellow = [(n, html.unescape(lines[n - 1]).strip()) for n in range(start + 1, end + 1)
                  if scores.get(n, 0) > 0]
        assert not yellow, f"{lines[start].strip()} has Python interaction on lines {yellow}"
