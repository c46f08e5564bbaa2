"""The default ``fastopt bench`` output: one compact table and one figure.

Both come from the step table's rows (:func:`.cases.bench_cell` with ``summary=True``): per
optimizer, size and thread count, fastopt's ns per element per step against the machine's
memory-traffic bound, torch.optim's fastest CPU path and in-place NumPy, and three ratios:

* ``of bound`` -- fastopt's time / the memory bound's (1.00 = at the machine's limit);
* ``x torch``, ``x numpy`` -- how many times faster fastopt is than torch / NumPy.
"""
import math

import numpy as np

from .report import bandwidth, fmt, last_level_cache, markdown, ratio, where_data_lives
from .settings import MANY_LABEL, NOISY

#: The ratios of the summary: (key, numerator, denominator), numerator and denominator being
#: contenders, ``torch`` the torch column of the row (its fastest path).
RATIOS = (("of bound", "fastopt", "mem-bound"), ("x torch", "torch", "fastopt"),
          ("x numpy", "numpy", "fastopt"))
#: The figure's panels: (ratio key, title, y label).
PANELS = (
    ("of bound", "fastopt's time / the memory bound", "1.00 = at the limit (lower is better)"),
    ("x torch", "fastopt's speed-up over torch.optim", "x faster than torch's fused=True step"),
    ("x numpy", "fastopt's speed-up over NumPy", "x faster than in-place NumPy"),
)
TORCH_PATHS = ("torch-fused", "torch-foreach", "torch-loop")
#: The figure's axes span the cells that are not noisy, but at most this factor either side of
#: their median: a cell whose contender stalled all along (a preempted thread makes every round
#: slow, so its spread stays small) is drawn at the edge with its value written, not let stretch
#: the axis over the other cells.
AXIS_SPREAD = 20.0
#: The lowest a panel's axis goes: fastopt's time can hardly be below the time of streaming its
#: own memory traffic, so a ratio far below 1 is a disturbed measurement of the bound.
AXIS_FLOOR = {"of bound": 0.5}


#: How to install torch's CPU build (a plain ``pip install torch`` takes the CUDA build on Linux
#: x86-64, several GB that a CPU benchmark does not use).
TORCH_CPU_INSTALL = "python -m pip install torch --index-url https://download.pytorch.org/whl/cpu"


def torch_column(row):
    """(contender name, ns per element) of torch's fastest path timed in ``row``, or (None, None)."""
    values = row["ns_per_elem"]
    for name in TORCH_PATHS:
        if values.get(name) is not None:
            return name, values[name]
    return None, None


def values(row):
    """The row's summary figures: ns per element of ``fastopt``, ``mem-bound``, ``torch``,
    ``numpy`` and the :data:`RATIOS`."""
    ns = row["ns_per_elem"]
    out = {"fastopt": ns.get("fastopt"), "mem-bound": ns.get("mem-bound"), "torch": torch_column(row)[1],
           "numpy": ns.get("numpy")}
    for key, a, b in RATIOS:
        out[key] = ratio(out[a], out[b])
    return out


def data_location(row, caches):
    """Where the step's data lives: ``L2``, ``L3``, ``RAM`` (beyond the last-level cache), or
    ``?`` when the caches are unknown."""
    where = where_data_lives(row["bytes_per_elem"] * row["n"], caches)
    return {None: "?", "memory": "RAM"}.get(where, where)


def is_noisy(row):
    return row.get("noise") is not None and row["noise"] > NOISY


#: The table's columns: (group title, [(column title, key, width)]).
GROUPS = (
    ("", [("optimizer", "optimizer", 9), ("size", "size", 10), ("data in", "data", 7), ("thr", "threads", 3)]),
    ("ns per element per step, lower is better",
     [("fastopt", "fastopt", 8), ("mem-bound", "mem-bound", 9), ("torch", "torch", 8), ("numpy", "numpy", 8)]),
    ("fastopt x faster than", [("torch", "x torch", 7), ("numpy", "x numpy", 7)]),
    ("time / memory bound", [("1.00 = limit", "of bound", 12)]),
    ("", [("noise", "noise", 6)]),
)


#: The Markdown table's header: a title per column, naming the group's meaning.
MARKDOWN_HEADER = ("optimizer", "size", "data in", "threads", "fastopt ns", "mem-bound ns", "torch ns",
                   "numpy ns", "x faster than torch", "x faster than numpy", "time / memory bound",
                   "noise")


def _cells(r, caches):
    return {"optimizer": r["optimizer"], "size": r["size"], "data": data_location(r, caches),
            "threads": str(r["threads"]),
            "noise": "-" if r.get("noise") is None else f"{100 * r['noise']:.0f}%" + ("!" if is_noisy(r) else " ")}


