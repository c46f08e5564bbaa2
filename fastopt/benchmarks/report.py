"""The benchmark's output: machine description, tables, the plot and the JSON file."""
import json
import math
import os
import platform

import numpy as np

from .settings import ALGORITHMS, MANY, MANY_LABEL, NOISY

#: Contender columns of the step table, in order (absent contenders print as "-").
COLUMNS = ["fastopt", "mem-bound", "C-adam", "torch-fused", "torch-foreach", "torch-loop", "numpy"]
#: Ratio columns: (title, numerator, denominator). fo/bound >= 1: how far fastopt is from the bound.
RATIOS = [("fo/bound", "fastopt", "mem-bound"), ("fused/fo", "torch-fused", "fastopt"),
          ("numpy/fo", "numpy", "fastopt"), ("fo/C-adam", "fastopt", "C-adam")]
CLIP_COLUMNS = ["fastopt", "mem-bound", "torch-foreach", "numpy"]
#: The matrix table (steps that are not elementwise): ms per step; torch = the faster of torch's.
MATRIX_COLUMNS = ["fastopt", "torch-loop", "torch-foreach"]
MATRIX_RATIOS = [("torch/fo", "torch", "fastopt")]
CLIP_RATIOS = [("fo/bound", "fastopt", "mem-bound"), ("torch/fo", "torch-foreach", "fastopt"),
               ("numpy/fo", "numpy", "fastopt")]
#: The 8-bit table (AdamW, ns per element per step; see .eight_bit): contenders and ratios. Ratios
#: > 1 but the first: the other contender is that many times slower than the 8-bit step.
EIGHT_BIT_COLUMNS = ["fastopt-8bit", "mem-bound", "fastopt-f32", "fastopt-bf16-8bit", "torch-fused",
                     "bnb-8bit", "bnb-32bit"]
EIGHT_BIT_RATIOS = [("8bit/bound", "fastopt-8bit", "mem-bound"), ("f32/8bit", "fastopt-f32", "fastopt-8bit"),
                    ("bnb8/8bit", "bnb-8bit", "fastopt-8bit"), ("fused/8bit", "torch-fused", "fastopt-8bit"),
                    ("f32/bf16-8bit", "fastopt-f32", "fastopt-bf16-8bit")]


def machine_info():
    """CPU model, CPU counts, load, platform and versions, for the report's head and the JSON."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    return {"cpu": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "loadavg": load, "caches": cache_sizes()}


def cache_sizes(root="/sys/devices/system/cpu/cpu0/cache"):
    """{"L1d": bytes, "L2": bytes, "L3": bytes, ...} of the first CPU's data and unified caches,
    from Linux's sysfs (empty where it cannot be read: another OS, a container hiding it)."""
    sizes = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return sizes
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(root, entry, "level")) as fh:
                level = int(fh.read())
            with open(os.path.join(root, entry, "type")) as fh:
                kind = fh.read().strip()
            with open(os.path.join(root, entry, "size")) as fh:
                text = fh.read().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMGB")) * scale
        except ValueError:
            continue
        sizes[f"L{level}d" if kind == "Data" else f"L{level}"] = size
    return sizes


def last_level_cache(caches):
    """(name, bytes) of the largest cache in ``caches`` (see :func:`cache_sizes`), or None."""
    if not caches:
        return None
    return max(caches.items(), key=lambda item: item[1])


def where_data_lives(working_set, caches):
    """Where a step's ``working_set`` bytes fit: the smallest cache of ``caches`` that holds
    them (``"L2"``, ``"L3"``), ``"memory"`` beyond the last-level cache, or None when the
    caches are unknown."""
    if not caches:
        return None
    for name, size in sorted(caches.items(), key=lambda item: item[1]):
        if working_set <= size:
            return name
    return "memory"


def fmt(x, width=8):
    """A number with 3 significant digits (no exponent), right-aligned; "-" when missing.

    Every figure of the tables is a time, a rate or a ratio of them, never below zero: a
    negative one is a difference of two timings (an overhead, a marginal cost) that the
    machine's noise turned over, and prints as ``noise``.
    """
    if x is None or not math.isfinite(x):
        return "-".rjust(width)
    if x < 0:
        return "noise".rjust(width)
    if x >= 100:
        s = f"{x:.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    elif x >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3f}"
    return s.rjust(width)


def ratio(a, b):
    return a / b if a is not None and b else None


