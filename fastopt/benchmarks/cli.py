"""``fastopt bench``: the command line of the benchmark.

Everything is reported as ns per element per step (medians over round-robin rounds) and as ratios
measured in the same run. Results go to stdout, progress to stderr.
"""
import argparse
import sys
import time

import numpy as np

from . import ceiling, report, settings, targets as targets_mod
from .cases import (bench_cell, bench_clip, bench_matrix_cell, make_data, matrix_row, n_elements,
                    parse_size, size_label)
from .settings import ALGORITHMS, MANY, MANY_LABEL, MANY_SHAPES, MATRIX_CASES
from .timing import noise


def build_parser(prog="fastopt bench"):
    ap = argparse.ArgumentParser(
        prog=prog,
        description="fastopt's fused steps vs this machine's memory-traffic bound, torch.optim and "
                    "in-place NumPy: ns per element per step, medians of round-robin repetitions, "
                    "ratios from one run.")
    ap.add_argument("--optimizers", default=",".join(list(ALGORITHMS) + list(MATRIX_CASES)),
                    help=f"comma-separated, from {','.join(list(ALGORITHMS) + list(MATRIX_CASES))} "
                         f"(default: all; {', '.join(MATRIX_CASES)} are timed on matrices, in the "
                         "matrix table; 'none' for the L-BFGS comparison alone)")
    ap.add_argument("--sizes", default=None,
                    help=f"comma-separated element counts of one array, and/or {MANY} for the 200-array "
                         f"model (default {settings.DEFAULT_SIZES}; with --quick {settings.QUICK_SIZES})")
    ap.add_argument("--dtypes", default=settings.DEFAULT_DTYPES, help="float32 and/or float64 (default both)")
    ap.add_argument("--threads", default=None, help="comma-separated (default: 1 and all usable cores)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds per cell (default: fit ~0.2 s per cell, clamped to 5..41)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3-11 short rounds per cell, no 1e7 unless --sizes asks")
    ap.add_argument("--no-clip", action="store_true", help="skip the clip_grad_norm_ benchmark")
    ap.add_argument("--no-torch", action="store_true", help="leave torch out even when installed")
    ap.add_argument("--torch-loop", action="store_true", default=None,
                    help="time torch foreach=False at every size (default: on the 200 arrays only)")
    ap.add_argument("--numpy-block", type=int, default=None, metavar="ELEMENTS",
                    help="NumPy's cache block in elements (default: 256 KiB per stream; 0: no blocking, "
                         "whole-array ufuncs as usually written)")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="do not compile the C references (no mem-bound and C-adam columns)")
    ap.add_argument("--check", metavar="TARGETS.json", default=None,
                    help="check the measured ratios against the targets declared in this file (the "
                         "repository's are in bench/targets.json); exit status 1 if one is missed")
    ap.add_argument("--plot", nargs="?", const="fastopt-bench.png", default="fastopt-bench.png",
                    metavar="OUT.png", help="write a log-log plot (default fastopt-bench.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", metavar="OUT.json", default=None, help="write all results as JSON")
    ap.add_argument("--no-training", action="store_true",
                    help="skip the training-loop tables (torch adapter, clipping inside the step, "
                         "1 vs 2 threads; run with adam)")
    ap.add_argument("--no-precision", action="store_true",
                    help="skip the mixed-precision table (bfloat16/float16 Adam; run with adam)")
    ap.add_argument("--no-eight-bit", action="store_true",
                    help="skip the 8-bit table (AdamW with 8-bit states vs float32, torch and "
                         "bitsandbytes at 1e6, 1e7 and the 200 arrays whatever --sizes, with "
                         "--quick 1e6 and the 200 arrays; and the state bytes per param, a fresh "
                         "process per optimizer; run with adam)")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="start N processes that spin on a core each while the threads table runs, "
                         "to measure steps on a busy machine (default 0)")
    ap.add_argument("--between-work", type=float, default=None, metavar="MS",
                    help="the threads table times steps back to back and, as in a training loop, "
                         "each after MS milliseconds of other single-threaded CPU work (NumPy passes "
                         "over a 4 MiB buffer, as a forward and backward pass would do; default 1; "
                         "0: back to back only)")
    ap.add_argument("--deepspeed", action="store_true",
                    help="add the DeepSpeed table: ZeRO-2 with the optimizer offloaded to the CPU, "
                         "fastopt.torch.AdamW vs DeepSpeedCPUAdam as the engine's optimizer (needs "
                         "deepspeed and torch; not in the default run: importing DeepSpeed takes "
                         "seconds and its CPUAdam op compiles on first use, a minute or two)")
    ap.add_argument("--deepspeed-cases", default=None, metavar="CASES",
                    help="with --deepspeed: comma-separated, from 1e6, 1e7, 200 (200 tensors) "
                         "(default: all; with --quick 1e6,200)")
    ap.add_argument("--no-lbfgs", dest="lbfgs", action="store_false",
                    help="skip the L-BFGS vs SciPy L-BFGS-B comparison (run by default, ~5 s)")
    ap.add_argument("--lbfgs", dest="lbfgs", action="store_true", help=argparse.SUPPRESS)
    return ap


