"""``fastopt bench``: the command line of the benchmark.

Everything is reported as ns per element per step (medians over round-robin rounds) and as ratios
measured in the same run. Results go to stdout, progress to stderr.

The default run is the summary (:mod:`.summary`): a few optimizers at three sizes, float32, one
table and one figure, in well under a minute; ``--full`` runs the whole matrix and every table.
"""
import argparse
import datetime
import os
import shlex
import sys
import time

import numpy as np

from . import ceiling, report, settings, summary, targets as targets_mod
from .progress import Progress
from .cases import (bench_cell, bench_clip, bench_matrix_cell, make_data, matrix_row, n_elements,
                    parse_size, size_label)
from .settings import ALGORITHMS, MANY, MANY_LABEL, MANY_SHAPES, MATRIX_CASES
from .timing import noise


def build_parser(prog="fastopt bench"):
    ap = argparse.ArgumentParser(
        prog=prog,
        description="fastopt's fused steps vs this machine's memory-traffic bound, torch.optim and "
                    "in-place NumPy: ns per element per step, medians of round-robin repetitions, "
                    "ratios from one run. By default a summary (a few optimizers, float32, one "
                    "table and one figure, under a minute); --full for every table.")
    ap.add_argument("--full", action="store_true",
                    help="the whole matrix (every optimizer, float32 and float64, four sizes) and "
                         "every table: clip_grad_norm_, matrices, training loop, mixed precision, "
                         "8-bit states, L-BFGS (a few minutes); the options whose help starts "
                         "with 'full:' tune it")
    ap.add_argument("--optimizers", default=None,
                    help=f"comma-separated, from {','.join(list(ALGORITHMS) + list(MATRIX_CASES))} "
                         f"(default {settings.SUMMARY_OPTIMIZERS}; with --full all; "
                         f"{', '.join(MATRIX_CASES)} are timed on matrices, in the matrix table; "
                         "'none' for the L-BFGS comparison alone)")
    ap.add_argument("--sizes", default=None,
                    help=f"comma-separated element counts of one array, and/or {MANY} for the 200-array "
                         f"model (default {settings.SUMMARY_SIZES}, with --quick "
                         f"{settings.SUMMARY_QUICK_SIZES}; with --full {settings.DEFAULT_SIZES}, "
                         f"with --full --quick {settings.QUICK_SIZES})")
    ap.add_argument("--dtypes", default=None,
                    help=f"float32 and/or float64 (default {settings.SUMMARY_DTYPES}; with --full both)")
    ap.add_argument("--threads", default=None, help="comma-separated (default: 1 and all usable cores)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds per cell (default: fit ~0.25 s per cell, clamped to 7..41; with "
                         "--full ~0.2 s, 5..41)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3-11 short rounds per cell, no 1e7 unless --sizes asks")
    ap.add_argument("--no-clip", action="store_true", help="full: skip the clip_grad_norm_ benchmark")
    ap.add_argument("--no-torch", action="store_true", help="leave torch out even when installed")
    ap.add_argument("--torch-loop", action="store_true", default=None,
                    help="full: time torch foreach=False at every size (default: on the 200 arrays "
                         "only; the summary times torch's fastest path alone)")
    ap.add_argument("--numpy-block", type=int, default=None, metavar="ELEMENTS",
                    help="NumPy's cache block in elements (default: 256 KiB per stream; 0: no blocking, "
                         "whole-array ufuncs as usually written)")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="do not compile the C references (no mem-bound and C-adam columns)")
    ap.add_argument("--check", metavar="TARGETS.json", default=None,
                    help="check the measured ratios against the targets declared in this file (the "
                         "repository's are in bench/targets.json); exit status 1 if one is missed")
    ap.add_argument("--plot", nargs="?", const="fastopt-bench.png", default="fastopt-bench.png",
                    metavar="OUT.png", help="write the summary figure (default fastopt-bench.png; "
                    "with --full also the log-log plot of every cell, OUT-detail.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", metavar="OUT.json", default=None,
                    help="write all results as JSON, with the machine, the date, the command line "
                         "and the versions (docs/performance/render.py renders it)")
    ap.add_argument("--no-training", action="store_true",
                    help="full: skip the training-loop tables (torch adapter, clipping inside the step, "
                         "1 vs 2 threads; run with adam)")
    ap.add_argument("--no-precision", action="store_true",
                    help="full: skip the mixed-precision table (bfloat16/float16 Adam; run with adam)")
    ap.add_argument("--no-eight-bit", action="store_true",
                    help="full: skip the 8-bit table (AdamW with 8-bit states vs float32, torch and "
                         "bitsandbytes at 1e6, 1e7 and the 200 arrays whatever --sizes, with "
                         "--quick 1e6 and the 200 arrays; and the state bytes per param, a fresh "
                         "process per optimizer; run with adam)")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="full: start N processes that spin on a core each while the threads table runs, "
                         "to measure steps on a busy machine (default 0)")
    ap.add_argument("--between-work", type=float, default=None, metavar="MS",
                    help="full: the threads table times steps back to back and, as in a training loop, "
                         "each after MS milliseconds of other single-threaded CPU work (NumPy passes "
                         "over a 4 MiB buffer, as a forward and backward pass would do; default 1; "
                         "0: back to back only)")
    ap.add_argument("--deepspeed", action="store_true",
                    help="full: add the DeepSpeed table: ZeRO-2 with the optimizer offloaded to the CPU, "
                         "fastopt.torch.AdamW vs DeepSpeedCPUAdam as the engine's optimizer (needs "
                         "deepspeed and torch; not in the default run: importing DeepSpeed takes "
                         "seconds and its CPUAdam op compiles on first use, a minute or two)")
    ap.add_argument("--deepspeed-cases", default=None, metavar="CASES",
                    help="with --deepspeed: comma-separated, from 1e6, 1e7, 200 (200 tensors) "
                         "(default: all; with --quick 1e6,200)")
    ap.add_argument("--no-lbfgs", dest="lbfgs", action="store_false",
                    help="full: skip the L-BFGS vs SciPy L-BFGS-B comparison (run by default, ~5 s)")
    ap.add_argument("--lbfgs", dest="lbfgs", action="store_true", help=argparse.SUPPRESS)
    return ap