def format_table(rows, caches, as_markdown=False):
    """The summary table: a group header naming what each group of numbers means, the column
    titles, and one line per row (with ``as_markdown``, a Markdown table whose column titles
    say it)."""
    if as_markdown:
        lines = []
        for r in rows:
            v, cells = values(r), _cells(r, caches)
            lines.append([cells["optimizer"], cells["size"], cells["data"], cells["threads"]]
                         + [fmt(v[k], 0) for k in ("fastopt", "mem-bound", "torch", "numpy", "x torch",
                                                   "x numpy", "of bound")] + [cells["noise"]])
        return markdown(MARKDOWN_HEADER, lines)
    groups = []
    for title, columns in GROUPS:
        width = sum(w for _, _, w in columns) + len(columns) - 1
        if len(title) > width:          # widen the group's first column to fit its title
            (name, key, w), rest = columns[0], columns[1:]
            columns = [(name, key, w + len(title) - width)] + rest
            width = len(title)
        groups.append((title, columns, width))
    head = " | ".join(f"{title:^{width}}" for title, _, width in groups)
    names = " | ".join(" ".join((f"{name:<{w}}" if i < 3 and g == 0 else f"{name:>{w}}")
                                for i, (name, _, w) in enumerate(columns))
                       for g, (_, columns, _) in enumerate(groups))
    lines = [head.rstrip(), names, "-" * len(names)]
    for r in rows:
        v, cells = values(r), _cells(r, caches)
        parts = []
        for g, (_, columns, _) in enumerate(groups):
            texts = []
            for i, (_, key, w) in enumerate(columns):
                if key in cells:
                    texts.append(f"{cells[key]:<{w}}" if g == 0 and i < 3 else f"{cells[key]:>{w}}")
                else:
                    texts.append(fmt(v[key], w))
            parts.append(" ".join(texts))
        lines.append(" | ".join(parts))
    return "\n".join(lines)


def explanation(rows, caches):
    """The lines under the table: what ``torch`` is per optimizer, the memory bandwidth (only
    from sizes beyond the last-level cache), and the noise measure."""
    lines = []
    paths = {}
    for r in rows:
        paths.setdefault(torch_column(r)[0], []).append(r["optimizer"])
    described = {"torch-fused": "fused=True", "torch-foreach": "foreach=True (torch has no fused step)",
                 "torch-loop": "foreach=False"}
    parts = [f"{described[p]}: {', '.join(dict.fromkeys(names))}" for p, names in paths.items() if p]
    if rows and list(paths) == [None]:
        # not one row has a torch column, Adam's fused step included: torch was not there
        lines.append(f"torch = torch.optim's fastest CPU step: not measured (torch is not installed, "
                     f"or --no-torch; its CPU build: {TORCH_CPU_INSTALL})")
    else:
        if None in paths:
            parts.append(f"not in torch.optim: {', '.join(dict.fromkeys(paths[None]))}")
        lines.append("torch = torch.optim's fastest CPU step; " + "; ".join(parts))
    llc = last_level_cache(caches)
    lines.append(bandwidth_line(rows, llc))
    lines.append(f"noise: the largest interquartile range / median of a cell's contenders ('!' above "
                 f"{100 * NOISY:.0f}%: a busy machine; hollow in the figure)")
    return lines


def bandwidth_line(rows, llc):
    """The memory bandwidth the bound measured, per thread count, on the largest row (the 200
    arrays included) beyond the last-level cache ``llc`` ((name, bytes) or None: then on the
    largest row): :func:`report.bandwidth`'s choice."""
    best = bandwidth(rows, None if llc is None else dict([llc]), single_arrays_only=False)
    if not best:
        if llc is None:
            return "memory bandwidth: no memory bound measured"
        return (f"memory bandwidth: not measured, every step's data fits in the {llc[1] >> 20} MiB "
                f"{llc[0]} cache (the bound there is the cache's)")
    where = f"beyond the {llc[1] >> 20} MiB {llc[0]} cache" if llc else "cache sizes unknown"
    per = ", ".join(f"{th} thr {gb_per_s:.1f} GB/s" for th, (gb_per_s, _) in sorted(best.items()))
    sample = next(iter(best.values()))[1]
    return f"memory bandwidth of the bound ({sample['optimizer']} {sample['size']}, {where}): {per}"