def _parse(args):
    """The run's optimizers, sizes, dtypes and thread counts; ValueError on a bad value."""
    opts = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    bad = [o for o in opts if o not in ALGORITHMS and o not in MATRIX_CASES and o != "none"]
    if bad:
        raise ValueError(f"unknown optimizer(s) {bad}; choose from {list(ALGORITHMS) + list(MATRIX_CASES)}")
    opts = [o for o in opts if o != "none"]
    size_text = args.sizes or (settings.QUICK_SIZES if args.quick else settings.DEFAULT_SIZES)
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


def run_lbfgs(args, log):
    """L-BFGS vs SciPy's L-BFGS-B: time per iteration outside the objective (chained Rosenbrock)."""
    from . import lbfgs_vs_scipy

    sizes = settings.LBFGS_QUICK_SIZES if args.quick else lbfgs_vs_scipy.DEFAULT_SIZES
    repeats = args.repeats or (settings.LBFGS_QUICK_REPEATS if args.quick else settings.LBFGS_REPEATS)
    log(f"L-BFGS vs SciPy L-BFGS-B at n = {', '.join(str(int(n)) for n in sizes)} ({repeats} runs each)")
    rows = lbfgs_vs_scipy.compare_with_scipy(sizes=sizes, repeats=repeats)
    print("\nL-BFGS vs SciPy L-BFGS-B: microseconds per iteration spent outside the objective "
          "(chained Rosenbrock, m=10, one BLAS thread, best of the runs; ratio = fastopt / SciPy;\n"
          "history floor = one-threaded OpenBLAS doing the two passes over the 2m x n history "
          "that any L-BFGS iteration needs)")
    print(lbfgs_vs_scipy.format_rows(rows))
    return rows


def run_training(args, torch, log, timing, threads):
    """The torch adapter, clipping inside the step, and 1 vs 2 threads (see .training)."""
    from . import training

    log("training-loop tables: the torch adapter, clipping inside the step, 1 vs 2 threads"
        + (f" ({args.busy} busy processes)" if args.busy else ""))
    tables = training.run(args, torch, log, timing, threads)
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
    return tables


def run_precision(args, torch, log, timing, threads):
    """Mixed-precision Adam (see .precision)."""
    from . import precision

    log("mixed precision: bfloat16/float16 Adam")
    rows = precision.run(args, torch, log, timing, threads)
    print("\nMixed precision, Adam, ns per element per step: f32 (28 B/elem); bf16 params with a float32 "
          "master copy and states (28 B); the same with bf16 moments (20 B);\nbf16/f16 params with "
          "states in their dtype (14 B), and torch's fused step on the same bf16/f16 params")
    print(report.format_precision(rows))
    return rows


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


