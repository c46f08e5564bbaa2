"""The build: every instruction-set variant of a portable build (and a native build) gives
bit-identical optimizer steps, the right variant is chosen at import, and L-BFGS's variants agree.

The variants compared are those the installed build already holds (``FASTOPT_FORCE_ISA`` in
subprocesses); only the ``slow`` native-build test compiles a second build.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _backend, _dtypes
from fastopt._core import _isa
from source_copies import build_source_copy as _build_source_copy

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parents[1] / "_support" / "_trajectories.py"
#: What each variant's kernels report as their vector ISA (the baseline: the compiler's default).
VECTOR_ISA = {"avx512": {"avx512"}, "avx2": {"avx2"}, "baseline": {"sse2", "generic"}}


def test_build_info_describes_the_build():
    info = fastopt.build_info()
    assert info["build"] in ("portable", "native")
    assert info["variant"] in info["variants_built"]
    assert info["modules"] == {m: _isa.variant_module(m, info["variant"]) for m in _isa.DISPATCHED}
    assert info["module"] == info["modules"]["fastopt._core._kernels"] == fastopt._backend.kernels.__name__
    assert fastopt.minimize._compiled.lbfgs.__name__ == info["modules"]["fastopt.minimize._lbfgs"]
    assert fastopt._backend.kernels.ParamBucket.__module__ == info["modules"]["fastopt._core._bucket"]
    assert info["vector_isa"] in {"avx512", "avx2", "avx", "sse2", "generic"}
    if info["build"] == "portable":
        assert info["variants_built"][-1] == "baseline"
        assert info["vector_isa"] in VECTOR_ISA[info["variant"]]
        assert "-march=native" not in info["cflags"]
    else:
        assert info["variants_built"] == ["native"] and "-march=native" in info["cflags"]
    flags = info["cflags"]
    assert "-O3" in flags and "-fno-math-errno" in flags and "-ffp-contract=off" in flags
    assert "-ffast-math" not in flags + info["variant_cflags"] + info["lbfgs_cflags"]
    assert info["num_threads"] >= 1


def test_the_best_variant_this_cpu_supports_runs():
    info = fastopt.build_info()
    if info["variant_forced"] or info["build"] == "native":
        pytest.skip("a forced variant or a native build: nothing was chosen")
    runnable = [v for v in info["variants_built"]
                if v == "baseline" or set(_isa.by_name(v).features) <= set(info["cpu_features"])]
    assert info["variant"] == runnable[0]


def test_choose_variant():
    built = ["avx512", "avx2", "baseline"]
    avx2 = {"avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe", "popcnt"}   # x86-64-v3
    avx512 = avx2 | {"avx512f", "avx512cd", "avx512vl", "avx512bw", "avx512dq"}
    choose = _backend.choose_variant
    assert choose(built, avx512) == "avx512"
    assert choose(built, avx2 | {"avx512f"}) == "avx2"          # AVX-512F alone is not enough
    assert choose(built, avx2 - {"f16c"}) == "baseline"        # no F16C: not the avx2 variant
    assert choose(built, avx512 - {"bmi2"}) == "baseline"      # nor without BMI2
    assert choose(built, set()) == "baseline"
    assert choose(["avx2", "baseline"], avx512) == "avx2"      # a compiler without AVX-512
    assert choose(built, avx512, forced="baseline") == "baseline"
    assert choose(built, avx2, forced="avx2") == "avx2"
    with pytest.raises(ImportError, match="this CPU lacks avx512bw, avx512cd, avx512dq, avx512f, avx512vl"):
        choose(built, avx2, forced="avx512")
    with pytest.raises(ImportError, match="this build has avx2, baseline only"):
        choose(["avx2", "baseline"], avx512, forced="avx512")
    assert choose(["native"], set()) == "native"
    with pytest.raises(ImportError, match="native build"):
        choose(["native"], avx512, forced="baseline")


def test_forced_variant_from_the_environment():
    forced = _backend.forced_variant
    assert forced({}) is None
    assert forced({"FASTOPT_FORCE_ISA": "", "FASTOPT_FORCE_BASELINE": "0"}) is None
    assert forced({"FASTOPT_FORCE_ISA": "AVX2"}) == "avx2"
    assert forced({"FASTOPT_FORCE_BASELINE": "1"}) == "baseline"
    assert forced({"FASTOPT_FORCE_BASELINE": "yes", "FASTOPT_FORCE_ISA": "baseline"}) == "baseline"
    with pytest.raises(ImportError, match="FASTOPT_FORCE_ISA='sse9' names no instruction-set variant"):
        forced({"FASTOPT_FORCE_ISA": "sse9"})
    with pytest.raises(ImportError, match="contradict"):
        forced({"FASTOPT_FORCE_BASELINE": "1", "FASTOPT_FORCE_ISA": "avx512"})
    with pytest.raises(ImportError, match="FASTOPT_FORCE_BASELINE='maybe'"):
        forced({"FASTOPT_FORCE_BASELINE": "maybe"})


def test_a_bad_forced_variant_stops_the_import(tmp_path):
    env = dict(os.environ, FASTOPT_FORCE_ISA="sse9", PYTHONPATH=str(Path(fastopt.__file__).parents[1]))
    env.pop("FASTOPT_FORCE_BASELINE", None)
    done = subprocess.run([sys.executable, "-P", "-c", "import fastopt"], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ImportError: FASTOPT_FORCE_ISA='sse9' names no instruction-set variant" in done.stderr


def _record(pythonpath, out, env_extra=()):
    """Run _trajectories.py with the fastopt under ``pythonpath``; its printed module names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTOPT_FORCE_")}
    env["PYTHONPATH"] = str(pythonpath)
    env.update(dict(env_extra))
    done = subprocess.run([sys.executable, "-P", str(SCRIPT), str(out)], env=env, cwd=str(out.parent),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_same_results(ref, other):
    """Optimizer steps bit for bit; L-BFGS (FMA in its variants) to its convergence tolerance."""
    assert other.keys() == ref.keys()
    assert len(ref) > 100
    for key, value in ref.items():
        assert value.dtype == other[key].dtype, key
        if key.startswith("lbfgs-"):
            np.testing.assert_allclose(other[key], value, rtol=1e-6, atol=1e-4, err_msg=key)
        else:
            assert value.tobytes() == other[key].tobytes(), key


def test_the_trajectories_cover_every_algorithm_and_precision():
    """The cross-variant comparison runs every declared algorithm in float32 and float64, and
    every algorithm without a driver with half-precision params in every mixed-precision mode."""
    import _trajectories
    from fastopt.algorithms import ALGORITHMS
    runs = list(_trajectories._runs())
    assert {name for _, _, name, *_ in runs} == {a.name for a in ALGORITHMS}
    for a in ALGORITHMS:
        dtypes = {np.dtype(dtype).name for _, _, name, _, dtype, _, _ in runs if name == a.name}
        half = set() if a.driver is not None else {d.name for d in _trajectories._half_dtypes()}
        assert dtypes == {"float32", "float64"} | half, a.name
    if _dtypes.bf16_dtype() is not None:
        modes = {key.split("-", 3)[3] for key, _, _, _, dtype, *_ in runs
                 if np.dtype(dtype).name == "bfloat16"}
        assert modes == {"rounded", "f32grad", "master", "master-bf16state", "stochastic"}
    modes = {key.split("-", 3)[3] for key, _, _, _, dtype, *_ in runs
             if np.dtype(dtype).name == "float16"}
    assert modes == {"rounded", "f32grad", "master", "nan"}


def _runnable_variants():
    info = fastopt.build_info()
    return [v for v in info["variants_built"]
            if v in ("baseline", "native") or set(_isa.by_name(v).features) <= set(info["cpu_features"])]


def test_every_variant_gives_the_same_results(tmp_path):
    """Each variant of the installed build this CPU can run, forced in its own process: the
    optimizer steps are bit-identical, L-BFGS's results agree."""
    variants = _runnable_variants()
    if len(variants) < 2:
        pytest.skip(f"this build and CPU have one variant only ({variants})")
    installed = Path(fastopt.__file__).parents[1]
    results = {}
    for variant in variants:
        out = tmp_path / f"{variant}.npz"
        kernels, lbfgs, bucket, vector_isa = _record(installed, out, {"FASTOPT_FORCE_ISA": variant})
        assert kernels == _isa.variant_module("fastopt._core._kernels", variant)
        assert lbfgs == _isa.variant_module("fastopt.minimize._lbfgs", variant)
        assert bucket == _isa.variant_module("fastopt._core._bucket", variant)
        assert vector_isa in VECTOR_ISA[variant]
        results[variant] = _load(out)
    ref = results.pop(variants[0])
    for other in results.values():
        _assert_same_results(ref, other)


@pytest.mark.slow
def test_native_build_gives_the_same_results(tmp_path):
    """A native build (FASTOPT_NATIVE=1, compiled here from the source tree into a temporary copy:
    ~3 minutes on 2 cores) against the installed build's variant for this CPU."""
    src = tmp_path / "native"
    _build_source_copy(src, {"FASTOPT_NATIVE": "1"}, os.environ.get("CC", "cc"))
    native = _record(src, tmp_path / "native.npz")
    assert native[:3] == ["fastopt._core._kernels", "fastopt.minimize._lbfgs", "fastopt._core._bucket"]
    _record(Path(fastopt.__file__).parents[1], tmp_path / "installed.npz")
    _assert_same_results(_load(tmp_path / "installed.npz"), _load(tmp_path / "native.npz"))


@pytest.mark.slow
def test_aarch64_compiler_builds_the_portable_loops(tmp_path):
    """The build with an aarch64 cross compiler (Debian's gcc-aarch64-linux-gnu): no x86 flag or
    intrinsic outside its guards, the variants left out, every module compiled and linked for
    aarch64. (Compiled against this Python's x86-64 headers: a compile check, nothing runs.)"""
    cc = "aarch64-linux-gnu-gcc"
    src = tmp_path / "aarch64"
    log = _build_source_copy(src, {"CC": cc, "LDSHARED": f"{cc} -shared", "FASTOPT_BUILD_JOBS": "1"}, cc)
    assert f"{cc} " in log and " -mavx" not in log and "-march" not in log
    config = {}
    exec((src / "fastopt" / "_build_config.py").read_text(), config)
    assert config["VARIANTS"] == ("baseline",) and config["VARIANT_CFLAGS"] == {}
    modules = list((src / "fastopt").rglob("*.so"))      # the in-place copies
    built = sorted(p.name.split(".")[0] for p in modules)
    expected = sorted(p.stem for p in (src / "fastopt").rglob("*.pyx"))
    assert built == expected
    for path in modules:
        assert path.read_bytes()[18:20] == (183).to_bytes(2, "little"), path   # e_machine: EM_AARCH64


@pytest.mark.parametrize("first", ["torch", "fastopt"])
def test_imports_beside_torch_in_either_order(tmp_path, first):
    """torch and fastopt in one process, either imported first: both work (fastopt links no OpenMP
    runtime, so there is no second libgomp to clash with torch's)."""
    pytest.importorskip("torch")
    second = "fastopt" if first == "torch" else "torch"
    code = f"""
import {first}, {second}
import numpy as np
import fastopt.torch
w = torch.zeros(1000, requires_grad=True)
opt = fastopt.torch.Adam([w], lr=0.1)
ref_w = torch.zeros(1000, requires_grad=True)
ref = torch.optim.Adam([ref_w], lr=0.1)
target = torch.linspace(-1, 1, 1000)
for _ in range(20):
    for p, o in ((w, opt), (ref_w, ref)):
        o.zero_grad()
        ((p - target) ** 2).sum().backward()
        o.step()
assert torch.allclose(w, ref_w, rtol=1e-5, atol=1e-6), float((w - ref_w).abs().max())
x = fastopt.minimize_lbfgs(lambda x: (float(x @ x), 2 * x), np.ones(100)).x
assert np.abs(x).max() < 1e-6
print("ok", torch.get_num_threads(), fastopt.get_num_threads())
"""
    env = dict(os.environ, PYTHONPATH=str(Path(fastopt.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


#: The compiled core's sources whose ``nogil`` functions must not touch the Python C-API.
ANNOTATED = ("_kernels.pyx", "_bucket.pyx", "_reduce.pyx", "_fastopt_threads.pyx")


def _expand_includes(text):
    """``text`` with every ``include "..."`` replaced by the file (the generated ones rendered), so
    the annotation covers the generated loops and the drivers too."""
    import re
    sys.path.insert(0, str(REPO))
    try:
        from build_tools import codegen
        generated = codegen.render_texts()
    finally:
        sys.path.pop(0)

    def replace(match):
        name = match.group(1)
        body = generated[name] if name in generated else (REPO / "fastopt" / "_core" / name).read_text()
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