def _noise(row):
    """The cell's noise (largest IQR/median over its contenders), flagged '!' above NOISY."""
    x = row.get("noise")
    if x is None:
        return "-".rjust(6)
    return (f"{100 * x:.0f}%" + ("!" if x > NOISY else " ")).rjust(6)


def markdown(header, lines):
    """A Markdown table of ``header`` (titles) and ``lines`` (lists of cell texts); the first
    column left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c).strip() or " " for c in cells) + " |" for cells in lines]
    return "\n".join(out)


def _table(rows, keys, columns, ratios, values, as_markdown=False):
    """Rows as a fixed-width table: ``keys`` (title, width, field) left, then ``columns`` from
    ``row[values]``, then ``ratios`` (title, numerator, denominator), then the noise; with
    ``as_markdown``, the same cells as a Markdown table."""
    if as_markdown:
        header = [title for title, _, _ in keys] + list(columns) + [t for t, _, _ in ratios] + ["noise"]
        lines = [[str(r[field]) for _, _, field in keys]
                 + [fmt(r[values].get(c), 0) for c in columns]
                 + [fmt(ratio(r[values].get(a), r[values].get(b)), 0) for _, a, b in ratios]
                 + [_noise(r).strip()] for r in rows]
        return markdown(header, lines)
    widths = {c: max(len(c), 8) for c in columns + [title for title, _, _ in ratios]}
    head = (" ".join(f"{title:<{w}}" if i < 2 else f"{title:>{w}}" for i, (title, w, _) in enumerate(keys))
            + " " + " ".join(f"{c:>{widths[c]}}" for c in columns)
            + " " + " ".join(f"{t:>{widths[t]}}" for t, _, _ in ratios) + f" {'noise':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        v = r[values]
        lines.append(
            " ".join(f"{r[field]!s:<{w}}" if i < 2 else f"{r[field]!s:>{w}}"
                     for i, (_, w, field) in enumerate(keys))
            + " " + " ".join(fmt(v.get(c), widths[c]) for c in columns)
            + " " + " ".join(fmt(ratio(v.get(a), v.get(b)), widths[t]) for t, a, b in ratios)
            + f" {_noise(r)}")
    return "\n".join(lines)


def format_table(rows, as_markdown=False):
    """The optimizer-step table (ns per element per step)."""
    keys = [("optimizer", 9, "optimizer"), ("dtype", 7, "dtype"), ("size", 10, "size"), ("thr", 3, "threads")]
    return _table(rows, keys, COLUMNS, RATIOS, "ns_per_elem", as_markdown=as_markdown)


def format_clip(rows, as_markdown=False):
    """The clip_grad_norm_ table (µs per call)."""
    keys = [("dtype", 7, "dtype"), ("size", 10, "size"), ("thr", 3, "threads")]
    return _table(rows, keys, CLIP_COLUMNS, CLIP_RATIOS, "us_per_call", as_markdown=as_markdown)


def format_matrix(rows, as_markdown=False):
    """The matrix table (ms per step)."""
    keys = [("optimizer", 9, "optimizer"), ("dtype", 7, "dtype"), ("size", 11, "size"), ("thr", 3, "threads")]
    return _table(rows, keys, MATRIX_COLUMNS, MATRIX_RATIOS, "ms_per_step", as_markdown=as_markdown)


def format_traffic(names, dtypes):
    """One line per algorithm: the arrays it reads and writes per element, and the bytes."""
    lines = []
    for name in names:
        a = ALGORITHMS[name]
        size = ", ".join(f"{a.bytes_per_element(np.dtype(d).itemsize)} B ({np.dtype(d).name})" for d in dtypes)
        lines.append(f"  {name:<9} reads {a.reads} arrays, writes {a.writes}: {size} per element")
    return "\n".join(lines)


def bandwidth(rows, caches=None, single_arrays_only=True):
    """{threads: (GB/s, row)} of the memory-traffic bound, on the largest single array measured
    (or, with ``single_arrays_only=False``, the largest row, the 200 arrays included) whose
    working set exceeds the last-level cache of ``caches`` (any size when they are unknown): a
    bound measured in a cache is the cache's bandwidth, not the memory's."""
    out = {}
    llc = last_level_cache(caches)
    for r in rows:
        bound = r["ns_per_elem"].get("mem-bound")
        if bound is None or (single_arrays_only and r["n_key"] == MANY):
            continue
        if llc is not None and r["bytes_per_elem"] * r["n"] <= llc[1]:
            continue
        best = out.get(r["threads"])
        if best is None or r["n"] > best[1]["n"]:
            out[r["threads"]] = (r["bytes_per_elem"] / bound, r)
    return out


def write_plot(rows, path, eight_bit=()):
    """A log-log plot of ns per element against the element count (needs matplotlib): a panel per
    algorithm and dtype of the step table, and one for the 8-bit table's rows ``eight_bit``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    opts = list(dict.fromkeys(r["optimizer"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows)) or ["float32"]
    threads = sorted({r["threads"] for r in rows})
    n_rows = len(opts) + (1 if eight_bit else 0)
    fig, axes = plt.subplots(n_rows, len(dtypes), figsize=(6 * len(dtypes), 3.6 * n_rows),
                             squeeze=False)
    colors = dict(zip(COLUMNS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = ["-", "--", ":", "-."]
    for i, opt in enumerate(opts):
        for j, dt in enumerate(dtypes):
            ax = axes[i][j]
            for c in COLUMNS:
                for ti, th in enumerate(threads):
                    sel = [r for r in rows if r["optimizer"] == opt and r["dtype"] == dt
                           and r["threads"] == th and r["ns_per_elem"].get(c) is not None]
                    single = sorted((r["n"], r["ns_per_elem"][c]) for r in sel if not _is_many(r))
                    many = [(r["n"], r["ns_per_elem"][c]) for r in sel if _is_many(r)]
                    if single:
                        ax.plot(*zip(*single), styles[ti % 4], marker="o", ms=3, color=colors[c],
                                label=f"{c} ({th} thr)")
                    if many:
                        ax.plot(*zip(*many), "*", ms=9, color=colors[c])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{opt} {dt}  (star: 200 arrays)")
            ax.set_xlabel("elements")
            ax.set_ylabel("ns / element / step")
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    if eight_bit:
        _plot_eight_bit(axes[len(opts)][0], eight_bit, plt)
        for ax in axes[len(opts)][1:]:
            ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_eight_bit(ax, rows, plt):
    """The 8-bit table's panel: a line per contender and thread count over the single arrays, a
    star on the 200 arrays (at their element count); the bound dashed in grey."""
    colors = dict(zip([c for c in EIGHT_BIT_COLUMNS if c != "mem-bound"],
                      plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    colors["mem-bound"] = "0.5"
    threads = sorted({r["threads"] for r in rows})
    for c in EIGHT_BIT_COLUMNS:
        for ti, th in enumerate(threads):
            sel = [r for r in rows if r["threads"] == th and r["ns_per_elem"].get(c) is not None]
            single = sorted((r["n"], r["ns_per_elem"][c]) for r in sel if not _is_many(r))
            many = [(r["n"], r["ns_per_elem"][c]) for r in sel if _is_many(r)]
            style = "--" if c == "mem-bound" else ["-", ":", "-.", (0, (5, 1))][ti % 4]
            label = f"{c} ({th} thr)"
            if single:
                ax.plot(*zip(*single), linestyle=style, marker="o", ms=3, color=colors[c], label=label)
                label = None
            if many:
                ax.plot(*zip(*many), "*", ms=9, color=colors[c], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("AdamW, 8-bit states  (star: 200 arrays)")
    ax.set_xlabel("elements")
    ax.set_ylabel("ns / element / step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)


def _is_many(row):
    """A row of the 200 arrays (the 8-bit table's rows have a size label, no size key)."""
    return row["size"] == MANY_LABEL


def write_json(path, **payload):
    """All results as JSON (rows without their internal size key)."""
    payload["results"] = [{k: v for k, v in r.items() if k != "n_key"} for r in payload.get("results", [])]
    payload["algorithms"] = {name: dict(cls=a.cls, hyper=dict(a.hyper), reads=a.reads, writes=a.writes)
                             for name, a in ALGORITHMS.items()}
    payload["matrix"] = [{k: v for k, v in r.items() if k != "seconds_per_step"}
                         for r in payload.get("matrix") or []]
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=str)


def format_adapter(rows, as_markdown=False):
    """The torch adapter table (µs per step; the adapter's extra ns per tensor)."""
    keys = [("case", 14, "size"), ("tensors", 7, "tensors"), ("thr", 3, "threads")]
    return _table(rows, keys, ["numpy-api", "adapter", "torch-fused", "extra ns/tensor", "numpy-flat", "flat"],
                  [("adapter/np", "adapter", "numpy-api"), ("fused/adapter", "torch-fused", "adapter"),
                   ("flat/np-flat", "flat", "numpy-flat")],
                  "us_per_step", as_markdown=as_markdown)


def format_iteration(rows, as_markdown=False):
    """A whole training iteration (zero_grad, backward, step), ms."""
    keys = [("model", 12, "size"), ("thr", 3, "threads")]
    return _table(rows, keys, ["torch-fused", "adapter", "flat"],
                  [("fused/flat", "torch-fused", "flat"), ("fused/adapter", "torch-fused", "adapter")],
                  "ms_per_iteration", as_markdown=as_markdown)


def format_clipstep(rows, as_markdown=False):
    """Adam with clipping inside the step (ns per element per step)."""
    keys = [("size", 6, "size"), ("thr", 3, "threads")]
    return _table(rows, keys, ["step", "clip+step", "torch-clip+fused"],
                  [("clip/step", "clip+step", "step"), ("torch/clip", "torch-clip+fused", "clip+step")],
                  "ns_per_elem", as_markdown=as_markdown)


def format_threads(rows, as_markdown=False):
    """1 and 2 threads, single steps (µs): median and 90th percentile, back to back or with other
    work between steps (``between ms``)."""
    keys = [("size", 11, "size"), ("busy", 4, "busy"), ("between ms", 10, "between_ms")]
    return _table(rows, keys, ["1thr-median", "2thr-median", "1thr-p90", "2thr-p90"],
                  [("2/1 median", "2thr-median", "1thr-median"), ("2/1 p90", "2thr-p90", "1thr-p90")],
                  "us_per_step", as_markdown=as_markdown)


def format_precision(rows, as_markdown=False):
    """Mixed-precision Adam (ns per element per step)."""
    keys = [("size", 10, "size"), ("thr", 3, "threads")]
    columns = ["f32", "bf16-master", "bf16-master-sbf16", "bf16", "f16", "torch-fused-bf16",
               "torch-fused-f16"]
    ratios = [("master/f32", "bf16-master", "f32"), ("f32/sbf16", "f32", "bf16-master-sbf16"),
              ("fused/bf16", "torch-fused-bf16", "bf16"), ("fused/f16", "torch-fused-f16", "f16")]
    return _table(rows, keys, columns, ratios, "ns_per_elem", as_markdown=as_markdown)


def format_deepspeed(rows, as_markdown=False):
    """DeepSpeed ZeRO-2 offload: the client optimizer's step (ms), DeepSpeedCPUAdam vs fastopt."""
    keys = [("case", 12, "size"), ("elements", 10, "n"), ("thr", 3, "threads")]
    return _table(rows, keys, ["DeepSpeedCPUAdam", "fastopt"], [("DS/fastopt", "DeepSpeedCPUAdam", "fastopt")],
                  "ms_per_step", as_markdown=as_markdown)


def format_eight_bit(rows, as_markdown=False):
    """8-bit AdamW against float32 AdamW, torch's fused step and bitsandbytes (ns per element per
    step)."""
    keys = [("size", 10, "size"), ("thr", 3, "threads")]
    return _table(rows, keys, EIGHT_BIT_COLUMNS, EIGHT_BIT_RATIOS, "ns_per_elem", as_markdown=as_markdown)


def format_eight_bit_memory(row):
    """The state memory per param, one line per contender: measured, expected, and the readings."""
    lines = [f"{'optimizer':<18} {'B/param':>8} {'expected':>8}  resident set growth",
             "-" * 72]
    for name, value in row["bytes_per_param"].items():
        reading = row["readings"][name]
        expected = row["expected_bytes_per_param"].get(name)
        expected = "-" if expected is None else f"{expected:.3f}"
        if value is None:
            lines.append(f"{name:<18} {'-':>8} {expected:>8}  not measured: {reading.get('error', '?')}")
            continue
        growth = (reading["rss_after"] - reading["rss_before"]) / 1e6
        lines.append(f"{name:<18} {value:>8.3f} {expected:>8}  "
                     f"{growth:.1f} MB ({reading['source']}) - param and gradient "
                     f"{reading['param_grad_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)
