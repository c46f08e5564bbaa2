"""``fastopt bench``'s 8-bit table: AdamW8bit against float32 AdamW, torch's fused step,
bitsandbytes and its memory-traffic bound, and the state bytes per param measured from the resident
set. Tiny sizes and short timing: the rows' structure and arithmetic are checked, never a speed."""
import json
import types
from pathlib import Path

import numpy as np
import pytest

from fastopt.benchmarks import cases, ceiling, cli, eight_bit, report, targets

TARGETS_FILE = Path(__file__).resolve().parents[2] / "bench" / "targets.json"
#: A short round-robin: every contender three rounds.
TIMING = dict(budget=0.01, min_reps=3, max_reps=3, min_sample=1e-4, repeats=None)
#: A small stand-in for the 200-array model: params above and below min_8bit_size (4096).
SMALL_MANY = ((64, 128),) * 2 + ((5000,),) * 3 + ((100,),) * 4
#: The bench's run without the other tables.
ARGS = ["--full", "--quick", "--threads", "1", "--optimizers", "adam", "--sizes", "1e3", "--dtypes", "float32",
        "--no-clip", "--no-lbfgs", "--no-training", "--no-precision"]


@pytest.fixture
def tiny(monkeypatch):
    """The 8-bit table at 20,000 and 50,000 elements and a small many-array model; the memory
    measure on 2e6 elements."""
    monkeypatch.setattr(cases, "MANY_SHAPES", SMALL_MANY)
    monkeypatch.setattr(eight_bit, "SIZES", (20_000, 50_000, eight_bit.MANY))
    monkeypatch.setattr(eight_bit, "QUICK_SIZES", (20_000, 50_000, eight_bit.MANY))
    monkeypatch.setattr(eight_bit, "MEMORY_ELEMENTS", 2_000_000)


@pytest.fixture(scope="module")
def bnb():
    pytest.importorskip("torch")
    module, why = eight_bit.import_bitsandbytes()
    if module is None:
        pytest.importorskip("bitsandbytes", reason=why)
    return module


@pytest.fixture(scope="module")
def refs():
    built, why = ceiling.build()
    if built is None:
        pytest.skip(f"no working C compiler: {why}")
    yield built
    built.close()


def _run(torch, bnb, refs, quick):
    return eight_bit.run(types.SimpleNamespace(quick=quick), torch, bnb, refs, lambda msg: None,
                         TIMING, [1])


def test_rows_hold_every_contender_and_ratios_of_the_measured_values(tiny, bnb, refs, monkeypatch):
    import torch
    # under --quick, bitsandbytes is left out from QUICK_BNB_LIMIT elements: here the 50,000
    monkeypatch.setattr(eight_bit, "QUICK_BNB_LIMIT", 50_000)
    rows = _run(torch, bnb, refs, quick=True)
    assert [(r["size"], r["threads"]) for r in rows] == [("20000", 1), ("50000", 1), ("200 arrays", 1)]
    everything = {"fastopt-8bit", "mem-bound", "fastopt-f32", "fastopt-bf16-8bit", "torch-fused",
                  "bnb-8bit", "bnb-32bit"}
    assert set(rows[0]["ns_per_elem"]) == everything == set(report.EIGHT_BIT_COLUMNS)
    assert set(rows[1]["ns_per_elem"]) == everything - {"bnb-8bit", "bnb-32bit"}
    assert rows[1]["bnb_reps"] is None and rows[0]["bnb_reps"] >= 3 and rows[0]["reps"] == 3
    many = sum(int(np.prod(s)) for s in SMALL_MANY)
    assert [r["n"] for r in rows] == [20_000, 50_000, many]
    for r in rows:
        ns = r["ns_per_elem"]
        assert all(v > 0 for v in ns.values())
        assert r["ratios"]["8bit/bound"] == pytest.approx(ns["fastopt-8bit"] / ns["mem-bound"])
        assert r["ratios"]["f32/8bit"] == pytest.approx(ns["fastopt-f32"] / ns["fastopt-8bit"])
        assert r["ratios"]["fused/8bit"] == pytest.approx(ns["torch-fused"] / ns["fastopt-8bit"])
        assert r["ratios"]["f32/bf16-8bit"] == pytest.approx(ns["fastopt-f32"] / ns["fastopt-bf16-8bit"])
        assert r["bound_gb_per_s"] == pytest.approx(16 / ns["mem-bound"])
        assert r["noise"] >= 0
    assert rows[0]["ratios"]["bnb8/8bit"] == pytest.approx(
        rows[0]["ns_per_elem"]["bnb-8bit"] / rows[0]["ns_per_elem"]["fastopt-8bit"])
    assert rows[1]["ratios"]["bnb8/8bit"] is None
    table = report.format_eight_bit(rows).splitlines()
    assert table[0].split()[:4] == ["size", "thr", "fastopt-8bit", "mem-bound"]
    assert table[3].split()[:2] == ["50000", "1"] and table[3].split()[7:9] == ["-", "-"]