#: Options that tune a table of the full run only: (attribute, option, its value when not given).
FULL_ONLY = (("busy", "--busy", 0), ("between_work", "--between-work", None),
             ("deepspeed", "--deepspeed", False), ("deepspeed_cases", "--deepspeed-cases", None))


def _parse(args):
    """The run's optimizers, sizes, dtypes and thread counts; ValueError on a bad value."""
    if args.optimizers is None:
        args.optimizers = (",".join(list(ALGORITHMS) + list(MATRIX_CASES)) if args.full
                           else settings.SUMMARY_OPTIMIZERS)
    if args.dtypes is None:
        args.dtypes = settings.DEFAULT_DTYPES if args.full else settings.SUMMARY_DTYPES
    opts = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    bad = [o for o in opts if o not in ALGORITHMS and o not in MATRIX_CASES and o != "none"]
    if bad:
        raise ValueError(f"unknown optimizer(s) {bad}; choose from {list(ALGORITHMS) + list(MATRIX_CASES)}")
    opts = [o for o in opts if o != "none"]
    if args.full:
        size_text = args.sizes or (settings.QUICK_SIZES if args.quick else settings.DEFAULT_SIZES)
    else:
        size_text = args.sizes or (settings.SUMMARY_QUICK_SIZES if args.quick else settings.SUMMARY_SIZES)
    sizes = [parse_size(s) for s in size_text.split(",") if s.strip()]
    dtypes = [np.dtype(d.strip()) for d in args.dtypes.split(",") if d.strip()]
    if any(d not in (np.float32, np.float64) for d in dtypes):
        raise ValueError("dtypes must be float32 and/or float64")
    cores = report.machine_info()["usable_cpus"] or 1
    threads = [int(t) for t in args.threads.split(",") if t.strip()] if args.threads else sorted({1, cores})
    if any(t < 1 for t in threads):
        raise ValueError("threads must be >= 1")
    if args.numpy_block is not None and args.numpy_block < 0:
        raise ValueError("--numpy-block must be >= 0")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if args.busy < 0:
        raise ValueError("--busy must be >= 0")
    if args.between_work is not None and not 0 <= args.between_work <= 1000:
        raise ValueError(f"--between-work must be between 0 and 1000 ms, got {args.between_work:g}")
    if not args.full:
        for attribute, option, unset in FULL_ONLY:
            if getattr(args, attribute) != unset:
                raise ValueError(f"{option} tunes a table of the full run: add --full")
    if args.deepspeed_cases is not None:
        if not args.deepspeed:
            raise ValueError("--deepspeed-cases needs --deepspeed")
        from .deepspeed_offload import select_cases
        select_cases(args.deepspeed_cases)
    checks = targets_mod.load(args.check) if args.check else None
    return opts, sizes, dtypes, threads, checks


