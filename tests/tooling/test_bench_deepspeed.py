"""``fastopt bench --deepspeed``: the DeepSpeed ZeRO-2 offload table (fastopt.torch.AdamW vs
DeepSpeedCPUAdam as the engine's optimizer) is opt-in, registered for targets, says so in one line
when DeepSpeed is missing, and runs for real when it is installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt
from fastopt.benchmarks import cli, deepspeed_offload, report, targets

TARGETS_FILE = Path(__file__).resolve().parents[2] / "bench" / "targets.json"
#: A short run with nothing but what a test looks at.
ARGS = ["--full", "--quick", "--sizes", "1e3", "--threads", "1", "--optimizers", "none", "--no-plot",
        "--no-ceiling", "--dtypes", "float32", "--no-lbfgs", "--no-clip", "--no-training",
        "--no-precision"]
LABELS = [label for label, _ in deepspeed_offload.CASES]


def _repository_targets():
    if not TARGETS_FILE.is_file():
        pytest.skip("bench/targets.json is part of the repository, not of the installed package")
    return targets.load(TARGETS_FILE)


def _row(size, n, deepspeed_ms, fastopt_ms, noise=0.05):
    return dict(size=size, n=n, tensors=1, threads=1, rounds=9, noise=noise,
                ms_per_step={"DeepSpeedCPUAdam": deepspeed_ms, "fastopt": fastopt_ms},
                ratio=deepspeed_ms / fastopt_ms)


def test_repository_targets_cover_every_deepspeed_case():
    """bench/targets.json names the table, its cases by their labels and its two columns."""
    assert targets.TABLES["deepspeed"] == "ms_per_step"
    entries = [t for t in _repository_targets() if t["table"] == "deepspeed"]
    assert all(t["at_least"] >= 1.0 and t["threads"] == 1 for t in entries)   # never slower, 1 thread
    assert {t["size"] for t in entries} == set(LABELS)
    for t in entries:
        assert t["ratio"] == ["DeepSpeedCPUAdam", "fastopt"]
        assert set(t["ratio"]) == set(deepspeed_offload.COLUMNS)
        assert t["note"] and "#" not in t["note"]


def test_deepspeed_targets_are_checked_on_the_tables_rows():
    rows = {"deepspeed": [_row("1 x 1e6", 10**6, 0.8, 0.5), _row("200 tensors", 1_507_328, 1.3, 1.0, 0.4)]}
    checks = [t for t in _repository_targets() if t["table"] == "deepspeed"]
    rows["deepspeed"][1]["ms_per_step"]["DeepSpeedCPUAdam"] = 0.9    # 0.9x: fastopt slower
    rows["deepspeed"][1]["ratio"] = 0.9
    assert targets.check(checks, rows) == [
        (True, f"deepspeed 1 x 1e6, 1 thr: DeepSpeedCPUAdam / fastopt = 1.6 (target >= {checks[0]['at_least']})"
               f"  ({checks[0]['note']})"),
        (None, f"deepspeed [size=1 x 1e7, threads=1]: not measured in this run  ({checks[1]['note']})"),
        (False, f"deepspeed 200 tensors, 1 thr: DeepSpeedCPUAdam / fastopt = 0.9 (target >= {checks[2]['at_least']})"
                f"  ({checks[2]['note']})  [noisy cell: IQR 40% of median]"),
    ]


def test_deepspeed_table_format():
    text = report.format_deepspeed([_row("1 x 1e6", 10**6, 0.8, 0.5), _row("1 x 1e7", 10**7, 12.0, 8.0)])
    head, rule, *lines = text.splitlines()
    assert head.split() == ["case", "elements", "thr", "DeepSpeedCPUAdam", "fastopt", "DS/fastopt", "noise"]
    assert [ln.split() for ln in lines] == [["1", "x", "1e6", "1000000", "1", "0.800", "0.500", "1.60", "5%"],
                                            ["1", "x", "1e7", "10000000", "1", "12.0", "8.00", "1.50", "5%"]]


def test_case_names():
    assert deepspeed_offload.select_cases("1e6") == ("1 x 1e6",)
    assert deepspeed_offload.select_cases("200, 1 x 1e7,1e6,200") == ("200 tensors", "1 x 1e7", "1 x 1e6")
    with pytest.raises(ValueError, match=r"--deepspeed-cases: unknown case\(s\) \['1e8'\]"):
        deepspeed_offload.select_cases("1e6,1e8")
    with pytest.raises(ValueError, match="--deepspeed-cases"):
        deepspeed_offload.select_cases(" , ")


def test_bad_deepspeed_arguments_fail_before_the_run(capsys):
    assert cli.main(ARGS + ["--deepspeed", "--deepspeed-cases", "1e5"]) == 2
    err = capsys.readouterr()
    assert "--deepspeed-cases: unknown case(s) ['1e5']" in err.err and "ns per element" not in err.out
    assert cli.main(ARGS + ["--deepspeed-cases", "1e6"]) == 2
    assert "--deepspeed-cases needs --deepspeed" in capsys.readouterr().err


def test_default_run_leaves_deepspeed_out(capsys, monkeypatch):
    """Neither the default run nor --quick imports DeepSpeed; the repository's targets file checks
    as before, its DeepSpeed targets reported as not measured."""
    _repository_targets()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the DeepSpeed table ran without --deepspeed")
    monkeypatch.setattr(deepspeed_offload, "measure_offload_step", must_not_run)
    monkeypatch.setattr(deepspeed_offload, "available", must_not_run)
    assert not cli.build_parser().parse_args([]).deepspeed
    assert cli.main(ARGS + ["--check", str(TARGETS_FILE)]) == 0
    out = capsys.readouterr().out
    assert not [ln for ln in out.splitlines() if ln.startswith(("DeepSpeed ZeRO-2", "deepspeed:"))]
    assert [ln.strip() for ln in out.splitlines() if "deepspeed" in ln] == [
        f"? deepspeed [size={label}, threads=1]: not measured in this run  ({note})"
        for label, note in [(t["size"], t["note"]) for t in _repository_targets() if t["table"] == "deepspeed"]]


def test_missing_deepspeed_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "deepspeed", None)          # as if not installed
    out_json = tmp_path / "b.json"
    assert cli.main(ARGS + ["--deepspeed", "--json", str(out_json), "--check", str(_targets_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if "deepspeed" in ln.lower() and str(tmp_path) not in ln] == [
        "deepspeed: not installed, so no DeepSpeed table (`python -m pip install deepspeed` adds it)",
        "  ? deepspeed [size=1 x 1e6]: not measured in this run"]
    payload = json.loads(out_json.read_text())
    assert "deepspeed" not in payload and payload["deepspeed_version"] is None


def test_deepspeed_without_torch_is_one_line(capsys):
    assert cli.main(ARGS + ["--deepspeed", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if "deepspeed" in ln.lower()] == [
        "deepspeed: skipped, the DeepSpeed table needs torch"]


def _targets_file(tmp_path, at_least=1.2):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"targets": [{"table": "deepspeed", "size": "1 x 1e6",
                                             "ratio": ["DeepSpeedCPUAdam", "fastopt"], "at_least": at_least}]}))
    return path


def test_bench_deepspeed_runs(tmp_path):
    """``fastopt bench --deepspeed`` for real, on the 1e6 case: a real ZeRO-2 offload engine (one
    gloo rank, DeepSpeed's CPU accelerator) per optimizer, in a process of its own (it initializes
    torch.distributed). ~10 s once DeepSpeed's CPUAdam op is compiled (its first use compiles it)."""
    pytest.importorskip("torch")
    pytest.importorskip("deepspeed")
    root = str(Path(fastopt.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    out_json = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "fastopt", "bench", *ARGS, "--deepspeed", "--deepspeed-cases", "1e6",
           "--json", str(out_json), "--check", str(_targets_file(tmp_path, at_least=0.0))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.splitlines()
    assert any(ln.startswith("DeepSpeed ZeRO-2, optimizer offloaded to the CPU") for ln in out)
    table = [ln.split() for ln in out if ln.startswith("1 x 1e6 ")]
    assert len(table) == 1 and table[0][3:5] == ["1000000", "1"]
    ds_ms, fo_ms, ratio = (float(x) for x in table[0][5:8])
    assert ds_ms > 0 and fo_ms > 0 and ratio == pytest.approx(ds_ms / fo_ms, rel=0.02, abs=0.01)
    assert not [ln for ln in out if "untested optimizer" in ln]
    assert any(ln.startswith("  ✓ deepspeed 1 x 1e6, 1 thr: DeepSpeedCPUAdam / fastopt = ") for ln in out)
    (row,) = json.loads(out_json.read_text())["deepspeed"]
    assert (row["size"], row["n"], row["threads"]) == ("1 x 1e6", 10**6, 1)
    assert row["rounds"] >= 5 and row["ratio"] == pytest.approx(
        row["ms_per_step"]["DeepSpeedCPUAdam"] / row["ms_per_step"]["fastopt"])


def test_standalone_command_checks_its_arguments_and_says_when_deepspeed_is_missing(capsys, monkeypatch):
    """``python -m fastopt.benchmarks.deepspeed_offload`` (and the bench/deepspeed_offload.py shim)."""
    with pytest.raises(SystemExit) as exc:
        deepspeed_offload.main(["--cases", "1e6,1e9"])
    assert exc.value.code == 2
    assert "--cases: unknown case(s) ['1e9']" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    assert deepspeed_offload.main(["--quick"]) == 1
    assert capsys.readouterr().out == "deepspeed: not installed (`python -m pip install deepspeed` adds it)\n"
