"""Time two installs of fastopt against each other on the benchmark's cells, interleaved.

    python tools/compare_builds.py VENV_A/bin/python VENV_B/bin/python [--repeats 3] [--quick]

Each interpreter runs a worker process (this file with ``--worker``) that imports its own fastopt
and keeps every cell's data and optimizer alive. For each cell the driver asks the two workers for
one timed sample in turn (A B, B A, A B, ...: the order alternates so neither always runs right
after the other), for ``--rounds`` rounds; a sample is ``k`` steps timed inside the worker, about
``--sample-ms`` long (for L-BFGS, the fastest of a few runs: on a shared machine one run varies by
10x). The cell's ratio is the median over rounds of B's time / A's time, so a machine that gets
busier or quieter slows both alike. Each worker decides when a step goes parallel by the same
fixed size (``--parallel-min-size``) rather than by its own calibration of the pool's wake-up,
which differs from process to process on a busy machine (one worker ran 1e6 elements on two
threads, the other on one). ``--repeats`` runs the whole table again and reports, per cell, the
median of the repeats' ratios (and their range).

Cells: Adam, SGD (momentum), RMSprop and Adagrad (the benchmark's hyperparameters) at 1e4, 1e6 and
1e7 elements and on the 200-array model, float32 and float64, on 1 and 2 threads; and L-BFGS's time
per iteration outside the objective (chained Rosenbrock, m = 10, one BLAS thread) at n = 1e3 and
1e5. With ``--drivers``, also the algorithms with a compiled driver of the bench's matrix table
(Adafactor 512x512 and 4096x1024, Muon 4x256x256; float32, one thread). Prints each worker's
``fastopt.build_info()`` variant first.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

ALGORITHMS = ("adam", "sgd", "rmsprop", "adagrad")
SIZES = ("1e4", "1e6", "1e7", "200x")
LBFGS_SIZES = (1_000, 100_000)


# ------------------------------------------------------------------------------------------------
# Worker: runs in each interpreter, answers one JSON request per line.
# ------------------------------------------------------------------------------------------------

class _Worker:
    def __init__(self, parallel_min_size):
        import fastopt
        self.fastopt = fastopt
        fastopt._backend.kernels.set_parallel_min_size(parallel_min_size)
        self.cells = {}
        try:
            from threadpoolctl import threadpool_limits
            self._blas = threadpool_limits(limits=1, user_api="blas")   # kept for the process
        except ImportError:
            self._blas = None

    def info(self):
        info = self.fastopt.build_info()
        return {k: info[k] for k in ("build", "variant", "modules", "vector_isa")}

    def _step_cell(self, cell):
        from fastopt.benchmarks.cases import make_data, make_fastopt_optimizer, parse_size
        import numpy as np
        params, grads = make_data(parse_size(cell["size"]), np.dtype(cell["dtype"]))
        opt = make_fastopt_optimizer(cell["algorithm"], params)
        opt.step(grads)
        return lambda: opt.step(grads)

    def _matrix_cell(self, cell):
        from fastopt.benchmarks.cases import make_data
        import numpy as np
        shapes = [tuple(s) for s in cell["shapes"]]
        params, grads = make_data(None, np.dtype("float32"), shapes=shapes)
        opt = getattr(self.fastopt, cell["cls"])(params, **cell["hyper"])
        opt.step(grads)
        return lambda: opt.step(grads)

    def _lbfgs_run(self, cell):
        from fastopt.benchmarks.lbfgs_vs_scipy import chained_rosenbrock, chained_rosenbrock_start
        n = cell["n"]
        x0 = chained_rosenbrock_start(n)
        maxiter = 300 if n <= 10_000 else 100
        clock = time.perf_counter

        def run():
            inside = [0.0]

            def fun(x):
                t0 = clock()
                value = chained_rosenbrock(x)
                inside[0] += clock() - t0
                return value

            t0 = clock()
            result = self.fastopt.minimize_lbfgs(fun, x0, m=10, gtol=1e-5, ftol=2.2e-9,
                                                 maxiter=maxiter, maxfun=10 * maxiter)
            return (clock() - t0 - inside[0]) / max(result.nit, 1)
        return run

    def setup(self, cell):
        key = json.dumps(cell, sort_keys=True)
        if key not in self.cells:
            lbfgs = cell["kind"] == "lbfgs"
            make = {"lbfgs": self._lbfgs_run, "matrix": self._matrix_cell}.get(cell["kind"],
                                                                             self._step_cell)
            self.cells[key] = (lbfgs, make(cell))
        self.fastopt.set_num_threads(cell.get("threads", 1))
        return key

    def sample(self, key, k):
        """Seconds per step over k steps (per L-BFGS iteration outside the objective: the least
        disturbed of k runs)."""
        lbfgs, call = self.cells[key]
        if lbfgs:
            return min(call() for _ in range(k))
        t0 = time.perf_counter()
        for _ in range(k):
            call()
        return (time.perf_counter() - t0) / k


def worker_main(parallel_min_size):
    worker = _Worker(parallel_min_size)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "info":
            reply = worker.info()
        elif op == "setup":
            reply = worker.setup(request["cell"])
        elif op == "sample":
            reply = worker.sample(request["key"], request["k"])
        elif op == "drop":
            worker.cells.clear()
            reply = None
        else:
            raise ValueError(op)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

class _Client:
    def __init__(self, python, parallel_min_size):
        self.proc = subprocess.Popen([python, "-P", __file__, "--worker", str(parallel_min_size)],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/")

    def ask(self, op, **kwargs):
        self.proc.stdin.write(json.dumps(dict(op=op, **kwargs)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a worker died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


#: --drivers: (class, shapes, hyperparameters) of the bench's matrix cases, Muon at its quick size
DRIVER_CELLS = (("Adafactor", ((512, 512),), dict(lr=1e-2)),
                ("Adafactor", ((4096, 1024),), dict(lr=1e-2)),
                ("Muon", ((256, 256),) * 4, dict(lr=2e-2)))


def cells(quick=False, drivers=False):
    for algorithm in ALGORITHMS:
        for size in SIZES:
            for dtype in ("float32", "float64"):
                for threads in (1, 2):
                    if quick and (dtype == "float64" or threads == 2):
                        continue
                    yield dict(kind="step", algorithm=algorithm, size=size, dtype=dtype, threads=threads)
    for n in LBFGS_SIZES:
        yield dict(kind="lbfgs", n=n, threads=1)
    if drivers:
        for cls, shapes, hyper in DRIVER_CELLS:
            yield dict(kind="matrix", cls=cls, shapes=shapes, hyper=hyper, threads=1)


def label(cell):
    if cell["kind"] == "matrix":
        shapes = cell["shapes"]
        size = "x".join(map(str, shapes[0]))
        return f"{cell['cls']} {len(shapes)}x{size}" if len(shapes) > 1 else f"{cell['cls']} {size}"
    if cell["kind"] == "lbfgs":
        return f"L-BFGS overhead, n = {cell['n']:.0e}".replace("e+0", "e")
    size = "200 arrays" if cell["size"] == "200x" else cell["size"]
    return f"{cell['algorithm']} {size} {cell['dtype']} {cell['threads']}t"


def measure_cell(a, b, cell, rounds, sample_seconds):
    """Median over rounds of b's time / a's time, and each one's median time (seconds)."""
    keys = [c.ask("setup", cell=cell) for c in (a, b)]
    if cell["kind"] == "lbfgs":
        k = 5 if cell["n"] <= 10_000 else 3
    else:
        est = a.ask("sample", key=keys[0], k=1)
        k = max(1, int(sample_seconds / max(est, 1e-7)))
    for c, key in zip((a, b), keys):     # warm-up
        c.ask("sample", key=key, k=k)
    ta, tb, ratios = [], [], []
    for r in range(rounds):
        order = [(0, a), (1, b)] if r % 2 == 0 else [(1, b), (0, a)]
        got = {}
        for i, c in order:
            got[i] = c.ask("sample", key=keys[i], k=k)
        ta.append(got[0])
        tb.append(got[1])
        ratios.append(got[1] / got[0])
    for c in (a, b):
        c.ask("drop")
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("python_a")
    ap.add_argument("python_b")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="float32, one thread only")
    ap.add_argument("--only", default="", help="only the cells whose label contains this text")
    ap.add_argument("--threads", default="1,2", help="thread counts of the step cells (default 1,2)")
    ap.add_argument("--sample-ms", type=float, default=5.0,
                    help="the length of one timed sample of a step cell (default 5 ms)")
    ap.add_argument("--parallel-min-size", type=int, default=65536,
                    help="both workers' fastopt parallel_min_size (default 65536 units of work)")
    ap.add_argument("--drivers", action="store_true",
                    help="also Adafactor and Muon (compiled drivers), float32, one thread")
    args = ap.parse_args(argv)
    threads = args.threads.split(",")
    a, b = (_Client(python, args.parallel_min_size) for python in (args.python_a, args.python_b))
    try:
        print(f"A: {args.python_a}: {a.ask('info')}")
        print(f"B: {args.python_b}: {b.ask('info')}")
        table = {}
        for repeat in range(args.repeats):
            for cell in cells(args.quick, args.drivers):
                if args.only not in label(cell) or (cell["kind"] == "step" and
                                                   str(cell["threads"]) not in threads):
                    continue
                ratio, ta, tb = measure_cell(a, b, cell, args.rounds, args.sample_ms * 1e-3)
                table.setdefault(label(cell), []).append((ratio, ta, tb))
                print(f"  [{repeat + 1}/{args.repeats}] {label(cell):34s} B/A {ratio:.3f}",
                      file=sys.stderr, flush=True)
    finally:
        a.close()
        b.close()
    print(f"\n{'cell':34s} {'A':>10s} {'B':>10s} {'B/A':>7s}  (range over {args.repeats} repeats)")
    worst = 0.0
    for name, rows in table.items():
        ratio = statistics.median(r[0] for r in rows)
        worst = max(worst, ratio)
        unit, scale = ("us/iter", 1e6) if name.startswith("L-BFGS") else ("us/step", 1e6)
        print(f"{name:34s} {statistics.median(r[1] for r in rows) * scale:10.2f} "
              f"{statistics.median(r[2] for r in rows) * scale:10.2f} {ratio:7.3f}  "
              f"({min(r[0] for r in rows):.3f}-{max(r[0] for r in rows):.3f}) {unit}")
    print(f"worst median B/A: {worst:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_main(int(sys.argv[2]))
    else:
        main()