def _optional(module, what, hint):
    """Import an optional package, or print one line saying what installing it adds."""
    try:
        return __import__(module)
    except ImportError:
        print(f"{module}: not installed, so {what} (`python -m pip install {hint}` adds it)")
        return None


def run_lbfgs(args, progress):
    """L-BFGS vs SciPy's L-BFGS-B: time per iteration outside the objective (chained Rosenbrock)."""
    from . import lbfgs_vs_scipy

    sizes = settings.LBFGS_QUICK_SIZES if args.quick else lbfgs_vs_scipy.DEFAULT_SIZES
    repeats = args.repeats or (settings.LBFGS_QUICK_REPEATS if args.quick else settings.LBFGS_REPEATS)
    progress.log(f"L-BFGS vs SciPy L-BFGS-B at n = {', '.join(str(int(n)) for n in sizes)} "
                 f"({repeats} runs each)")
    rows = lbfgs_vs_scipy.compare_with_scipy(sizes=sizes, repeats=repeats)
    progress.step("L-BFGS vs SciPy L-BFGS-B")
    with progress.paused():
        _print_lbfgs(rows)
    return rows


def _print_lbfgs(rows):
    from . import lbfgs_vs_scipy

    print("\nL-BFGS vs SciPy L-BFGS-B: microseconds per iteration spent outside the objective "
          "(chained Rosenbrock, m=10, one BLAS thread, best of the runs; ratio = fastopt / SciPy;\n"
          "history floor = one-threaded OpenBLAS doing the two passes over the 2m x n history "
          "that any L-BFGS iteration needs)")
    print(lbfgs_vs_scipy.format_rows(rows))


def run_training(args, torch, progress, timing, threads):
    """The torch adapter, clipping inside the step, and 1 vs 2 threads (see .training)."""
    from . import training

    progress.log("training-loop tables: the torch adapter, clipping inside the step, 1 vs 2 threads"
                 + (f" ({args.busy} busy processes)" if args.busy else ""))
    tables = training.run(args, torch, progress.log, timing, threads)
    progress.step("training-loop tables")
    with progress.paused():
        _print_training(args, tables)
    return tables


def _print_training(args, tables):
    if tables["adapter"]:
        print("\ntorch adapter: fastopt.torch.Adam.step() vs fastopt.Adam.step(grads) on the same tensors, "
              "and torch.optim.Adam(fused=True); us per step\n(extra ns/tensor: what the adapter adds "
              "per tensor, reading every .grad)")
        print(report.format_adapter(tables["adapter"]))
        print("(flat: fastopt.torch.Adam(..., flat=True).step() with its per-step checks, the tensors "
              "views of one buffer; numpy-flat: fastopt.Adam.step over one flat array of the same size)")
    if tables.get("iteration"):
        print("\nA training iteration (zero_grad, backward, step) of 10,000 params of 100 elements; "
              "ms per iteration (fused/flat: how many times faster the flat mode is)")
        print(report.format_iteration(tables["iteration"]))
    print("\nAdam with clipping inside the step (step(grads, max_norm=1)) vs the step alone and vs "
          "torch's clip_grad_norm_(foreach) + Adam(fused); ns per element per step")
    print(report.format_clipstep(tables["clipstep"]))
    print(f"\nThreads: single Adam steps (float32, NumPy API) on 1 and 2 threads, alternated; us per "
          f"step, median and 90th percentile; {args.busy} spinning process(es) on the machine (--busy N);"
          f"\nbetween ms: other CPU work between steps (0: back to back; --between-work MS)")
    print(report.format_threads(tables["threads"]))


def run_precision(args, torch, progress, timing, threads):
    """Mixed-precision Adam (see .precision)."""
    from . import precision

    progress.log("mixed precision: bfloat16/float16 Adam")
    rows = precision.run(args, torch, progress.log, timing, threads)
    progress.step("mixed precision")
    with progress.paused():
        _print_precision(rows)
    return rows


def _print_precision(rows):
    print("\nMixed precision, Adam, ns per element per step: f32 (28 B/elem); bf16 params with a float32 "
          "master copy and states (28 B); the same with bf16 moments (20 B);\nbf16/f16 params with "
          "states in their dtype (14 B), and torch's fused step on the same bf16/f16 params")
    print(report.format_precision(rows))


