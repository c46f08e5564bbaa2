"""``fastopt bench --check TARGETS.json``: speed targets checked against one run's ratios.

The package holds no targets; the file given on the command line declares them (the repository
keeps the project's in ``bench/targets.json``)::

    {"targets": [
      {"table": "steps", "optimizer": "adam", "dtype": "float32", "size": "1e7",
       "ratio": ["fastopt", "C-adam"], "at_most": 1.05},
      {"table": "steps", "dtype": "float32", "size": "200 arrays",
       "overhead_us": ["fastopt", "C-adam"], "at_most": 10},
      {"table": "clip", "dtype": "float32", "ratio": ["torch-foreach", "fastopt"], "at_least": 3},
      {"table": "lbfgs", "max_n": 1000, "value": "ratio", "at_most": 0.1}]}

A target applies to every row of its table (``steps``, ``clip``, ``matrix`` -- the steps that are
not elementwise, in ms, with ``torch`` the faster of torch's implementations --, ``lbfgs``,
``lbfgsb``) that matches its filters -- ``optimizer``, ``dtype``,
``size`` (a label of the table: ``1e7``, ``200 arrays``, ``512x512``), ``threads``, ``min_elements`` /
``max_elements`` (step and clip tables), ``min_n`` / ``max_n`` (L-BFGS) -- and each match is one
check of one measured quantity:

* ``ratio: [a, b]`` -- column ``a`` / column ``b`` of the row;
* ``overhead_us: [a, b]`` -- (``a`` - ``b``) in ns per element times the element count, in µs:
  the time per step that ``a`` spends beyond ``b``;
* ``value: field`` -- a field of an L-BFGS or L-BFGS-B row (``ratio`` is fastopt / SciPy per
  iteration);
* ``column: name`` -- one column of the row (the adapter's ``extra ns/tensor``).

The tables: ``steps``, ``clip``, ``lbfgs``, ``lbfgsb``, ``adapter``, ``iteration``, ``clipstep``,
``threads`` (filtered by ``busy``, the number of spinning processes of the run, and ``between_ms``,
the milliseconds of other work between steps: 0 for steps back to back), ``precision``,
``deepspeed`` (measured with ``--deepspeed`` only: ms per optimizer step under DeepSpeed ZeRO-2
with the optimizer offloaded to the CPU, columns ``DeepSpeedCPUAdam`` and ``fastopt``, sizes
``1 x 1e6``, ``1 x 1e7`` and ``200 tensors``), ``eight_bit`` (AdamW with 8-bit states, ns per
element: columns ``fastopt-8bit``, ``mem-bound``, ``fastopt-f32``, ``fastopt-bf16-8bit``,
``torch-fused``, ``bnb-8bit``, ``bnb-32bit``) and ``eight_bit_memory`` (one row: the state bytes
per param of each optimizer, by ``column``: ``fastopt-8bit``, ``fastopt-lion8bit``, ...).

against ``at_most`` or ``at_least``; ``note`` is printed with it. A target that matches no row is
reported as not measured. The bench exits with status 1 when a measured target is missed.
"""
import json
import numbers

from .settings import NOISY

TABLES = {"steps": "ns_per_elem", "clip": "us_per_call", "matrix": "ms_per_step", "lbfgs": None,
          "lbfgsb": None, "adapter": "us_per_step", "clipstep": "ns_per_elem", "threads": "us_per_step",
          "precision": "ns_per_elem", "deepspeed": "ms_per_step", "iteration": "ms_per_iteration",
          "eight_bit": "ns_per_elem", "eight_bit_memory": "bytes_per_param"}
#: The tables whose targets name a row field (``value``) rather than two columns.
VALUE_TABLES = ("lbfgs", "lbfgsb")
FILTERS = {"optimizer", "dtype", "size", "threads", "busy", "between_ms", "min_elements",
           "max_elements", "min_n", "max_n"}
METRICS = {"ratio", "overhead_us", "value", "column"}
KEYS = FILTERS | METRICS | {"table", "at_most", "at_least", "note"}