def test_without_torch_bitsandbytes_and_c_references_the_fastopt_columns_remain(tiny):
    rows = _run(None, None, None, quick=False)
    assert all(set(r["ns_per_elem"]) == {"fastopt-8bit", "fastopt-f32", "fastopt-bf16-8bit"}
               for r in rows)
    assert all(r["bound_gb_per_s"] is None and r["ratios"]["8bit/bound"] is None for r in rows)


def test_state_bytes_come_from_the_resident_set_of_a_fresh_process():
    names = ["fastopt-8bit", "fastopt-lion8bit", "fastopt-bf16-8bit", "fastopt-f32"]
    readings = eight_bit.state_bytes(names + ["no-such-optimizer"], n=2_000_000)
    row = eight_bit.memory_row(readings, n=2_000_000)
    assert row["size"] == "2000000" and row["n"] == 2_000_000
    for name in names:
        r = readings[name]
        assert r["source"] in ("statm", "peak RSS") and r["n"] == 2_000_000
        param_and_grad = 2_000_000 * (2 + 2 if name == "fastopt-bf16-8bit" else 4 + 4)
        assert r["param_grad_bytes"] == param_and_grad
        assert row["bytes_per_param"][name] == (r["rss_after"] - r["rss_before"] - param_and_grad) / 2e6
        # the measure sees the state (not nothing, not the param twice): within a quarter byte
        assert row["bytes_per_param"][name] == pytest.approx(eight_bit.EXPECTED_STATE_BYTES[name], abs=0.25)
    assert eight_bit.EXPECTED_STATE_BYTES["fastopt-8bit"] == 2 + 2 * 4 / 256
    assert row["bytes_per_param"]["no-such-optimizer"] is None
    assert "KeyError" in readings["no-such-optimizer"]["error"]
    lines = report.format_eight_bit_memory(row).splitlines()
    assert lines[2].split()[:3] == ["fastopt-8bit", f"{row['bytes_per_param']['fastopt-8bit']:.3f}", "2.031"]
    assert lines[-1].startswith("no-such-optimizer") and "not measured: " in lines[-1]


def test_memory_contenders_follow_the_installed_libraries():
    assert eight_bit.memory_names(None, None, quick=False) == [
        "fastopt-8bit", "fastopt-f32", "fastopt-bf16-8bit", "fastopt-lion8bit"]
    everything = eight_bit.memory_names(object(), object(), quick=False)
    assert set(everything) == set(eight_bit.MEMORY) and "bnb-8bit" in everything
    assert eight_bit.memory_names(object(), object(), quick=True) == eight_bit.memory_names(None, None, False)


def _rows(scale_8bit=1.0, bnb8=30.0, memory_8bit=2.03, memory_lion=1.02):
    """Synthetic 8-bit rows (1 and 2 threads): fastopt-8bit at 1 ns/elem times ``scale_8bit``."""
    speed = []
    for size, n in (("1e6", 10**6), ("1e7", 10**7), ("200 arrays", 1_507_328)):
        for threads in (1, 2):
            speed.append(dict(size=size, n=n, threads=threads, noise=0.05, ns_per_elem={
                "fastopt-8bit": scale_8bit, "mem-bound": 0.95, "fastopt-f32": 1.75,
                "fastopt-bf16-8bit": 0.6, "torch-fused": 2.0, "bnb-8bit": bnb8, "bnb-32bit": 12.0}))
    memory = [dict(size="1e7", n=10**7, threads=1, bytes_per_param={
        "fastopt-8bit": memory_8bit, "fastopt-bf16-8bit": memory_8bit, "fastopt-lion8bit": memory_lion,
        "fastopt-f32": 8.0})]
    return {"eight_bit": speed, "eight_bit_memory": memory}


def _eight_bit_targets():
    return [t for t in targets.load(TARGETS_FILE) if t["table"].startswith("eight_bit")]


def test_repository_targets_are_declared_and_checked_on_both_thread_counts():
    declared = _eight_bit_targets()
    metrics = sorted((t["table"], t.get("size"), tuple(t["ratio"]) if "ratio" in t else t["column"],
                      t.get("at_most"), t.get("at_least")) for t in declared)
    assert metrics == sorted([
        ("eight_bit", "1e7", ("fastopt-8bit", "mem-bound"), 1.1, None),
        ("eight_bit", "1e7", ("fastopt-f32", "fastopt-8bit"), None, 1.5),
        ("eight_bit", "200 arrays", ("fastopt-f32", "fastopt-8bit"), None, 1.5),
        ("eight_bit", "1e6", ("bnb-8bit", "fastopt-8bit"), None, 20),
        ("eight_bit", "1e7", ("bnb-8bit", "fastopt-8bit"), None, 20),
        ("eight_bit", "200 arrays", ("bnb-8bit", "fastopt-8bit"), None, 20),
        ("eight_bit", "1e7", ("fastopt-f32", "fastopt-bf16-8bit"), None, 2),
        ("eight_bit_memory", "1e7", "fastopt-8bit", 2.07, None),
        ("eight_bit_memory", "1e7", "fastopt-bf16-8bit", 2.07, None),
        ("eight_bit_memory", "1e7", "fastopt-lion8bit", 1.04, None)])
    assert all("threads" not in t for t in declared)       # 1 and 2 threads alike
    # 7 speed targets on both thread counts, 3 memory targets
    passing = targets.check(declared, _rows())
    assert len(passing) == 7 * 2 + 3 and all(ok is True for ok, _ in passing), passing
    assert "✓ 8-bit AdamW 1e7, 2 thr: fastopt-8bit / mem-bound = 1.05 (target <= 1.1)" in \
        targets.format_check(passing)
    assert "✓ 8-bit state memory, one 1e7 param, bytes per param: fastopt-lion8bit = 1.02 " \
           "(target <= 1.04)" in targets.format_check(passing)