def measure_eight_bit(args, torch, refs, log, timing, threads):
    """The 8-bit tables (see .eight_bit): {"eight_bit": rows, "eight_bit_memory": [row]} and the
    lines that say what was left out. Measured while the C references are loaded (its bound)."""
    from . import eight_bit

    notes = []
    bnb = None
    if torch is None:
        notes.append("bitsandbytes: skipped, it needs torch")
    else:
        bnb, why = eight_bit.import_bitsandbytes()
        if bnb is None:
            notes.append(f"bitsandbytes: {why}, so no bnb columns (`python -m pip install "
                         "bitsandbytes` adds them)")
    if refs is None:
        notes.append("no C references, so no mem-bound column")
    log("8-bit states: AdamW8bit vs AdamW, torch's fused step and bitsandbytes"
        + (" (imported bitsandbytes)" if bnb is not None else ""))
    rows = eight_bit.run(args, torch, bnb, refs, log, timing, threads)
    names = eight_bit.memory_names(torch, bnb, args.quick)
    if args.quick and len(names) < len(eight_bit.memory_names(torch, bnb, False)):
        notes.append("--quick: the state memory of fastopt's optimizers only (importing torch and "
                     "bitsandbytes takes seconds a process)")
    memory = eight_bit.memory_row(eight_bit.state_bytes(names, log=log))
    return {"eight_bit": rows, "eight_bit_memory": [memory]}, notes


def print_eight_bit(tables, notes, caches=None):
    """The 8-bit table and the state bytes per param."""
    from .eight_bit import BOUND_BYTES

    print(f"\n8-bit states (bitsandbytes' blockwise format), AdamW, ns per element per step: "
          f"fastopt.AdamW8bit on float32 params; mem-bound: its {BOUND_BYTES} B per element\n"
          "streamed in C; fastopt.AdamW float32; AdamW8bit on bfloat16 params without a master "
          "copy; torch.optim.AdamW(fused=True); bitsandbytes' AdamW8bit\nand AdamW(optim_bits=32) "
          "on CPU tensors (own round-robin, fewer rounds); ratios > 1 but 8bit/bound: the 8-bit "
          "step is that many times faster")
    for note in notes:
        print(note)
    rows = tables["eight_bit"]
    print(report.format_eight_bit(rows))
    llc = report.last_level_cache(caches)
    for r in rows:
        # the bandwidth of memory, measured beyond the last-level cache only
        beyond = llc is None or BOUND_BYTES * r["n"] > llc[1]
        if r["bound_gb_per_s"] and r["size"] == "1e7" and beyond:
            print(f"memory bandwidth of the bound, {r['threads']} thr: {r['bound_gb_per_s']:.1f} GB/s "
                  f"(1e7, {BOUND_BYTES} B per element)")
    memory = tables["eight_bit_memory"][0]
    print(f"\nState bytes per param: the resident set's growth over one {memory['n']:,}-element "
          "param's optimizer and first step, in a fresh process each, minus the param and gradient")
    print(report.format_eight_bit_memory(memory))


def run_lbfgsb(args, progress):
    """L-BFGS-B with bounds vs SciPy's: the marginal time of an iteration outside the objective."""
    from . import lbfgsb_vs_scipy

    sizes = settings.LBFGS_QUICK_SIZES if args.quick else lbfgsb_vs_scipy.DEFAULT_SIZES
    repeats = args.repeats or (settings.LBFGSB_QUICK_REPEATS if args.quick else settings.LBFGS_REPEATS)
    progress.log(f"L-BFGS-B (bounds) vs SciPy L-BFGS-B at n = {', '.join(str(int(n)) for n in sizes)}")
    rows = lbfgsb_vs_scipy.compare_bounded_with_scipy(sizes=sizes, repeats=repeats)
    try:
        owlqn = lbfgsb_vs_scipy.compare_owlqn_with_saga(repeats=1 if args.quick else 3)
    except ImportError:
        owlqn = None
    progress.step("L-BFGS-B (bounds) vs SciPy L-BFGS-B")
    with progress.paused():
        _print_lbfgsb(rows, owlqn)
    return rows


