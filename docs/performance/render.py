"""Render the performance pages from the committed ``fastopt bench --json`` data.

The JSON files in ``docs/performance/data/`` are what ``fastopt bench --json FILE`` (the summary)
and ``fastopt bench --full --json FILE`` (every table) wrote on one machine. This script turns
each into Markdown tables and PNG figures in ``docs/performance/_generated/`` (git-ignored; the
docs build calls :func:`render_all`), each table and figure followed by the machine, the date
and the command it came from.

Usage::

    python docs/performance/render.py                     # the pages' tables and figures
    python docs/performance/render.py --readme README.md  # also README's headline block and figure

With ``--readme``, the block between ``<!-- headline-ratios -->`` and ``<!-- /headline-ratios -->``
in that file is rewritten from the summary data, and the figure it shows is written to
``docs/performance/summary.png`` (committed, small).
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = "data"
GENERATED = "_generated"
#: The run whose numbers README's headline block shows (``fastopt bench --json ...``).
SUMMARY_RUN = "summary"
README_FIGURE = "summary.png"
README_BEGIN = "<!-- headline-ratios -->"
README_END = "<!-- /headline-ratios -->"
#: README's headline: one row per optimizer, these cells of the summary run, one thread.
HEADLINE_COLUMNS = (
    ("time / memory bound, 1e7", "of bound", "1e7"),
    ("x faster than torch.optim, 1e7", "x torch", "1e7"),
    ("x faster than torch.optim, 200 arrays", "x torch", "200 arrays"),
    ("x faster than NumPy, 1e7", "x numpy", "1e7"),
)


def _benchmarks():
    """fastopt's benchmark modules (report, summary, ...), from the installed fastopt or else
    from the checkout this script is in (built in place)."""
    try:
        from fastopt.benchmarks import lbfgs_vs_scipy, lbfgsb_vs_scipy, report, summary
    except ImportError:
        sys.path.insert(0, str(HERE.parents[1]))
        from fastopt.benchmarks import lbfgs_vs_scipy, lbfgsb_vs_scipy, report, summary
    return report, summary, lbfgs_vs_scipy, lbfgsb_vs_scipy


def load_runs(data_dir):
    """{name: payload} of every ``*.json`` in ``data_dir``, by file name without ``.json``."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(Path(data_dir).glob("*.json"))}


def provenance(payload):
    """The line under each table and figure: machine, date and command of the run."""
    machine, versions = payload["machine"], payload.get("versions", {})
    load = machine.get("loadavg")
    load = f"; load average {', '.join(f'{x:.2f}' for x in load)} at the start" if load else ""
    software = ", ".join(f"{name} {versions[name]}" for name in ("fastopt", "python", "numpy", "torch")
                         if versions.get(name))
    date = payload["date_utc"].replace("T", " ").replace("+00:00", " UTC")
    return (f"*Machine: {machine['cpu']}, {machine.get('isa', '?')} kernels, {machine['cores']} usable "
            f"cores{load}. Date: {date}. Command: `{payload['command']}` "
            f"({payload['elapsed_s']:.0f} s; {software}).*")


def _section(title, caption, body, payload):
    return f"### {title}\n\n{caption}\n\n{body}\n\n{provenance(payload)}\n"


def _figure(name, alt, payload):
    return f"![{alt}]({name})\n\n{provenance(payload)}\n"


def summary_page(payload, out_dir, name):
    """The summary run's Markdown (its table and figure), writing the figure to ``out_dir``."""
    report, summary, _, _ = _benchmarks()
    rows, caches = payload["results"], payload["machine"].get("caches")
    figure = f"{name}.png"
    summary.write_plot(rows, out_dir / figure, title=f"fastopt bench: {payload['machine']['cpu']}, "
                       f"{payload['machine']['cores']} cores")
    caption = ("ns per element per step, lower is better; *x faster than*: how many times faster "
               "fastopt's step is than torch.optim's fastest CPU step and than in-place NumPy; "
               "*time / memory bound*: fastopt's time over the memory bound's, 1.00 = at the "
               "machine's limit; " + "; ".join(summary.explanation(rows, caches)) + ".")
    return "\n".join([
        _section("fastopt against the memory bound, torch.optim and NumPy", caption,
                 summary.format_table(rows, caches, as_markdown=True), payload),
        _figure(figure, "fastopt's time over the memory bound and its speed-ups over torch.optim "
                "and NumPy, per optimizer", payload)])


