"""``fastopt bench``'s threads table in its two regimes: steps back to back, and steps separated by
other work (``--between-work MS``), at 1e4, 1e5 and 1e6 elements and on the 200 tensors; its
targets in bench/targets.json, filtered by ``between_ms``."""
import json
import time
from pathlib import Path

import pytest

from fastopt.benchmarks import cli, report, targets, training

REPO_TARGETS = Path(__file__).resolve().parents[2] / "bench" / "targets.json"


def test_the_table_covers_medium_sizes_and_the_200_tensors():
    cases = dict(training.THREAD_CASES)
    assert [label for label, _ in training.THREAD_CASES] == ["1e4", "1e5", "1e6", "200 tensors"]
    assert cases["1e5"] == ((100_000,),)
    assert cases["200 tensors"] == ((512, 512),) * 4 + ((512,),) * 96 + ((4096,),) * 100


def test_rows_of_both_regimes_and_their_table():
    cases = [("1e4", ((10_000,),)), ("3 tensors", ((3000,), (50, 40), (7,)))]
    log = []
    rows = training.thread_rows(cases, steps=3, busy=0, between=0.5, log=log.append)
    assert [(r["size"], r["between_ms"]) for r in rows] == [
        ("1e4", 0.0), ("1e4", 0.5), ("3 tensors", 0.0), ("3 tensors", 0.5)]
    assert [r["n"] for r in rows] == [10_000, 10_000, 5007, 5007]
    assert [r["tensors"] for r in rows] == [1, 1, 3, 3]
    for r in rows:
        assert set(r["us_per_step"]) == {"1thr-median", "2thr-median", "1thr-p90", "2thr-p90"}
        assert all(v > 0 for v in r["us_per_step"].values())
    assert len(log) == 4 and "between=0.5 ms" in log[1]
    table = report.format_threads(rows).splitlines()
    assert table[0].split()[:4] == ["size", "busy", "between", "ms"]
    assert table[2].split()[:3] == ["1e4", "0", "0.0"]
    assert table[4].split()[:4] == ["3", "tensors", "0", "0.0"]
    assert table[5].split()[:4] == ["3", "tensors", "0", "0.5"]
    # --between-work 0: back to back only
    assert [r["between_ms"] for r in training.thread_rows(cases[:1], 3, 0, 0.0, log.append)] == [0.0]


def test_other_work_takes_the_time_asked():
    work = training.OtherWork(3.0)
    start = time.perf_counter()
    work()
    assert time.perf_counter() - start >= 3e-3
    start = time.perf_counter()
    training.OtherWork(0)()
    assert time.perf_counter() - start < 3e-3


@pytest.mark.parametrize("value", ["-1", "1001", "nan"])
def test_between_work_is_checked(capsys, value):
    assert cli.main(["--between-work", value, "--no-plot", "--no-torch"]) == 2
    assert "--between-work must be between 0 and 1000 ms" in capsys.readouterr().err


def test_the_option_reaches_the_table():
    args = cli.build_parser().parse_args(["--between-work", "2.5"])
    assert args.between_work == 2.5
    assert cli.build_parser().parse_args([]).between_work is None
    assert training.BETWEEN_MS == 1.0


def _threads_row(size, n, between_ms, one, two, busy=0):
    return dict(size=size, n=n, tensors=1, threads=2, busy=busy, between_ms=between_ms, noise=None,
                us_per_step={"1thr-median": one, "2thr-median": two, "1thr-p90": one, "2thr-p90": two})


def test_targets_filter_the_regime(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"targets": [
        {"table": "threads", "busy": 0, "between_ms": 1, "ratio": ["2thr-median", "1thr-median"],
         "at_most": 1.0},
        {"table": "threads", "busy": 0, "between_ms": 0, "size": "1e5",
         "ratio": ["2thr-median", "1thr-median"], "at_most": 0.65}]}))
    rows = {"threads": [_threads_row("1e5", 10**5, 0.0, 40.0, 24.0),
                        _threads_row("1e5", 10**5, 1.0, 44.0, 45.0),
                        _threads_row("1e6", 10**6, 1.0, 400.0, 300.0)]}
    assert targets.check(targets.load(path), rows) == [
        (False, "threads 1e5, busy 0, 1 ms between steps: 2thr-median / 1thr-median = 1.02 "
                "(target <= 1.0)"),
        (True, "threads 1e6, busy 0, 1 ms between steps: 2thr-median / 1thr-median = 0.75 "
               "(target <= 1.0)"),
        (True, "threads 1e5, busy 0, 0 ms between steps: 2thr-median / 1thr-median = 0.6 "
               "(target <= 0.65)")]


def test_the_repository_targets_cover_both_regimes():
    checks = targets.load(REPO_TARGETS)
    rows = {"threads": [_threads_row(size, n, between, 100.0, 100.0 * ratio, busy=busy)
                        for size, n in (("1e4", 10**4), ("1e5", 10**5), ("1e6", 10**6),
                                        ("200 tensors", 1_507_328))
                        for between, ratio in ((0.0, 0.55), (1.0, 1.0))
                        for busy in (0, 2)]}
    result = [text for ok, text in targets.check(checks, rows) if text.startswith("threads")]
    assert all(ok for ok, text in targets.check(checks, rows) if text.startswith("threads"))
    assert "threads 1e5, busy 0, 0 ms between steps: 2thr-median / 1thr-median = 0.55 " \
           "(target <= 0.65)  (2 threads pay at medium sizes on a quiet machine, steps back to back)" \
        in result
    assert any(t.startswith("threads 200 tensors, busy 0, 0 ms between steps: 2thr-median / "
                            "1thr-median = 0.55 (target <= 0.8)") for t in result)
    between = [t for t in result if ", busy 0, 1 ms between steps: 2thr-median" in t]
    assert len(between) == 4 and all("(target <= 1.05)" in t for t in between)
    busy = [t for t in result if ", busy 2, " in t]
    assert len(busy) == 16          # median and p90, both regimes, every size
    # the 1e6 speedup target is the back-to-back one
    assert [t for t in result if "1thr-median / 2thr-median" in t] == [
        "threads 1e6, busy 0, 0 ms between steps: 1thr-median / 2thr-median = 1.82 (target >= 1.6)"
        "  (2 threads pay on a quiet machine (steps back to back; with other work between them "
        "the caches hold other data and 2 threads gain less))"]