def load(path):
    """The targets declared in the JSON file ``path``; ValueError naming the entry if malformed."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read targets file {path}: {exc}") from exc
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"{path}: expected an object with a non-empty list 'targets'")
    for i, t in enumerate(targets):
        where = f"{path}: targets[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{where} is not an object")
        unknown = set(t) - KEYS
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(KEYS)}")
        if t.get("table") not in TABLES:
            raise ValueError(f"{where}: 'table' must be one of {sorted(TABLES)}, got {t.get('table')!r}")
        metrics = METRICS & set(t)
        if len(metrics) != 1:
            raise ValueError(f"{where} needs exactly one of {sorted(METRICS)}")
        metric = metrics.pop()
        if (metric == "value") != (t["table"] in VALUE_TABLES):
            raise ValueError(f"{where}: 'value' is for the {'/'.join(VALUE_TABLES)} tables, "
                             "'ratio'/'overhead_us' for the others")
        if metric == "column":
            if not isinstance(t[metric], str):
                raise ValueError(f"{where}: 'column' must be a column name")
        elif metric != "value" and not (isinstance(t[metric], list) and len(t[metric]) == 2
                                        and all(isinstance(c, str) for c in t[metric])):
            raise ValueError(f"{where}: {metric!r} must be a list of two column names")
        bounds = [k for k in ("at_most", "at_least") if k in t]
        if len(bounds) != 1 or not isinstance(t[bounds[0]], numbers.Real) or isinstance(t[bounds[0]], bool):
            raise ValueError(f"{where} needs one number 'at_most' or 'at_least'")
    return targets


def _matches(target, row):
    if any(key in target and row.get(key) != target[key]
           for key in ("optimizer", "dtype", "size", "threads", "busy", "between_ms")):
        return False
    count = row["n"]
    if any(key in target and count < target[key] for key in ("min_elements", "min_n")):
        return False
    return not any(key in target and count > target[key] for key in ("max_elements", "max_n"))


def _describe(row, table):
    if table in VALUE_TABLES:
        return f"{'L-BFGS' if table == 'lbfgs' else 'L-BFGS-B (bounds)'} n = {row['n']:,}"
    if table == "eight_bit_memory":
        return f"8-bit state memory, one {row['size']} param, bytes per param"
    if table == "eight_bit":
        return f"8-bit AdamW {row['size']}, {row['threads']} thr"
    if table in ("adapter", "clipstep", "threads", "precision", "deepspeed", "iteration"):
        if table == "threads":
            extra = f", busy {row['busy']}, {row.get('between_ms', 0):g} ms between steps"
        else:
            extra = f", {row['threads']} thr"
        return f"{table} {row['size']}{extra}"
    what = f"{row['optimizer']} " if table in ("steps", "matrix") else "clip_grad_norm_ "
    return f"{what}{row['dtype']} {row['size']}, {row['threads']} thr"


def _measure(target, row):
    """(value, text) of the target's quantity on ``row``; value None when a column is missing."""
    if "value" in target:
        return row.get(target["value"]), f"{target['value']}"
    values = row[TABLES[target["table"]]]
    if "column" in target:
        return values.get(target["column"]), target["column"]
    a, b = (target.get("ratio") or target.get("overhead_us"))
    x, y = values.get(a), values.get(b)
    if x is None or y is None:
        return None, f"{b if x is not None else a} not measured"
    if "ratio" in target:
        return (x / y if y else None), f"{a} / {b}"
    per_step = (x - y) * row["n"] / 1e3 if target["table"] == "steps" else x - y
    return per_step, f"({a} - {b}) per step, us"


def check(targets, results):
    """Evaluate ``targets`` on ``results`` ({table: rows}); a list of (ok or None, text)."""
    out = []
    for t in targets:
        rows = [r for r in results.get(t["table"], []) if _matches(t, r)]
        bound = ("<=", t["at_most"]) if "at_most" in t else (">=", t["at_least"])
        note = f"  ({t['note']})" if t.get("note") else ""
        if not rows:
            filters = ", ".join(f"{k}={t[k]}" for k in sorted(FILTERS & set(t)))
            out.append((None, f"{t['table']} [{filters}]: not measured in this run{note}"))
            continue
        for r in rows:
            value, what = _measure(t, r)
            where = _describe(r, t["table"])
            if value is None:
                out.append((None, f"{where}: {what}{note}"))
                continue
            if value < 0 and "overhead_us" not in t:
                # a ratio of times, or a marginal cost (a difference of two runs' times), below
                # zero: a disturbed measurement, which would otherwise pass any "at most"
                out.append((None, f"{where}: {what} = {value:.3g} is negative: the run was "
                                  f"disturbed, measure again{note}"))
                continue
            ok = value <= bound[1] if bound[0] == "<=" else value >= bound[1]
            noisy = "" if (r.get("noise") or 0) <= NOISY else f"  [noisy cell: IQR {100 * r['noise']:.0f}% of median]"
            # an overhead below zero: the two times differ by less than the machine's noise
            shown = "noise (< 0)" if value < 0 else f"{value:.3g}"
            out.append((ok, f"{where}: {what} = {shown} (target {bound[0]} {bound[1]}){note}{noisy}"))
    return out


def format_check(results):
    """The check as printed lines: ✓ met, ✗ missed, ? not measured."""
    return "\n".join(f"  {'?' if ok is None else ('✓' if ok else '✗')} {text}" for ok, text in results)
