"""``fastopt bench`` by default: one compact summary table and one figure; ``--full`` keeps every
table; ``--json`` records the machine, date and command; noisy cells are hollow in the figure; no
time is printed below zero; the memory bandwidth comes from sizes beyond the last-level cache;
progress goes to stderr (a bar on a terminal)."""
import datetime
import io
import json
import re

import numpy as np
import pytest

import fastopt
from fastopt.benchmarks import cli, lbfgsb_vs_scipy, report, settings, targets

#: A short run: two optimizers, one small size, one thread, no C compiler nor torch needed.
SMALL = ["--quick", "--sizes", "1e3", "--threads", "1", "--optimizers", "adam,sgd", "--no-torch",
         "--no-ceiling"]


def _summary_module():
    from fastopt.benchmarks import summary
    return summary


def test_default_run_is_the_summary_table_and_figure(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    plot = tmp_path / "fig.png"
    assert cli.main(SMALL + ["--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("optimizer "))
    groups = lines[head - 1]
    # the header says what the numbers mean
    assert "ns per element per step, lower is better" in groups
    assert "x faster than" in groups and "time / memory bound" in groups
    assert "1.00 = limit" in lines[head]
    rows = [ln.split() for ln in lines[head + 2:] if ln.startswith(("adam ", "sgd "))]
    assert [r[:2] for r in rows] == [["adam", "1e3"], ["sgd", "1e3"]]
    float(rows[0][5])                                    # fastopt's ns per element
    # the full run's tables are not in the summary
    assert "optimizer dtype" not in out and "clip_grad_norm_" not in out and "reads 4 arrays" not in out
    assert "--full" in out
    # one figure, laptop-sized (wider than tall), not the per-optimizer panels
    assert f"plot: {plot}" in lines and not list(tmp_path.glob("*detail*"))
    height, width = matplotlib.image.imread(plot).shape[:2]
    assert width <= 1400 and height < 0.6 * width


def test_default_settings_tell_the_story():
    """Five optimizers at an in-cache size, a memory-bound size and the 200 arrays, float32, one
    and all cores."""
    args = cli.build_parser().parse_args([])
    opts, sizes, dtypes, threads, _ = cli._parse(args)
    assert opts == ["adam", "adamw", "sgd", "adagrad", "lion"]
    assert sizes == [100_000, 10_000_000, settings.MANY]
    assert dtypes == [np.float32]
    assert threads[0] == 1
    full = cli.build_parser().parse_args(["--full"])
    opts, sizes, dtypes, _, _ = cli._parse(full)
    assert set(settings.ALGORITHMS) <= set(opts) and len(dtypes) == 2 and len(sizes) == 4


def test_full_keeps_every_table(capsys):
    assert cli.main(["--full"] + SMALL + ["--dtypes", "float32", "--no-plot", "--no-lbfgs", "--no-eight-bit",
                                          "--no-training", "--no-precision"]) == 0
    out = capsys.readouterr().out
    assert "optimizer dtype" in out
    assert "adam      reads 4 arrays, writes 3: 28 B (float32) per element" in out
    assert "clip_grad_norm_(max_norm=1.0) over the 200 arrays" in out
    assert "ns per element per step, lower is better" not in out       # the summary's header


def test_options_of_full_tables_need_full(capsys):
    assert cli.main(SMALL + ["--busy", "1", "--no-plot"]) == 2
    assert "--busy tunes a table of the full run: add --full" in capsys.readouterr().err


def test_json_has_machine_date_command_and_versions(capsys, tmp_path):
    out_json = tmp_path / "b.json"
    argv = SMALL + ["--no-plot", "--json", str(out_json)]
    before = datetime.datetime.now(datetime.timezone.utc)
    assert cli.main(argv, prog="fastopt bench") == 0
    payload = json.loads(out_json.read_text())
    assert payload["command"] == "fastopt bench " + " ".join(argv)
    assert payload["mode"] == "summary"
    date = datetime.datetime.fromisoformat(payload["date_utc"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs((date - before).total_seconds()) < 120
    machine = payload["machine"]
    assert machine["cpu"] and machine["cores"] >= 1
    assert machine["isa"] == fastopt.build_info()["variant"]
    assert payload["versions"]["fastopt"] == fastopt.__version__
    assert payload["versions"]["numpy"] == np.__version__
    assert payload["versions"]["python"].count(".") == 2
    assert payload["elapsed_s"] > 0
    assert all(r["cell_seconds"] > 0 for r in payload["results"])


def _row(optimizer, size, threads, fastopt_ns, bound, torch_ns, numpy_ns, noise):
    n = 10_000_000 if size == "1e7" else 100_000
    return dict(optimizer=optimizer, dtype="float32", size=size, n=n, threads=threads, reps=7,
                bytes_per_elem=28, noise=noise,
                ns_per_elem={"fastopt": fastopt_ns, "mem-bound": bound, "torch-fused": torch_ns,
                             "numpy": numpy_ns})


def test_noisy_cells_are_hollow_and_do_not_set_the_axis():
    summary = _summary_module()
    rows = [_row("adam", "1e7", 1, 1.0, 0.9, 1.2, 3.0, 0.05),
            _row("adam", "1e7", 2, 1.0, 0.01, 90.0, 3.0, 4.0),        # a busy machine's cell
            _row("sgd", "1e7", 1, 0.8, 0.8, 1.6, 2.0, 0.1),
            _row("sgd", "1e7", 2, 0.8, 0.7, 1.0, 2.5, 0.3)]
    data = summary.plot_data(rows)
    assert data["optimizers"] == ["adam", "sgd"]
    assert [s["label"] for s in data["series"]] == ["1e7, 1 thr", "1e7, 2 thr"]
    panels = {p["key"]: p for p in data["panels"]}
    assert set(panels) == {"of bound", "x torch", "x numpy"}
    for panel in panels.values():
        low, high = panel["ylim"]
        for p in panel["points"]:
            assert low <= p["y"] <= high
            noisy = p["optimizer"] == "adam" and data["series"][p["series"]]["threads"] == 2 or (
                p["optimizer"] == "sgd" and data["series"][p["series"]]["threads"] == 2)
            assert p["hollow"] == noisy
    torch_panel = panels["x torch"]
    busy = next(p for p in torch_panel["points"] if p["optimizer"] == "adam" and p["hollow"])
    assert busy["value"] == pytest.approx(90.0) and busy["clipped"] and busy["y"] == torch_panel["ylim"][1]
    assert torch_panel["ylim"][1] < 3                     # set by the clean cells (1.2x, 2x)
    bound_panel = panels["of bound"]
    assert bound_panel["ylim"][1] < 2                     # not 100 (1.0 / 0.01)


def test_summary_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    summary = _summary_module()
    rows = [_row("adam", "1e7", 1, 1.0, 0.9, 1.2, 3.0, 0.05), _row("adam", "1e5", 1, 0.5, 0.2, 2.0, 2.0, 0.9)]
    summary.write_plot(rows, tmp_path / "s.png", title="test")
    assert (tmp_path / "s.png").stat().st_size > 1000


NEGATIVE = re.compile(r"(?<![\w.])-\d")


def test_no_negative_time_is_printed():
    """Differences of two timings (the adapter's extra cost per tensor, a marginal cost per
    iteration, an overhead target) print as noise when the machine turned them below zero."""
    us = {"numpy-api": 50.0, "adapter": 45.0, "torch-fused": 80.0, "numpy-flat": 20.0, "flat": 21.0}
    us["extra ns/tensor"] = 1e3 * (us["adapter"] - us["numpy-api"]) / 200
    adapter = [dict(size="200 tensors", n=1_507_328, tensors=200, threads=1, reps=9, us_per_step=us,
                    noise=0.1)]
    text = report.format_adapter(adapter)
    assert not NEGATIVE.search(text), text
    assert "noise" in text.splitlines()[-1]
    for text in (report.format_adapter(adapter), report.format_adapter(adapter, as_markdown=True)):
        assert not NEGATIVE.search(text), text
        assert "noise" in text.splitlines()[-1]          # the extra cost per tensor's cell
    bounded = [dict(n=1000, active=333, scipy_us_per_iter=-76.0, fastopt_us_per_iter=12.0, ratio=-0.16,
                    scipy_setup_us=900.0, fastopt_setup_us=300.0, scipy_nit=25, fastopt_nit=25)]
    text = lbfgsb_vs_scipy.format_bounded_rows(bounded)
    assert not NEGATIVE.search(text), text
    assert "| noise | 12.0 | noise |" in text
    rows = {"steps": [dict(optimizer="adam", dtype="float32", size="200 arrays", n=1_507_328, threads=1,
                           noise=0.05, ns_per_elem={"fastopt": 0.50, "C-adam": 0.52})]}
    checked = targets.check([{"table": "steps", "overhead_us": ["fastopt", "C-adam"], "at_most": 10}], rows)
    assert checked[0][0] is True and not NEGATIVE.search(checked[0][1]), checked
    assert report.fmt(-3.2).strip() == "noise"


def test_memory_bandwidth_only_beyond_the_last_level_cache():
    caches = {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}
    rows = [dict(_row("adam", size, 1, 1.0, 0.5, 1.0, 1.0, 0.0), n_key=n, n=n)
            for size, n in (("1e5", 100_000), ("1e6", 1_000_000), ("1e7", 10_000_000))]
    assert report.where_data_lives(28 * 100_000, caches) == "L3"
    assert report.where_data_lives(28 * 10_000, caches) == "L2"
    assert report.where_data_lives(28 * 10_000_000, caches) == "memory"
    measured = report.bandwidth(rows, caches)
    assert measured[1][1]["size"] == "1e7"
    assert report.bandwidth(rows[:2], caches) == {}                   # 28 MB fits in 32 MiB
    summary = _summary_module()
    assert summary.bandwidth_line(rows[:2], ("L3", 32 << 20)).startswith(
        "memory bandwidth: not measured, every step's data fits in the 32 MiB L3 cache")
    assert "1 thr 56.0 GB/s" in summary.bandwidth_line(rows, ("L3", 32 << 20))


def test_cache_sizes_read_from_sysfs(tmp_path):
    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                                  (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        entry = tmp_path / f"index{index}"
        entry.mkdir()
        (entry / "level").write_text(f"{level}\n")
        (entry / "type").write_text(f"{kind}\n")
        (entry / "size").write_text(f"{size}\n")
    sizes = report.cache_sizes(str(tmp_path))
    assert sizes == {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}
    assert report.last_level_cache(sizes) == ("L3", 32 << 20)
    assert report.cache_sizes(str(tmp_path / "missing")) == {}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from fastopt.benchmarks.progress import Progress
    lines = io.StringIO()
    progress = Progress(total=2, stream=lines)
    progress.step("adam 1e5 thr=1")
    progress.log("building")
    progress.close()
    assert lines.getvalue().splitlines() == ["[  1/2] adam 1e5 thr=1", "building"]
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    progress = Progress(total=2, stream=terminal)
    assert progress.interactive
    progress.step("adam 1e5 thr=1")
    progress.step("adam 1e5 thr=2")
    progress.close()
    text = terminal.getvalue()
    assert "%|" in text and "[  1/2]" not in text and progress.done == 2


def test_tqdm_is_in_the_bench_extra():
    from pathlib import Path
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("pyproject.toml is part of the repository, not of the installed package")
    bench = next(ln for ln in pyproject.read_text().splitlines() if ln.startswith("bench = "))
    assert '"tqdm' in bench


def test_without_torch_the_run_says_so_and_gives_the_cpu_build_command(capsys):
    """A run without torch says torch was not measured (not that Adam is "not in torch.optim") and
    names torch's CPU build: a plain `pip install torch` fetches the CUDA build on Linux x86-64."""
    from fastopt.benchmarks.cli import main

    assert main(["--quick", "--no-torch", "--no-ceiling", "--no-plot", "--sizes", "1e3",
                 "--optimizers", "adam,sgd"]) == 0
    out = capsys.readouterr().out
    assert "fastest CPU step: not measured" in out
    assert "not in torch.optim: adam" not in out
    assert "--index-url https://download.pytorch.org/whl/cpu" in out