def print_eight_bit(tables, notes):
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
    for r in rows:
        if r["bound_gb_per_s"] and r["size"] == "1e7":
            print(f"memory bandwidth of the bound, {r['threads']} thr: {r['bound_gb_per_s']:.1f} GB/s "
                  f"(1e7, {BOUND_BYTES} B per element)")
    memory = tables["eight_bit_memory"][0]
    print(f"\nState bytes per param: the resident set's growth over one {memory['n']:,}-element "
          "param's optimizer and first step, in a fresh process each, minus the param and gradient")
    print(report.format_eight_bit_memory(memory))


def run_lbfgsb(args, log):
    """L-BFGS-B with bounds vs SciPy's: the marginal time of an iteration outside the objective."""
    from . import lbfgsb_vs_scipy

    sizes = settings.LBFGS_QUICK_SIZES if args.quick else lbfgsb_vs_scipy.DEFAULT_SIZES
    repeats = args.repeats or (settings.LBFGSB_QUICK_REPEATS if args.quick else settings.LBFGS_REPEATS)
    log(f"L-BFGS-B (bounds) vs SciPy L-BFGS-B at n = {', '.join(str(int(n)) for n in sizes)}")
    rows = lbfgsb_vs_scipy.compare_bounded_with_scipy(sizes=sizes, repeats=repeats)
    print("\nL-BFGS-B with bounds vs SciPy L-BFGS-B: microseconds per iteration outside the objective "
          "(chained Rosenbrock in a box that cuts its minimizer off,\na third of the coordinates at "
          "a bound; marginal cost: full run minus a one-iteration run, over the extra iterations)")
    print(lbfgsb_vs_scipy.format_bounded_rows(rows))
    try:
        owlqn = lbfgsb_vs_scipy.compare_owlqn_with_saga(repeats=1 if args.quick else 3)
    except ImportError:
        print("scikit-learn: not installed, so no OWL-QN comparison (`python -m pip install "
              "scikit-learn` adds it)")
    else:
        print(f"OWL-QN (L1 logistic regression, breast cancer): {owlqn['owlqn_s'] * 1e3:.1f} ms vs "
              f"scikit-learn SAGA {owlqn['saga_s'] * 1e3:.1f} ms; objective relative gap "
              f"{owlqn['rel_gap']:.1e}; zero coefficients {owlqn['owlqn_zeros']} / {owlqn['saga_zeros']}")
    return rows


def run_deepspeed(args, torch, log, timing, threads=(1,)):
    """DeepSpeed ZeRO-2 offload: the client optimizer's step, fastopt vs DeepSpeedCPUAdam (see
    .deepspeed_offload); None, after one line saying why, when DeepSpeed or torch is missing."""
    from . import deepspeed_offload

    if torch is None:
        print("\ndeepspeed: skipped, the DeepSpeed table needs torch")
        return None
    if not deepspeed_offload.available():
        print("\ndeepspeed: not installed, so no DeepSpeed table (`python -m pip install deepspeed` "
              "adds it)")
        return None
    if args.deepspeed_cases:
        cases = deepspeed_offload.select_cases(args.deepspeed_cases)
    else:
        cases = deepspeed_offload.QUICK if args.quick else None
    log("DeepSpeed ZeRO-2 offload: the engine's optimizer step, fastopt vs DeepSpeedCPUAdam (importing "
        "DeepSpeed; its CPUAdam op compiles on first use)")
    ds_timing = dict(settings.DEEPSPEED_QUICK_TIMING if args.quick else deepspeed_offload.TIMING,
                     repeats=timing["repeats"])
    result = deepspeed_offload.measure_offload_step(cases, ds_timing, log=log, threads=threads)
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
        print("torch   : not installed, so its columns are left out (its CPU build: python -m pip "
              "install torch --index-url https://download.pytorch.org/whl/cpu)")
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


