"""The performance pages are generated from the committed ``fastopt bench --json`` data:
``docs/performance/render.py`` renders every run's tables and figures, each followed by the
machine, date and command it came from, and README's headline block is what the script renders
from the committed summary run (so a new run's data cannot leave README stale)."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERFORMANCE = ROOT / "docs" / "performance"


@pytest.fixture(scope="module")
def render():
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("docs/ is part of the repository, not of the installed package")
    spec = importlib.util.spec_from_file_location("performance_render", PERFORMANCE / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(render):
    runs = render.load_runs(PERFORMANCE / "data")
    assert {"summary", "full"} <= set(runs)
    return runs


def test_committed_runs_say_where_and_how_they_were_measured(runs):
    assert runs["summary"]["mode"] == "summary" and runs["full"]["mode"] == "full"
    for payload in runs.values():
        machine = payload["machine"]
        assert machine["cpu"] and machine["isa"] and machine["cores"] >= 1
        assert payload["date_utc"].endswith("+00:00")
        assert payload["command"].split()[-2:-1] == ["--json"] or "--json" in payload["command"]
        assert {"python", "numpy", "fastopt"} <= set(payload["versions"])
        assert payload["elapsed_s"] > 0 and payload["results"]
    assert "--full" in runs["full"]["command"] and "--full" not in runs["summary"]["command"]


def _blocks(markdown):
    """(kind, line index of the block's last line) of every table and figure of a page."""
    lines = markdown.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("|") and (i + 1 == len(lines) or not lines[i + 1].startswith("|")):
            out.append(("table", i))
        elif line.startswith("!["):
            out.append(("figure", i))
    return lines, out


def test_render_writes_every_table_and_figure_with_its_provenance(render, runs, tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copytree(PERFORMANCE / "data", tmp_path / "performance" / "data")
    written = render.render_all(tmp_path)
    out = tmp_path / "performance" / "_generated"
    assert sorted(p.name for p in written) == sorted(f"{name}.md.inc" for name in runs)
    for name, payload in runs.items():
        lines, blocks = _blocks((out / f"{name}.md.inc").read_text())
        tables = [i for kind, i in blocks if kind == "table"]
        figures = [i for kind, i in blocks if kind == "figure"]
        assert len(tables) >= (1 if name == "summary" else 8), name
        assert len(figures) >= 1
        date = payload["date_utc"][:10]
        for kind, i in blocks:
            following = next(ln for ln in lines[i + 1:] if ln.strip())
            assert payload["machine"]["cpu"] in following, (name, kind, i)
            assert date in following and f"`{payload['command']}`" in following, (name, kind, i)
            assert f"{payload['machine']['cores']} usable cores" in following
        for i in figures:
            image = lines[i].split("](", 1)[1].rstrip(")")
            assert (out / image).stat().st_size > 1000
    summary = (out / "summary.md.inc").read_text()
    assert "lower is better" in summary and "1.00 = at the machine's limit" in summary


def test_readme_block_is_what_the_committed_data_renders(render, runs):
    text = (ROOT / "README.md").read_text()
    assert text.count(render.README_BEGIN) == 1 and text.count(render.README_END) == 1
    block = text.split(render.README_BEGIN, 1)[1].split(render.README_END, 1)[0]
    assert block.strip("\n") == render.headline_block(runs["summary"]), (
        "README's headline block is stale: run python docs/performance/render.py --readme README.md")
    figure = PERFORMANCE / render.README_FIGURE
    assert f"docs/performance/{render.README_FIGURE}" in block
    assert 5_000 < figure.stat().st_size < 100_000


def test_readme_rewrite_replaces_only_the_block(render, runs, tmp_path):
    pytest.importorskip("matplotlib")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{render.README_BEGIN}\nold\n{render.README_END}\nafter\n")
    render.rewrite_readme(readme, runs["summary"], figure_dir=tmp_path)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{render.README_END}\nafter\n")
    assert "old" not in text and render.headline_block(runs["summary"]) in text
    assert (tmp_path / render.README_FIGURE).stat().st_size > 1000
    readme.write_text("no block")
    with pytest.raises(ValueError, match="headline-ratios"):
        render.rewrite_readme(readme, runs["summary"], figure_dir=tmp_path)


def test_index_includes_the_generated_pages_and_says_how_to_reproduce():
    index = (PERFORMANCE / "index.md").read_text()
    for name in ("summary", "full"):
        assert f"```{{include}} _generated/{name}.md.inc" in index
    for command in ("fastopt bench --json docs/performance/data/summary.json",
                    "fastopt bench --full --json docs/performance/data/full.json",
                    "python docs/performance/render.py --readme README.md"):
        assert command in index
    assert "1.00" in index and "memory bound" in index.lower()
    ignored = (PERFORMANCE / ".gitignore").read_text().split()
    assert "_generated/" in ignored and "!summary.png" in ignored
    json.loads((PERFORMANCE / "data" / "summary.json").read_text())