def _print_lbfgsb(rows, owlqn):
    from . import lbfgsb_vs_scipy

    print("\nL-BFGS-B with bounds vs SciPy L-BFGS-B: microseconds per iteration outside the objective "
          "(chained Rosenbrock in a box that cuts its minimizer off,\na third of the coordinates at "
          "a bound; marginal cost: full run minus a one-iteration run, over the extra iterations)")
    print(lbfgsb_vs_scipy.format_bounded_rows(rows))
    if owlqn is None:
        print("scikit-learn: not installed, so no OWL-QN comparison (`python -m pip install "
              "scikit-learn` adds it)")
    else:
        print(f"OWL-QN (L1 logistic regression, breast cancer): {owlqn['owlqn_s'] * 1e3:.1f} ms vs "
              f"scikit-learn SAGA {owlqn['saga_s'] * 1e3:.1f} ms; objective relative gap "
              f"{owlqn['rel_gap']:.1e}; zero coefficients {owlqn['owlqn_zeros']} / {owlqn['saga_zeros']}")


def run_deepspeed(args, torch, progress, timing, threads=(1,)):
    """DeepSpeed ZeRO-2 offload: the client optimizer's step, fastopt vs DeepSpeedCPUAdam (see
    .deepspeed_offload); None, after one line saying why, when DeepSpeed or torch is missing."""
    from . import deepspeed_offload

    why = ("skipped, the DeepSpeed table needs torch" if torch is None else
           None if deepspeed_offload.available() else
           "not installed, so no DeepSpeed table (`python -m pip install deepspeed` adds it)")
    if why is not None:
        progress.step("DeepSpeed ZeRO-2 offload: skipped")
        with progress.paused():
            print(f"\ndeepspeed: {why}")
        return None
    if args.deepspeed_cases:
        cases = deepspeed_offload.select_cases(args.deepspeed_cases)
    else:
        cases = deepspeed_offload.QUICK if args.quick else None
    progress.log("DeepSpeed ZeRO-2 offload: the engine's optimizer step, fastopt vs DeepSpeedCPUAdam "
                 "(importing DeepSpeed; its CPUAdam op compiles on first use)")
    ds_timing = dict(settings.DEEPSPEED_QUICK_TIMING if args.quick else deepspeed_offload.TIMING,
                     repeats=timing["repeats"])
    result = deepspeed_offload.measure_offload_step(cases, ds_timing, log=progress.log, threads=threads)
    progress.step("DeepSpeed ZeRO-2 offload")
    with progress.paused():
        print("\n" + deepspeed_offload.EXPLANATION + f" (deepspeed {result['deepspeed']})")
        print(report.format_deepspeed(result["rows"]))
    return result


def _print_head(info, torch, refs, refs_note, numpy_block, fastopt):
    print("fastopt bench -- ns per element per step (medians; contenders interleaved round-robin)")
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"]) if info["loadavg"] else "?"
    print(f"machine : {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs; "
          f"load average {load}")
    print(f"software: Python {info['python']}, NumPy {info['numpy']}, "
          f"torch {torch.__version__ if torch is not None else 'not installed'}, fastopt {fastopt.__version__}")
    print(f"fastopt.build_info(): {fastopt.build_info()}")
    if torch is None:
        print(f"torch   : not installed, so its columns are left out (its CPU build: "
              f"{summary.TORCH_CPU_INSTALL})")
    if refs is not None:
        print(f"C references: ceiling.c built with `{refs.flags}`, timed inside C"
              + ("" if refs.openmp else " (no OpenMP: one thread)"))
    elif refs_note:
        print(f"C references: skipped, {refs_note}; no mem-bound or C-adam columns")
    shapes = {}
    for s in MANY_SHAPES:
        shapes[s] = shapes.get(s, 0) + 1
    print(f"{MANY_LABEL} = {' + '.join(f'{k} x {s}' for s, k in shapes.items())} = "
          f"{n_elements(MANY):,} elements")
    blk = ("unblocked" if numpy_block == 0 else
           f"cache-blocked by {numpy_block} elements" if numpy_block else "cache-blocked by 256 KiB per stream")
    print(f"numpy: in-place out= ufuncs, {blk}, single-threaded whatever the thread count (NumPy's "
          "ufuncs are)")
    if torch is not None:
        print("torch-loop (foreach=False): on the 200 arrays only unless --torch-loop")


def _print_matrix(rows):
    if rows:
        print("\nSteps that are not elementwise (Adafactor's row and column statistics, Muon's "
              "Newton-Schulz products, LAMB's and LARS's trust ratios), ms per step;\ntorch-loop: "
              "foreach=False (Muon's only implementation), torch-foreach: foreach=True (LAMB and LARS: "
              "none in torch.optim); torch/fo: the faster torch / fastopt; BLAS pinned to the row's "
              "threads")
        print(report.format_matrix(rows))


