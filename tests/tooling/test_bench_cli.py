"""The benchmark command runs, its settings match fastopt, and its NumPy reference implementations
are correct equivalents."""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt.benchmarks import cases, cli, numpy_reference, settings

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}


def _data(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(s) * 0.1).astype(dtype) for s in shapes] for _ in range(4)]
    return params, grads


# One small array; several arrays (the flat "small params" path), one bigger than a block (the
# blocked path, with a tiny block so it stays fast), and a mix of both.
SHAPES = {
    "one": ([(37,)], None),
    "many": ([(5, 3), (7,), (1,), (16,)], None),
    "blocked": ([(1000,)], 64),
    "mixed": ([(300,), (4, 5), (9,), (130,)], 128),
    "unblocked": ([(300,), (4, 5), (9,), (130,)], 0),
}


@pytest.mark.parametrize("layout", sorted(SHAPES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(numpy_reference.NUMPY_OPTIMIZERS))
def test_numpy_reference_matches_fastopt(name, dtype, layout):
    shapes, block = SHAPES[layout]
    p0, grads = _data(shapes, dtype, seed=zlib.crc32(f"{name}-{layout}".encode()))
    fo_params = [p.copy() for p in p0]
    np_params = [p.copy() for p in p0]
    fo = cases.make_fastopt_optimizer(name, fo_params)
    ref = numpy_reference.make_numpy_optimizer(name, np_params, block=block)
    for g in grads:
        fo.step(g)
        ref.step(g)
    for k, (a, b) in enumerate(zip(fo_params, np_params)):
        np.testing.assert_allclose(b, a, **TOL[dtype], err_msg=f"{name} param {k}")
        for sname in ref.state_names:
            np.testing.assert_allclose(ref.state(sname, k), fo.state[k][sname], **TOL[dtype],
                                       err_msg=f"{name} state {sname} of param {k}")
        assert not np.shares_memory(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_clip_matches_fastopt(dtype):
    p0, grads = _data([(50,), (3, 4), (200,)], dtype, seed=3)
    g_fo = [g.copy() for g in grads[0]]
    g_np = [g.copy() for g in grads[0]]
    n_fo = fastopt.clip_grad_norm_(g_fo, 0.5)
    n_np = numpy_reference.numpy_clip_grad_norm_(g_np, 0.5)
    assert n_np == pytest.approx(n_fo, rel=1e-5 if dtype == np.float32 else 1e-12)
    for a, b in zip(g_fo, g_np):
        np.testing.assert_allclose(b, a, **TOL[dtype])


def test_clip_contender_scales_on_every_call():
    """The clip benchmark restores the gradients before each timed call, so every call scales."""
    from fastopt.benchmarks.timing import restored_calls
    _, fresh = cases.make_data(settings.MANY, np.float32)
    grads = [g.copy() for g in fresh]
    calls = []

    def fn():
        calls.append(numpy_reference.numpy_clip_grad_norm_(grads, settings.CLIP_MAX_NORM))

    run = restored_calls(fn, grads, fresh)
    assert run(3) > 0
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2] > 10 * settings.CLIP_MAX_NORM
    assert np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads)) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("name", sorted(settings.ALGORITHMS))
def test_declared_memory_traffic_matches_fastopts_state(name):
    """An algorithm reads its param, its gradient and each state buffer and writes back the param and
    each state buffer: the counts declared in settings are the ones fastopt's state has."""
    algorithm = settings.ALGORITHMS[name]
    # (5000 elements: above min_8bit_size, so a class keeping 8-bit states would show them; the
    # memory bound streams float32 buffers of the param's size)
    params, grads = cases.make_data(5000, np.float32)
    opt = cases.make_fastopt_optimizer(name, params)
    opt.step(grads)
    buffers = cases.state_arrays(opt)
    assert all(b.size == 5000 and b.dtype == np.float32 for b in buffers)
    assert algorithm.writes == 1 + len(buffers)
    assert algorithm.reads == algorithm.writes + 1
    assert algorithm.bytes_per_element(4) == 4 * (algorithm.reads + algorithm.writes)


def test_algorithm_declarations_are_checked():
    with pytest.raises(ValueError, match="writes <= reads"):
        settings.Algorithm("X", {}, reads=2, writes=3)
    assert dict(settings.ALGORITHMS["adam"].hyper)["betas"] == (0.9, 0.999)
    with pytest.raises(TypeError):
        settings.ALGORITHMS["adam"].hyper["lr"] = 1.0          # read-only: shared by every contender