def _print_results(rows, clip_rows, opts, dtypes):
    if rows:
        print("Optimizer steps, ns per element per step (lower is better)")
        print("mem-bound: the time to stream the algorithm's memory traffic (below) in C, on the same "
              "buffers; C-adam: a plain fused Adam step in C\nfo/bound: fastopt / mem-bound (1 = at the "
              "machine's memory limit); fused/fo, numpy/fo > 1: fastopt is faster")
        print(report.format_traffic(opts, dtypes))
        print(report.format_table(rows))
        for th, (gbs, r) in sorted(report.bandwidth(rows).items()):
            print(f"memory bandwidth of the bound, {th} thr: {gbs:.1f} GB/s ({r['optimizer']} "
                  f"{r['dtype']} {r['size']}, {r['bytes_per_elem']} B per element)")
    if clip_rows:
        print(f"\nclip_grad_norm_(max_norm={settings.CLIP_MAX_NORM}) over the 200 arrays (norm ~12: every "
              "call scales), us per call; mem-bound: one read pass plus one read-and-write pass")
        print(report.format_clip(clip_rows))
    if rows or clip_rows:
        print(f"noise: the largest interquartile range / median among a cell's contenders ('!' above "
              f"{100 * settings.NOISY:.0f}%: the machine was busy; rerun or raise --repeats)")