def _print_results(rows, clip_rows, opts, dtypes, caches=None):
    if rows:
        print("Optimizer steps, ns per element per step (lower is better)")
        print("mem-bound: the time to stream the algorithm's memory traffic (below) in C, on the same "
              "buffers; C-adam: a plain fused Adam step in C\nfo/bound: fastopt / mem-bound (1 = at the "
              "machine's memory limit); fused/fo, numpy/fo > 1: fastopt is faster")
        print(report.format_traffic(opts, dtypes))
        print(report.format_table(rows))
        measured = report.bandwidth(rows, caches)
        for th, (gbs, r) in sorted(measured.items()):
            print(f"memory bandwidth of the bound, {th} thr: {gbs:.1f} GB/s ({r['optimizer']} "
                  f"{r['dtype']} {r['size']}, {r['bytes_per_elem']} B per element)")
        llc = report.last_level_cache(caches)
        if not measured and llc is not None and any("mem-bound" in r["ns_per_elem"] for r in rows):
            print(f"memory bandwidth: not measured, every single array fits in the {llc[1] >> 20} MiB "
                  f"{llc[0]} cache (the bound there is the cache's)")
    if clip_rows:
        print(f"\nclip_grad_norm_(max_norm={settings.CLIP_MAX_NORM}) over the 200 arrays (norm ~12: every "
              "call scales), us per call; mem-bound: one read pass plus one read-and-write pass")
        print(report.format_clip(clip_rows))
    if rows or clip_rows:
        print(f"noise: the largest interquartile range / median among a cell's contenders ('!' above "
              f"{100 * settings.NOISY:.0f}%: the machine was busy; rerun or raise --repeats)")


def _print_summary_head(info, torch, refs, refs_note, fastopt):
    """The summary's head: machine, software and the C references, a line each."""
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"]) if info["loadavg"] else "?"
    llc = report.last_level_cache(info.get("caches"))
    cache = f", {llc[1] >> 20} MiB {llc[0]} cache" if llc else ""
    print(f"machine : {info['cpu']}, {info['usable_cpus']} usable cores{cache}; load average {load}")
    print(f"software: fastopt {fastopt.__version__} ({fastopt.build_info().get('variant', '?')} kernels), "
          f"Python {info['python']}, NumPy {info['numpy']}, "
          f"torch {torch.__version__ if torch is not None else 'not installed'}")
    if refs is not None:
        print(f"memory bound: the step's reads and writes streamed by a C loop (`{refs.flags}`) on "
              "the same buffers: no step can be faster")
    elif refs_note:
        print(f"memory bound: not measured, {refs_note}")


def _print_summary(rows, caches, timing, repeats):
    rounds = f"{repeats} rounds" if repeats else f"{timing['min_reps']}-{timing['max_reps']} rounds"
    print(f"Optimizer steps, {', '.join(dict.fromkeys(r['dtype'] for r in rows))}: medians of "
          f"{rounds} per cell, contenders interleaved round-robin (`fastopt bench --full`: every table)")
    print(summary.format_table(rows, caches))
    for line in summary.explanation(rows, caches):
        print(line)


def _command_line(prog, argv):
    return " ".join([prog] + [shlex.quote(a) for a in argv])