def plot_data(rows):
    """What the summary figure draws, as data (the tests check it, not pixels).

    Returns a dict: ``optimizers`` (x positions 0, 1, ...), ``series`` (one per size and thread
    count: ``label``, ``size``, ``threads``, ``offset`` from the optimizer's position) and
    ``panels``, one per :data:`PANELS` entry: ``key``, ``title``, ``ylabel``, ``ylim`` (from the
    cells that are not noisy, at most :data:`AXIS_SPREAD` times either side of every cell's median and
    not below :data:`AXIS_FLOOR`, with 1.0 inside), ``missing`` (optimizers without that ratio:
    no torch.optim class) and ``points`` (``optimizer``, ``series``, ``x``, ``value`` as
    measured, ``y`` as drawn -- clipped to ``ylim`` --, ``hollow`` for a noisy cell,
    ``clipped``).
    """
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    keys = list(dict.fromkeys((r["size"], r["threads"]) for r in rows))
    spread = 0.7
    series = []
    for j, (size, threads) in enumerate(keys):
        offset = 0.0 if len(keys) == 1 else -spread / 2 + spread * j / (len(keys) - 1)
        series.append(dict(label=f"{size}, {threads} thr", size=size, threads=threads, offset=offset))
    panels = []
    for key, title, ylabel in PANELS:
        points = []
        for r in rows:
            value = values(r)[key]
            if value is None or not math.isfinite(value) or value <= 0:
                continue
            j = keys.index((r["size"], r["threads"]))
            points.append(dict(optimizer=r["optimizer"], series=j,
                               x=optimizers.index(r["optimizer"]) + series[j]["offset"],
                               value=value, hollow=is_noisy(r)))
        trusted = [p["value"] for p in points if not p["hollow"]] or [p["value"] for p in points] or [1.0]
        # (the median of every cell: on a busy machine the few clean cells may be the stalled ones)
        middle = float(np.median([p["value"] for p in points] or [1.0]))
        trusted = [min(max(v, middle / AXIS_SPREAD, AXIS_FLOOR.get(key, 0.0)), middle * AXIS_SPREAD)
                   for v in trusted]
        low, high = min(trusted + [1.0]) / 1.3, max(trusted + [1.0]) * 1.3
        for p in points:
            p["y"] = min(max(p["value"], low), high)
            p["clipped"] = p["y"] != p["value"]
        missing = [o for o in optimizers if not any(p["optimizer"] == o for p in points)]
        panels.append(dict(key=key, title=title, ylabel=ylabel, ylim=(low, high), points=points,
                           missing=missing))
    return dict(optimizers=optimizers, series=series, panels=panels)


def write_plot(rows, path, title=None, figsize=(11, 4.6), dpi=110):
    """The summary figure (needs matplotlib): a panel per ratio, the optimizers along x, a marker
    per size (colour) and thread count (shape); noisy cells hollow, drawn at the axis' edge when
    beyond it; the legend below the panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    data = plot_data(rows)
    sizes = list(dict.fromkeys(s["size"] for s in data["series"]))
    threads = list(dict.fromkeys(s["threads"] for s in data["series"]))
    colors = dict(zip(sizes, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = dict(zip(threads, ["o", "s", "D", "^", "v"]))
    fig, axes = plt.subplots(1, len(data["panels"]), figsize=figsize, squeeze=False)
    for ax, panel in zip(axes[0], data["panels"]):
        for p in panel["points"]:
            s = data["series"][p["series"]]
            color = colors[s["size"]]
            ax.plot([p["x"]], [p["y"]], linestyle="none", marker=markers[s["threads"]], ms=7,
                    markeredgecolor=color, markeredgewidth=1.5, clip_on=False,
                    markerfacecolor="none" if p["hollow"] else color)
            if p["clipped"]:          # at the edge: say where it really is
                up = p["value"] > p["y"]
                ax.annotate(f"{'↑' if up else '↓'}{fmt(p['value'], 0)}", (p["x"], p["y"]), fontsize=6,
                            color=color, ha="center", va="top" if up else "bottom",
                            xytext=(0, -6 if up else 6), textcoords="offset points")
        for name in panel["missing"]:
            ax.text(data["optimizers"].index(name), math.sqrt(panel["ylim"][0] * panel["ylim"][1]),
                    "not in\ntorch.optim" if panel["key"] == "x torch" else "not measured",
                    ha="center", va="center", fontsize=7, color="0.4")
        ax.axhline(1.0, color="0.4", linewidth=1, linestyle="--", zorder=0)
        ax.set_yscale("log")
        ax.set_ylim(*panel["ylim"])
        ax.set_xlim(-0.6, len(data["optimizers"]) - 0.4)
        ax.set_xticks(range(len(data["optimizers"])))
        ax.set_xticklabels(data["optimizers"])
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(panel["ylabel"], fontsize=8)
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    handles = [Line2D([], [], linestyle="none", marker="o", ms=7, color=colors[s], label=f"{s} elements"
                      if s != MANY_LABEL else s) for s in sizes]
    handles += [Line2D([], [], linestyle="none", marker=markers[t], ms=7, color="0.3", label=f"{t} thread"
                       + ("s" if t > 1 else "")) for t in threads]
    handles.append(Line2D([], [], linestyle="none", marker="o", ms=7, markerfacecolor="none",
                          markeredgecolor="0.3", label=f"noisy cell (IQR > {100 * NOISY:.0f}% of median)"))
    handles.append(Line2D([], [], linestyle="none", marker="$↑$", ms=7, color="0.3",
                          label="beyond the axis: at its edge, value written"))
    columns = min(len(handles), 4)
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    rows_of_legend = math.ceil(len(handles) / columns)
    fig.tight_layout(rect=(0, 0.05 + 0.045 * rows_of_legend, 1, 0.95 if title else 1))
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