def full_page(payload, out_dir, name):
    """The full run's Markdown: every table it holds, and its figures, written to ``out_dir``."""
    report, summary, lbfgs_vs_scipy, lbfgsb_vs_scipy = _benchmarks()
    caches = payload["machine"].get("caches")
    parts = []

    def table(title, caption, rows, body):
        if rows:
            parts.append(_section(title, caption, body(rows), payload))

    table("Optimizer steps",
          "ns per element per step, lower is better. *mem-bound*: the step's memory traffic streamed "
          "in C on the same buffers; *C-adam*: a plain fused Adam step in C; *fo/bound*: fastopt / "
          "mem-bound, 1.00 = at the machine's limit; *fused/fo*, *numpy/fo*: how many times faster "
          "fastopt is. " + summary.bandwidth_line(payload["results"], report.last_level_cache(caches)) + ".",
          payload["results"], lambda rows: report.format_table(rows, as_markdown=True))
    table("clip_grad_norm_ over the 200 arrays",
          "µs per call, lower is better; *mem-bound*: one read pass and one read-and-write pass; "
          "ratios > 1 but fo/bound: fastopt is that many times faster.",
          payload.get("clip"), lambda rows: report.format_clip(rows, as_markdown=True))
    table("Steps that are not elementwise",
          "ms per step, lower is better (Adafactor, Muon, LAMB, LARS on matrices); *torch/fo*: how many "
          "times faster fastopt is than the faster of torch's implementations.",
          payload.get("matrix"), lambda rows: report.format_matrix(rows, as_markdown=True))
    table("The torch adapter",
          "µs per step, lower is better: fastopt.torch.Adam.step() against fastopt.Adam.step(grads) on "
          "the same tensors and torch.optim.Adam(fused=True); *extra ns/tensor*: what the adapter adds "
          "per tensor (a difference of two times: *noise* when the machine turned it below zero).",
          payload.get("adapter"), lambda rows: report.format_adapter(rows, as_markdown=True))
    table("A training iteration",
          "ms per iteration (zero_grad, backward, step) of 10,000 params of 100 elements, lower is "
          "better; *fused/flat*: how many times faster the flat mode is than torch's fused step.",
          payload.get("iteration"), lambda rows: report.format_iteration(rows, as_markdown=True))
    table("Clipping inside the step",
          "ns per element per step, lower is better: Adam with step(grads, max_norm=1) against the step "
          "alone and clip_grad_norm_ + torch's fused Adam.",
          payload.get("clipstep"), lambda rows: report.format_clipstep(rows, as_markdown=True))
    table("One and two threads",
          "µs per single Adam step, median and 90th percentile, lower is better; *between ms*: other "
          "CPU work between steps (0: back to back); *2/1*: two threads' time over one's.",
          payload.get("threads"), lambda rows: report.format_threads(rows, as_markdown=True))
    table("Mixed precision",
          "Adam, ns per element per step, lower is better: float32; bfloat16 params with float32 master "
          "copy and states; with bfloat16 moments; half params with states in their dtype; torch's "
          "fused step on the same half params.",
          payload.get("precision"), lambda rows: report.format_precision(rows, as_markdown=True))
    table("8-bit states",
          "AdamW, ns per element per step, lower is better: fastopt.AdamW8bit against its memory bound, "
          "float32 AdamW, torch's fused step and bitsandbytes; ratios > 1 but 8bit/bound: the 8-bit "
          "step is that many times faster.",
          payload.get("eight_bit"), lambda rows: report.format_eight_bit(rows, as_markdown=True))
    memory = payload.get("eight_bit_memory")
    if memory:
        parts.append(_section(
            "State bytes per param",
            f"The resident set's growth over one {memory[0]['n']:,}-element param's optimizer and first "
            "step, in a fresh process each, minus the param and its gradient (lower is better).",
            "```text\n" + report.format_eight_bit_memory(memory[0]) + "\n```", payload))
    table("DeepSpeed ZeRO-2 offload",
          "ms per optimizer step, lower is better: DeepSpeedCPUAdam against fastopt.torch.AdamW as the "
          "engine's optimizer.",
          payload.get("deepspeed"), lambda rows: report.format_deepspeed(rows, as_markdown=True))
    table("L-BFGS against SciPy's L-BFGS-B",
          "µs per iteration spent outside the objective, lower is better (chained Rosenbrock, m=10, "
          "one BLAS thread); *ratio*: fastopt / SciPy, below 1 = fastopt faster.",
          payload.get("lbfgs"), lbfgs_vs_scipy.format_rows)
    table("L-BFGS-B with bounds against SciPy's",
          "marginal µs per iteration outside the objective, lower is better (a difference of two runs' "
          "times: *noise* when the machine turned it below zero); *ratio*: fastopt / SciPy.",
          payload.get("lbfgsb"), lbfgsb_vs_scipy.format_bounded_rows)
    float32 = [r for r in payload["results"] if r["dtype"] == "float32"]
    if float32:
        figure = f"{name}-summary.png"
        summary.write_plot(float32, out_dir / figure, title=f"fastopt bench --full, float32: "
                           f"{payload['machine']['cpu']}, {payload['machine']['cores']} cores")
        parts.append(_figure(figure, "every optimizer: fastopt's time over the memory bound and its "
                             "speed-ups over torch.optim and NumPy", payload))
    if payload["results"]:
        figure = f"{name}-detail.png"
        report.write_plot(payload["results"], out_dir / figure, eight_bit=payload.get("eight_bit") or ())
        parts.append(_figure(figure, "ns per element per step against the element count, every cell",
                             payload))
    return "\n".join(parts)