ARGS = ["--full", "--quick", "--sizes", "1e3", "--threads", "1", "--optimizers", "adam,sgd", "--no-plot",
        "--no-torch", "--no-ceiling", "--dtypes", "float32", "--no-lbfgs",
        "--no-eight-bit"]     # (the 8-bit table's own run: test_bench_eight_bit.py)


def _rows(out, *names):
    lines = [ln.split() for ln in out.splitlines()]
    return [ln for ln in lines if ln[:2] in [[n, "float32"] for n in names]]


def test_bench_main_prints_table(capsys, tmp_path):
    out_json = tmp_path / "b.json"
    assert cli.main(ARGS + ["--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "fastopt.build_info()" in out
    assert "ns per element per step" in out
    assert "adam      reads 4 arrays, writes 3: 28 B (float32) per element" in out
    rows = _rows(out, "adam", "sgd")
    assert [r[0] for r in rows] == ["adam", "sgd"]
    assert all(r[2] == "1e3" and r[3] == "1" for r in rows)
    float(rows[0][4])            # fastopt's ns/elem is a number
    assert "clip_grad_norm_" in out
    assert "target" not in out.lower()           # targets only with --check
    payload = json.loads(out_json.read_text())
    assert {r["optimizer"] for r in payload["results"]} == {"adam", "sgd"}
    assert all(r["ns_per_elem"]["fastopt"] > 0 for r in payload["results"])
    assert payload["algorithms"]["sgd"] == dict(cls="SGD", hyper=dict(settings.ALGORITHMS["sgd"].hyper),
                                                reads=3, writes=2)
    assert payload["targets"] is None


def test_missing_torch_and_matplotlib_say_how_to_add_them(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = [a for a in ARGS if a not in ("--no-torch", "--no-plot")] + ["--plot", str(tmp_path / "p.png")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    torch_lines = [ln for ln in out.splitlines() if ln.startswith("torch: not installed")]
    assert torch_lines == ["torch: not installed, so no torch.optim columns "
                           "(`python -m pip install torch --index-url "
                           "https://download.pytorch.org/whl/cpu` adds it)"]
    assert ("plot: skipped, matplotlib is not installed (`python -m pip install matplotlib` adds it)"
            in out.splitlines())
    assert not (tmp_path / "p.png").exists()


def test_bench_uses_its_own_c_reference(capsys):
    """The C references come from the package's ceiling.c (no file outside the package is read);
    the mem-bound and C-adam columns are filled when a C compiler is there."""
    from fastopt.benchmarks import ceiling
    assert ceiling.SOURCE.parent == Path(cli.__file__).parent and ceiling.SOURCE.is_file()
    refs, why = ceiling.build()
    if refs is None:
        pytest.skip(f"no working C compiler: {why}")
    refs.close()
    assert cli.main([a for a in ARGS if a != "--no-ceiling"]) == 0
    out = capsys.readouterr().out
    assert "C references: ceiling.c built with `" in out
    adam, sgd = _rows(out, "adam", "sgd")
    float(adam[5]), float(adam[6]), float(sgd[5])            # mem-bound (both), C-adam (Adam only)
    assert sgd[6] == "-"
    # 1e3 elements sit in a cache: the bound measured there is no memory bandwidth
    from fastopt.benchmarks import report
    llc = report.last_level_cache(report.cache_sizes())
    if llc is None:
        assert "memory bandwidth of the bound, 1 thr:" in out
    else:
        assert "memory bandwidth of the bound" not in out
        assert (f"memory bandwidth: not measured, every single array fits in the {llc[1] >> 20} MiB {llc[0]} "
                "cache (the bound there is the cache's)") in out.splitlines()


def test_no_c_compiler_is_one_line(capsys, monkeypatch):
    from fastopt.benchmarks import ceiling
    monkeypatch.setattr(ceiling, "compiler", lambda: None)
    assert cli.main([a for a in ARGS if a != "--no-ceiling"]) == 0
    out = capsys.readouterr().out
    assert ("C references: skipped, no C compiler found (install gcc or clang, or set CC); "
            "no mem-bound or C-adam columns") in out.splitlines()


def test_check_prints_targets_and_sets_the_exit_status(capsys, tmp_path):
    easy = tmp_path / "easy.json"
    easy.write_text(json.dumps({"targets": [
        {"table": "steps", "optimizer": "adam", "ratio": ["fastopt", "fastopt"], "at_most": 1.0},
        {"table": "lbfgs", "value": "ratio", "at_most": 1.0}]}))
    assert cli.main(ARGS + ["--check", str(easy)]) == 0
    out = capsys.readouterr().out
    assert f"Targets from {easy}" in out
    assert "✓ adam float32 1e3, 1 thr: fastopt / fastopt = 1 (target <= 1.0)" in out
    assert "? lbfgs []: not measured in this run" in out
    hard = tmp_path / "hard.json"
    hard.write_text(json.dumps({"targets": [
        {"table": "steps", "optimizer": "sgd", "ratio": ["fastopt", "fastopt"], "at_least": 2}]}))
    assert cli.main(ARGS + ["--check", str(hard)]) == 1
    assert "✗ sgd float32 1e3, 1 thr: fastopt / fastopt = 1 (target >= 2)" in capsys.readouterr().out


def test_repository_targets_file_is_valid():
    from fastopt.benchmarks import targets
    path = Path(__file__).resolve().parents[2] / "bench" / "targets.json"
    if not path.is_file():
        pytest.skip("bench/targets.json is part of the repository, not of the installed package")
    assert len(targets.load(path)) >= 5


def test_bad_targets_file_fails_before_the_run(capsys, tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"targets": [{"table": "steps", "ratio": ["fastopt"], "at_most": 1}]}))
    assert cli.main(ARGS + ["--check", str(bad)]) == 2
    err = capsys.readouterr()
    assert "targets[0]: 'ratio' must be a list of two column names" in err.err
    assert "ns per element" not in err.out


def test_bench_cli_subprocess(tmp_path):
    """``python -m fastopt bench`` as a user types it (torch included if installed): the summary
    table by default, the full one with --full."""
    root = str(Path(fastopt.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "fastopt", "bench", "--quick", "--sizes", "1e3", "--threads", "1",
           "--optimizers", "adam,sgd", "--no-plot"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "optimizer size" in res.stdout and "optimizer dtype" not in res.stdout
    assert "[  1/" in res.stderr          # progress goes to stderr (not a terminal: lines)
    assert not list(tmp_path.glob("*.png"))
    adam = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("adam      1e3")]
    assert len(adam) == 1
    res = subprocess.run(cmd + ["--full", "--no-training", "--no-precision", "--no-eight-bit", "--no-lbfgs"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "optimizer dtype" in res.stdout
    assert len([ln for ln in res.stdout.splitlines() if ln.startswith("adam      float32")]) == 1


def test_bench_bad_arguments(capsys):
    assert cli.main(["--optimizers", "adamq", "--no-plot"]) == 2
    assert "unknown optimizer" in capsys.readouterr().err
    assert cli.main(["--repeats", "0", "--no-plot"], prog="python -m fastopt bench") == 2
    assert "python -m fastopt bench: error: --repeats must be >= 1" in capsys.readouterr().err


def test_lbfgs_comparison_runs(capsys):
    assert cli.main(ARGS + ["--optimizers", "none", "--no-clip", "--lbfgs"]) == 0
    out = capsys.readouterr().out
    assert "L-BFGS vs SciPy" in out
    assert "| 100 |" in out and "| 1,000 |" in out


def test_package_output_names_no_tracker_issues():
    """Printed output speaks to users: no tracker issue numbers anywhere in the package."""
    import re
    package = Path(fastopt.__file__).resolve().parent
    pattern = re.compile(r"issue\s*#?\d", re.IGNORECASE)
    hits = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*")
            if path.suffix in (".py", ".pyx", ".pxi", ".c", ".h") and path.name != "_build_config.py"
            and not (path.suffix == ".c" and path.with_suffix(".pyx").exists())
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, hits


def test_matrix_table_runs_and_checks(capsys, tmp_path):
    """Adafactor (and Muon) are timed on matrices in their own table; its targets name the size
    label and the ``torch`` column (the faster of torch's implementations)."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"targets": [
        {"table": "matrix", "optimizer": "adafactor", "size": "512x512", "ratio": ["torch", "fastopt"],
         "at_least": 0.0}]}))
    args = ["--quick", "--threads", "1", "--optimizers", "adafactor", "--no-plot", "--no-ceiling",
            "--dtypes", "float32", "--no-lbfgs", "--no-clip", "--check", str(path),
            "--json", str(tmp_path / "m.json")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("adafactor ")]
    assert [r[2] for r in rows] == ["512x512", "1024x1024"]
    float(rows[0][4])
    pytest.importorskip("torch")
    assert "✓ adafactor float32 512x512, 1 thr: torch / fastopt = " in out
    payload = json.loads((tmp_path / "m.json").read_text())
    assert {r["size"] for r in payload["matrix"]} == {"512x512", "1024x1024"}
    assert settings.matrix_label(((4, 5),) * 3) == "3x4x5"