def test_repository_targets_fail_honestly():
    # the 8-bit step at 1.2 ns/elem: 1.26x its bound, only 1.46x faster than float32, 25x bnb
    failing = targets.check(_eight_bit_targets(), _rows(scale_8bit=1.2, bnb8=30.0, memory_8bit=2.1,
                                                        memory_lion=1.05))
    missed = [text for ok, text in failing if ok is False]
    assert len(missed) == 3 * 2 + 3
    assert "8-bit AdamW 1e7, 1 thr: fastopt-8bit / mem-bound = 1.26 (target <= 1.1)" in missed[0]
    assert any(t.startswith("8-bit AdamW 200 arrays, 2 thr: fastopt-f32 / fastopt-8bit = 1.46 "
                            "(target >= 1.5)") for t in missed)
    assert any(t.startswith("8-bit state memory, one 1e7 param, bytes per param: fastopt-8bit = 2.1 "
                            "(target <= 2.07)") for t in missed)
    # bitsandbytes missing: its targets are not measured, not passed
    rows = _rows()
    for r in rows["eight_bit"]:
        del r["ns_per_elem"]["bnb-8bit"]
    unmeasured = [text for ok, text in targets.check(_eight_bit_targets(), rows) if ok is None]
    assert len(unmeasured) == 3 * 2 and all("bnb-8bit not measured" in t for t in unmeasured)


def test_bench_runs_the_table_and_no_eight_bit_skips_it(tiny, capsys, tmp_path):
    out_json, plot = tmp_path / "b.json", tmp_path / "p.png"
    common = ARGS + ["--json", str(out_json), "--no-torch", "--no-ceiling"]
    assert cli.main(common + ["--no-plot", "--no-eight-bit"]) == 0
    out = capsys.readouterr().out
    assert "8-bit states" not in out and "State bytes per param" not in out
    payload = json.loads(out_json.read_text())
    assert "eight_bit" not in payload and "eight_bit_memory" not in payload

    assert cli.main(common + ["--plot", str(plot), "--check", str(TARGETS_FILE)]) in (0, 1)
    out = capsys.readouterr().out
    assert "8-bit states (bitsandbytes' blockwise format), AdamW" in out
    assert "bitsandbytes: skipped, it needs torch" in out
    assert "State bytes per param: the resident set's growth over one 2,000,000-element param" in out
    assert "8-bit state memory, one 2000000 param" not in out      # the targets are for 1e7
    payload = json.loads(out_json.read_text())
    assert [r["size"] for r in payload["eight_bit"]] == ["20000", "50000", "200 arrays"]
    memory = payload["eight_bit_memory"][0]["bytes_per_param"]
    assert set(memory) == {"fastopt-8bit", "fastopt-f32", "fastopt-bf16-8bit", "fastopt-lion8bit"}
    # the 8-bit targets are at 1e6/1e7/200 arrays; here only the 200 arrays are measured
    checked = [t["text"] for t in payload["targets"] if "8-bit AdamW" in t["text"]]
    assert checked and all(t.startswith("8-bit AdamW 200 arrays, 1 thr") for t in checked)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot: skipped, matplotlib is not installed" in out
    else:
        assert f"plot: {plot}" in out and plot.stat().st_size > 0
    assert cli.main(ARGS + ["--no-plot", "--no-torch", "--no-ceiling", "--optimizers", "sgd"]) == 0
    assert "8-bit states" not in capsys.readouterr().out       # Adam's table: run with adam


def test_the_memory_measure_imports_this_fastopt_from_a_source_checkouts_root(tmp_path, monkeypatch):
    """``fastopt bench`` run at the root of a source checkout (where ``fastopt/`` is the unbuilt
    source tree) still measures the installed fastopt in its fresh processes."""
    (tmp_path / "fastopt").mkdir()
    (tmp_path / "fastopt" / "__init__.py").write_text("raise ImportError('the unbuilt source tree')\n")
    monkeypatch.chdir(tmp_path)
    readings = eight_bit.state_bytes(["fastopt-8bit"], n=1_000_000)
    assert "error" not in readings["fastopt-8bit"], readings
    assert readings["fastopt-8bit"]["source"] in ("statm", "peak RSS")
