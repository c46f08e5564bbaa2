"""The benchmark command runs, and its NumPy reference implementations are correct equivalents."""
import subprocess
import zlib
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import bench

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
@pytest.mark.parametrize("name", sorted(bench.CONFIGS))
def test_numpy_reference_matches_fastopt(name, dtype, layout):
    shapes, block = SHAPES[layout]
    p0, grads = _data(shapes, dtype, seed=zlib.crc32(f"{name}-{layout}".encode()))
    fo_params = [p.copy() for p in p0]
    np_params = [p.copy() for p in p0]
    fo = bench.make_fastopt_optimizer(name, fo_params)
    ref = bench.make_numpy_optimizer(name, np_params, block=block)
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
    n_np = bench.numpy_clip_grad_norm_(g_np, 0.5)
    assert n_np == pytest.approx(n_fo, rel=1e-5 if dtype == np.float32 else 1e-12)
    for a, b in zip(g_fo, g_np):
        np.testing.assert_allclose(b, a, **TOL[dtype])


def test_clip_contender_scales_on_every_call():
    """The clip benchmark restores the gradients before each timed call, so every call scales."""
    _, fresh = bench.make_data(bench.MANY, np.float32)
    grads = [g.copy() for g in fresh]
    calls = []

    def fn():
        calls.append(bench.numpy_clip_grad_norm_(grads, bench.CLIP_MAX_NORM))

    run = bench.restored_calls(fn, grads, fresh)
    assert run(3) > 0
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2] > 10 * bench.CLIP_MAX_NORM
    assert np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads)) == pytest.approx(1.0, rel=1e-4)


ARGS = ["--quick", "--sizes", "1e3", "--threads", "1", "--optimizers", "adam,sgd", "--no-plot",
        "--no-torch", "--no-ceiling", "--dtypes", "float32", "--no-lbfgs"]


def test_bench_main_prints_table(capsys, tmp_path):
    out_json = tmp_path / "b.json"
    assert bench.main(ARGS + ["--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "fastopt.build_info()" in out
    assert "ns per element per step" in out
    lines = [ln.split() for ln in out.splitlines()]
    rows = [ln for ln in lines if ln[:2] in (["adam", "float32"], ["sgd", "float32"])]
    assert [r[0] for r in rows] == ["adam", "sgd"]
    assert all(r[2] == "1e3" and r[3] == "1" for r in rows)
    float(rows[0][4])            # fastopt's ns/elem is a number
    assert "clip_grad_norm_" in out and "Issue 3 targets" in out
    import json
    payload = json.loads(out_json.read_text())
    assert {r["optimizer"] for r in payload["results"]} == {"adam", "sgd"}
    assert all(r["ns_per_elem"]["fastopt"] > 0 for r in payload["results"])


def test_bench_cli_subprocess(tmp_path):
    """``python -m fastopt bench`` as a user types it (torch included if installed)."""
    root = str(Path(fastopt.__file__).resolve().parent.parent)
    env = {**__import__("os").environ, "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "fastopt", "bench", "--quick", "--sizes", "1e3", "--threads", "1",
           "--optimizers", "adam,sgd", "--no-plot"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert "optimizer dtype" in res.stdout
    assert "[  1/" in res.stderr          # progress goes to stderr
    assert not list(tmp_path.glob("*.png"))
    adam = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("adam      float32")]
    assert len(adam) == 1
    if "timed inside C" in res.stdout:    # limit.c and gcc were found: the ceiling column is filled
        float(adam[0][5])


def test_bench_bad_arguments(capsys):
    assert bench.main(["--optimizers", "adamax", "--no-plot"]) == 2
    assert "unknown optimizer" in capsys.readouterr().err


def test_lbfgs_comparison_runs(capsys):
    assert bench.main(ARGS + ["--optimizers", "none", "--no-clip", "--lbfgs"]) == 0
    out = capsys.readouterr().out
    assert "L-BFGS vs SciPy" in out
    assert "| 100 |" in out and "| 1,000 |" in out