def render_run(payload, out_dir, name):
    """Write ``name.md.inc`` (and its figures) for one run to ``out_dir``; returns the Markdown
    path. (``.md.inc``: MyST Markdown that Sphinx does not take for a page of its own; the
    performance page includes it.)"""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = full_page if payload.get("mode") == "full" else summary_page
    path = out_dir / f"{name}.md.inc"
    path.write_text(page(payload, out_dir, name))
    return path


def render_all(docs_dir):
    """Render every run of ``docs_dir/performance/data`` into ``docs_dir/performance/_generated``
    (the docs build calls this); returns the Markdown files written."""
    performance = Path(docs_dir) / "performance"
    out_dir = performance / GENERATED
    return [render_run(payload, out_dir, name) for name, payload in load_runs(performance / DATA).items()]


def headline_block(payload):
    """README's headline block (between the markers, exclusive) from the summary run."""
    _, summary, _, _ = _benchmarks()
    rows = [r for r in payload["results"] if r["threads"] == 1]
    header = ["optimizer"] + [title for title, _, _ in HEADLINE_COLUMNS]
    lines, noisy = [], False
    for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
        cells = [optimizer]
        for _, key, size in HEADLINE_COLUMNS:
            row = next((r for r in rows if r["optimizer"] == optimizer and r["size"] == size), None)
            value = None if row is None else summary.values(row)[key]
            if value is None:
                cells.append("-")
                continue
            mark = "*" if summary.is_noisy(row) else ""
            noisy = noisy or bool(mark)
            cells.append(f"{value:.2f}{mark}")
        lines.append(cells)
    report = _benchmarks()[0]
    machine = payload["machine"]
    date = payload["date_utc"][:10]
    text = [report.markdown(header, lines), "",
            f"float32, one thread; 1.00 = at the machine's memory limit; *x faster than*: fastopt's "
            f"speed-up. Measured by `{payload['command']}` on {machine['cpu']} ({machine.get('isa', '?')} "
            f"kernels, {machine['cores']} cores), {date}"
            + ("; * a noisy cell (the machine was busy)" if noisy else "")
            + ". Every table: [docs/performance](docs/performance/index.md).", "",
            f"![fastopt bench summary](docs/performance/{README_FIGURE})"]
    return "\n".join(text)


def rewrite_readme(readme, payload, figure_dir=HERE):
    """Rewrite ``readme``'s headline block from ``payload`` and write its figure to
    ``figure_dir/summary.png``."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_BEGIN} ... {README_END} block to rewrite")
    block = f"{README_BEGIN}\n{headline_block(payload)}\n{README_END}"
    readme.write_text(text[:start] + block + text[end + len(README_END):])
    _, summary, _, _ = _benchmarks()
    summary.write_plot(payload["results"], Path(figure_dir) / README_FIGURE, figsize=(11, 4.6), dpi=72,
                       title=f"fastopt bench, float32: {payload['machine']['cpu']}, "
                             f"{payload['machine']['cores']} cores")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render docs/performance/_generated/ from the "
                                                 "committed fastopt bench --json data.")
    parser.add_argument("--readme", metavar="README.md", default=None,
                        help="also rewrite this file's headline-ratios block and its figure "
                             f"(docs/performance/{README_FIGURE})")
    args = parser.parse_args(argv)
    docs_dir = HERE.parent
    for path in render_all(docs_dir):
        print(f"wrote {path.relative_to(docs_dir.parent)}")
    if args.readme:
        runs = load_runs(HERE / DATA)
        if SUMMARY_RUN not in runs:
            parser.error(f"no {DATA}/{SUMMARY_RUN}.json: run fastopt bench --json "
                         f"docs/performance/{DATA}/{SUMMARY_RUN}.json first")
        rewrite_readme(args.readme, runs[SUMMARY_RUN])
        print(f"rewrote {args.readme}'s headline block and docs/performance/{README_FIGURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