def main(argv=None, prog="fastopt bench"):
    args = build_parser(prog).parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        opts, sizes, dtypes, threads, checks = _parse(args)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    timing = dict(settings.QUICK_TIMING if args.quick else settings.TIMING, repeats=args.repeats)

    import fastopt

    torch = None if args.no_torch else _optional("torch", "no torch.optim columns", "torch")
    if args.lbfgs or not args.no_clip:
        _optional("threadpoolctl", "BLAS is not pinned to the run's thread count", "threadpoolctl")
    steps_opts = [o for o in opts if o in ALGORITHMS]
    refs, refs_note = ((None, None) if args.no_ceiling or not (steps_opts or not args.no_clip)
                       else ceiling.build())
    info = report.machine_info()
    _print_head(info, torch, refs, refs_note, args.numpy_block, fastopt)
    print(flush=True)

    cells = [(s, d, o, t) for s in sizes for d in dtypes for o in steps_opts for t in threads]
    clip_cells = [] if args.no_clip else [(d, t) for d in dtypes for t in threads]
    matrix_cells = [(case, case.quick_shapes if args.quick else case.shapes, d, t)
                    for o in opts if o in MATRIX_CASES for case in MATRIX_CASES[o]
                    for d in dtypes if d.name in settings.MATRIX_DTYPES for t in threads]
    total = len(cells) + len(clip_cells) + len(matrix_cells)
    rows, clip_rows, matrix_rows = [], [], []
    t_start = time.perf_counter()
    done = 0
    try:
        for size in sizes if steps_opts else ():
            for dtype in dtypes:
                data = make_data(size, dtype)          # one size in memory at a time
                for name in steps_opts:
                    for th in threads:
                        done += 1
                        t0 = time.perf_counter()
                        stats, reps = bench_cell(name, size, dtype, th, data, torch, refs, timing,
                                                 torch_loop=args.torch_loop, numpy_block=args.numpy_block)
                        n = n_elements(size)
                        ns = {c: s["median"] * 1e9 / n for c, s in stats.items()}
                        rows.append(dict(optimizer=name, dtype=dtype.name, size=size_label(size),
                                         n_key=size, n=n, threads=th, reps=reps, ns_per_elem=ns,
                                         bytes_per_elem=ALGORITHMS[name].bytes_per_element(dtype.itemsize),
                                         noise=noise(stats), seconds_per_step=stats))
                        log(f"[{done:3d}/{total}] {name:<8} {dtype.name:<7} {size_label(size):>10} "
                            f"thr={th}: fastopt {ns['fastopt']:.3g} ns/elem, "
                            f"{reps} rounds, {time.perf_counter() - t0:.1f} s")
        for dtype in dtypes if clip_cells else ():
            data = make_data(MANY, dtype, seed=1)
            for th in threads:
                done += 1
                t0 = time.perf_counter()
                stats, reps = bench_clip(MANY, dtype, th, data, torch, refs, timing)
                us = {c: s["median"] * 1e6 for c, s in stats.items()}
                clip_rows.append(dict(dtype=dtype.name, size=MANY_LABEL, n=n_elements(MANY),
                                      threads=th, reps=reps, us_per_call=us, noise=noise(stats),
                                      seconds_per_call=stats))
                log(f"[{done:3d}/{total}] clip     {dtype.name:<7} {MANY_LABEL} thr={th}: "
                    f"fastopt {us['fastopt']:.1f} us, {reps} rounds, {time.perf_counter() - t0:.1f} s")
        for case, shapes, dtype, th in matrix_cells:
            done += 1
            t0 = time.perf_counter()
            stats, reps = bench_matrix_cell(case, shapes, dtype, th, torch, timing)
            row = matrix_row(case, shapes, dtype, th, stats, reps)
            matrix_rows.append(row)
            log(f"[{done:3d}/{total}] {case.name:<8} {dtype.name:<7} {row['size']:>10} thr={th}: "
                f"fastopt {row['ms_per_step']['fastopt']:.3g} ms, {reps} rounds, "
                f"{time.perf_counter() - t0:.1f} s")
        elapsed = time.perf_counter() - t_start
        # the 8-bit table is Adam's, printed after the others; measured here, where the C
        # references (its memory-traffic bound) are loaded
        eight_bit = (measure_eight_bit(args, torch, refs, log, timing, threads)
                     if not args.no_eight_bit and "adam" in opts else None)
    finally:
        if refs is not None:
            refs.close()

    _print_results(rows, clip_rows, steps_opts, dtypes)
    _print_matrix(matrix_rows)
    print(f"\n{len(rows) + len(clip_rows) + len(matrix_rows)} cells in {elapsed:.1f} s")
    # the training-loop and precision tables are Adam's: they run when the run includes Adam
    tables = run_training(args, torch, log, timing, threads) if not args.no_training and "adam" in opts else {}
    if not args.no_precision and "adam" in opts:
        tables["precision"] = run_precision(args, torch, log, timing, threads)
    if eight_bit is not None:
        tables.update(eight_bit[0])
        print_eight_bit(*eight_bit)
    deepspeed = run_deepspeed(args, torch, log, timing, threads) if args.deepspeed else None
    if deepspeed is not None:
        tables["deepspeed"] = deepspeed["rows"]
    lbfgs = run_lbfgs(args, log) if args.lbfgs else None
    lbfgsb = run_lbfgsb(args, log) if args.lbfgs else None

    checked = None
    if checks is not None:
        checked = targets_mod.check(checks, {"steps": rows, "clip": clip_rows, "matrix": matrix_rows,
                                             "lbfgs": lbfgs or [], "lbfgsb": lbfgsb or [], **tables})
        print(f"\nTargets from {args.check} (ratios of this run; a busy machine can miss one)")
        print(targets_mod.format_check(checked))

    if not args.no_plot and (rows or tables.get("eight_bit")):
        try:
            report.write_plot(rows, args.plot, eight_bit=tables.get("eight_bit") or ())
            print(f"plot: {args.plot}")
        except ImportError:
            print("plot: skipped, matplotlib is not installed (`python -m pip install matplotlib` adds it)")
    if args.json:
        report.write_json(args.json, machine=info, build_info=fastopt.build_info(),
                          torch=torch.__version__ if torch is not None else None,
                          results=rows, clip=clip_rows, matrix=matrix_rows, lbfgs=lbfgs,
                          lbfgsb=lbfgsb, **tables,
                          deepspeed_version=deepspeed and deepspeed["deepspeed"],
                          elapsed_s=elapsed,
                          targets=None if checked is None else [{"ok": ok, "text": t} for ok, t in checked])
        print(f"json: {args.json}")
    return 1 if checked and any(ok is False for ok, _ in checked) else 0