def _versions(fastopt, torch):
    import platform
    return {"python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__ if torch is not None else None, "fastopt": fastopt.__version__}


def _machine(info, fastopt):
    """The machine part of the JSON: CPU model, ISA variant, cores, caches, load."""
    build = fastopt.build_info()
    return {**info, "isa": build.get("variant"), "cpu_features": build.get("cpu_features"),
            "cores": info["usable_cpus"]}


def main(argv=None, prog="fastopt bench"):
    argv = sys.argv[1:] if argv is None else list(argv)
    run_start = time.perf_counter()
    started_utc = datetime.datetime.now(datetime.timezone.utc)
    args = build_parser(prog).parse_args(argv)
    try:
        opts, sizes, dtypes, threads, checks = _parse(args)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.full:
        timing = dict(settings.QUICK_TIMING if args.quick else settings.TIMING, repeats=args.repeats)
    else:
        timing = dict(settings.QUICK_TIMING if args.quick else settings.SUMMARY_TIMING, repeats=args.repeats)
    progress = Progress(total=0)
    try:
        return _run(args, prog, argv, opts, sizes, dtypes, threads, checks, timing, progress,
                    run_start, started_utc)
    finally:
        progress.close()


def _run(args, prog, argv, opts, sizes, dtypes, threads, checks, timing, progress, run_start, started_utc):
    import fastopt

    full = args.full
    log = progress.log
    steps_opts = [o for o in opts if o in ALGORITHMS]
    with_clip = full and not args.no_clip
    with_lbfgs = full and args.lbfgs
    adam_tables = full and "adam" in opts
    cells = [(s, d, o, t) for s in sizes for d in dtypes for o in steps_opts for t in threads]
    clip_cells = [(d, t) for d in dtypes for t in threads] if with_clip else []
    matrix_cells = [(case, case.quick_shapes if args.quick else case.shapes, d, t)
                    for o in opts if o in MATRIX_CASES for case in MATRIX_CASES[o]
                    for d in dtypes if d.name in settings.MATRIX_DTYPES for t in threads]
    extra_tables = (sum([adam_tables and not args.no_eight_bit, adam_tables and not args.no_training,
                         adam_tables and not args.no_precision, bool(args.deepspeed)])
                    + 2 * with_lbfgs)
    progress.add(len(cells) + len(clip_cells) + len(matrix_cells) + extra_tables)

    log("importing torch" if not args.no_torch else "starting")
    torch = None if args.no_torch else _optional(
        "torch", "no torch.optim columns", summary.TORCH_CPU_INSTALL.removeprefix("python -m pip install "))
    if with_lbfgs or with_clip:
        _optional("threadpoolctl", "BLAS is not pinned to the run's thread count", "threadpoolctl")
    need_refs = not args.no_ceiling and bool(steps_opts or with_clip)
    if need_refs:
        log("building the C references (ceiling.c)")
    refs, refs_note = ceiling.build() if need_refs else (None, None)
    info = report.machine_info()
    caches = info.get("caches")
    with progress.paused():
        if full:
            _print_head(info, torch, refs, refs_note, args.numpy_block, fastopt)
        else:
            _print_summary_head(info, torch, refs, refs_note, fastopt)
        print(flush=True)

    rows, clip_rows, matrix_rows = [], [], []
    t_start = time.perf_counter()
    setup_s = t_start - run_start
    try:
        for size in sizes if steps_opts else ():
            for dtype in dtypes:
                data = make_data(size, dtype)          # one size in memory at a time
                for name in steps_opts:
                    for th in threads:
                        t0 = time.perf_counter()
                        stats, reps = bench_cell(name, size, dtype, th, data, torch, refs, timing,
                                                 torch_loop=args.torch_loop, numpy_block=args.numpy_block,
                                                 summary=not full)
                        n = n_elements(size)
                        ns = {c: s["median"] * 1e9 / n for c, s in stats.items()}
                        bytes_per_elem = ALGORITHMS[name].bytes_per_element(dtype.itemsize)
                        cell_s = time.perf_counter() - t0
                        rows.append(dict(optimizer=name, dtype=dtype.name, size=size_label(size),
                                         n_key=size, n=n, threads=th, reps=reps, ns_per_elem=ns,
                                         bytes_per_elem=bytes_per_elem, noise=noise(stats),
                                         data_in=report.where_data_lives(bytes_per_elem * n, caches),
                                         cell_seconds=cell_s, seconds_per_step=stats))
                        progress.step(f"{name:<8} {dtype.name:<7} {size_label(size):>10} "
                                      f"thr={th}: fastopt {ns['fastopt']:.3g} ns/elem, "
                                      f"{reps} rounds, {cell_s:.1f} s")
        for dtype in dtypes if clip_cells else ():
            data = make_data(MANY, dtype, seed=1)
            for th in threads:
                t0 = time.perf_counter()
                stats, reps = bench_clip(MANY, dtype, th, data, torch, refs, timing)
                us = {c: s["median"] * 1e6 for c, s in stats.items()}
                clip_rows.append(dict(dtype=dtype.name, size=MANY_LABEL, n=n_elements(MANY),
                                      threads=th, reps=reps, us_per_call=us, noise=noise(stats),
                                      cell_seconds=time.perf_counter() - t0, seconds_per_call=stats))
                progress.step(f"clip     {dtype.name:<7} {MANY_LABEL} thr={th}: fastopt {us['fastopt']:.1f} us, "
                              f"{reps} rounds, {time.perf_counter() - t0:.1f} s")
        for case, shapes, dtype, th in matrix_cells:
            t0 = time.perf_counter()
            stats, reps = bench_matrix_cell(case, shapes, dtype, th, torch, timing)
            row = matrix_row(case, shapes, dtype, th, stats, reps)
            row["cell_seconds"] = time.perf_counter() - t0
            matrix_rows.append(row)
            progress.step(f"{case.name:<8} {dtype.name:<7} {row['size']:>10} thr={th}: "
                          f"fastopt {row['ms_per_step']['fastopt']:.3g} ms, {reps} rounds, "
                          f"{row['cell_seconds']:.1f} s")
        elapsed = time.perf_counter() - t_start
        # the 8-bit table is Adam's, printed after the others; measured here, where the C
        # references (its memory-traffic bound) are loaded
        eight_bit = None
        if adam_tables and not args.no_eight_bit:
            eight_bit = measure_eight_bit(args, torch, refs, log, timing, threads)
            progress.step("8-bit states")
    finally:
        if refs is not None:
            refs.close()

    tables = {}
    with progress.paused():
        if full:
            _print_results(rows, clip_rows, steps_opts, dtypes, caches)
        elif rows:
            _print_summary(rows, caches, timing, args.repeats)
        _print_matrix(matrix_rows)
        if full:
            print(f"\n{len(rows) + len(clip_rows) + len(matrix_rows)} cells in {elapsed:.1f} s")
    if full:
        # the training-loop and precision tables are Adam's: they run when the run includes Adam
        if adam_tables and not args.no_training:
            tables = run_training(args, torch, progress, timing, threads)
        if adam_tables and not args.no_precision:
            tables["precision"] = run_precision(args, torch, progress, timing, threads)
        if eight_bit is not None:
            tables.update(eight_bit[0])
            with progress.paused():
                print_eight_bit(*eight_bit, caches=caches)
    deepspeed = run_deepspeed(args, torch, progress, timing, threads) if args.deepspeed else None
    if deepspeed is not None:
        tables["deepspeed"] = deepspeed["rows"]
    lbfgs = run_lbfgs(args, progress) if with_lbfgs else None
    lbfgsb = run_lbfgsb(args, progress) if with_lbfgs else None
    progress.close()

    checked = None
    if checks is not None:
        checked = targets_mod.check(checks, {"steps": rows, "clip": clip_rows, "matrix": matrix_rows,
                                             "lbfgs": lbfgs or [], "lbfgsb": lbfgsb or [], **tables})
        print(f"\nTargets from {args.check} (ratios of this run; a busy machine can miss one)")
        print(targets_mod.format_check(checked))

    if not args.no_plot and (rows or tables.get("eight_bit")):
        _write_plots(args, rows, tables, info)
    elapsed_run = time.perf_counter() - run_start
    if args.json:
        report.write_json(args.json, mode="full" if full else "summary",
                          command=_command_line(prog, argv), date_utc=started_utc.isoformat(timespec="seconds"),
                          machine=_machine(info, fastopt), versions=_versions(fastopt, torch),
                          build_info=fastopt.build_info(),
                          torch=torch.__version__ if torch is not None else None,
                          results=rows, clip=clip_rows, matrix=matrix_rows, lbfgs=lbfgs,
                          lbfgsb=lbfgsb, **tables,
                          deepspeed_version=deepspeed and deepspeed["deepspeed"],
                          elapsed_s=elapsed_run, cells_s=elapsed, setup_s=setup_s,
                          timing={k: v for k, v in timing.items() if v is not None},
                          targets=None if checked is None else [{"ok": ok, "text": t} for ok, t in checked])
        print(f"json: {args.json}")
    print(f"{prog}: {len(rows) + len(clip_rows) + len(matrix_rows)} cells, {elapsed_run:.1f} s in all"
          + ("" if full else "; --full for every table"))
    return 1 if checked and any(ok is False for ok, _ in checked) else 0


def _write_plots(args, rows, tables, info):
    """The summary figure at --plot's path; with --full also the log-log plot of every cell."""
    float32 = [r for r in rows if r["dtype"] == "float32"] or rows
    try:
        if float32:
            summary.write_plot(float32, args.plot, title=f"fastopt bench, {float32[0]['dtype']}: {info['cpu']}, "
                               f"{info['usable_cpus']} cores")
            print(f"plot: {args.plot}")
        if args.full:
            stem, ext = os.path.splitext(args.plot)
            detail = f"{stem}-detail{ext or '.png'}"
            report.write_plot(rows, detail, eight_bit=tables.get("eight_bit") or ())
            print(f"plot: {detail} (every cell, log-log)")
    except ImportError:
        print("plot: skipped, matplotlib is not installed (`python -m pip install matplotlib` adds it)")
