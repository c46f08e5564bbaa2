"""What a training loop pays around the kernel: the torch adapter, clipping, a busy machine.

Four tables, each timed round-robin like the step table (:func:`.timing.measure`):

* ``adapter`` -- ``fastopt.torch.Adam.step()`` against ``fastopt.Adam.step(grads)`` on the same
  tensors (the adapter reads every ``.grad`` each step), and torch's fused step, from one tensor of
  1e4 elements to 10,000 tensors of 100: µs per step, and the adapter's extra cost per tensor.
  The flat mode (``flat=True``: the tensors are views of one buffer) against ``fastopt.Adam``'s
  step over one flat array of the same size (``numpy-flat``); its gradient buffer's version is
  bumped before each step, as a backward pass writing into it does, so each step makes the checks
  of a training loop (``torch.autograd.graph.increment_version``: no pass over memory).
* ``iteration`` -- a whole training iteration (``zero_grad()``, backward, ``step()``) of a model of
  10,000 params of 100 elements, with torch's fused Adam, fastopt.torch.Adam and its flat mode.
* ``clipstep`` -- Adam with clipping: ``step(grads, max_norm=...)`` (one read pass for the norm,
  the coefficient applied as the update reads the gradients) against the step alone and against
  ``torch.nn.utils.clip_grad_norm_`` followed by ``torch.optim.Adam(fused=True).step()``.
* ``threads`` -- the same Adam step on 1 and 2 threads, median and 90th percentile of single steps
  (a stalled step shows in the tail), on a quiet machine or with ``--busy N`` spinning processes,
  in two regimes: steps back to back (the pool's helpers are still awake from the step before),
  and steps separated by ``--between-work MS`` of other CPU work, as a forward and backward pass
  would separate them (the helpers have gone to sleep, and the caches hold other data).
"""
import contextlib
import multiprocessing
import time

import numpy as np

from .timing import Contender, blas_limits, measure, noise

#: The adapter's cases: (label, shapes).
ADAPTER_CASES = (
    ("1 x 1e4", ((10_000,),)),
    ("MLP 64-64-10", ((64, 64), (64,), (64, 64), (64,), (10, 64), (10,))),
    ("200 tensors", ((512, 512),) * 4 + ((512,),) * 96 + ((4096,),) * 100),
    ("2000 x 500", ((500,),) * 2_000),
    ("10000 x 100", ((100,),) * 10_000),
)
ADAPTER_QUICK = ("1 x 1e4", "MLP 64-64-10", "200 tensors", "2000 x 500")
ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
CLIP_MAX_NORM = 1.0


def _arrays(shapes, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]


def adapter_cell(torch, shapes, timing):
    """({contender: stats}, rounds) for one adapter case."""
    import fastopt
    import fastopt.torch as ft
    params0, grads = _arrays(shapes, 0), _arrays(shapes, 1, 1e-2)
    numpy_opt = fastopt.Adam([p.copy() for p in params0], **ADAM)
    contenders = [Contender("numpy-api", lambda: numpy_opt.step(grads))]

    def tensors():
        """The params as a fresh set of torch params, each with its gradient."""
        out = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
        for p, g in zip(out, grads):
            p.grad = torch.from_numpy(g.copy())
        return out
    adapter = ft.Adam(tensors(), **ADAM)
    contenders.append(Contender("adapter", adapter.step))
    fused = torch.optim.Adam(tensors(), fused=True, **ADAM)
    contenders.append(Contender("torch-fused", fused.step))
    flat_np = fastopt.Adam([np.concatenate([p.reshape(-1) for p in params0])], **ADAM)
    flat_grad = [np.concatenate([g.reshape(-1) for g in grads])]
    contenders.append(Contender("numpy-flat", lambda: flat_np.step(flat_grad)))
    laid_out = ft.flatten_(tensors())          # (the gradients copied into its buffer)
    flat = ft.Adam(laid_out.params, flat=True, **ADAM)
    bump = torch.autograd.graph.increment_version

    def flat_step():
        bump(laid_out.grad)       # what backward's writes into the buffer do to its version
        flat.step()
    contenders.append(Contender("flat", flat_step))
    return measure(contenders, **timing)


ITERATION_TENSORS = 10_000


def iteration_cell(torch, timing):
    """({contender: stats}, rounds): a training iteration of a model of 10,000 params of 100
    elements (each a row of one matrix product), with torch's fused Adam and fastopt.torch.Adam
    without and with the flat mode."""
    import fastopt.torch as ft
    x = torch.from_numpy(_arrays([(100, 8)], 6)[0])

    def model():
        values = _arrays([(100,)] * ITERATION_TENSORS, 7, 0.1)
        return [torch.nn.Parameter(torch.from_numpy(v)) for v in values]

    def iteration(params, opt):
        def run():
            opt.zero_grad()
            (torch.stack(params) @ x).square().mean().backward()
            opt.step()
        return run
    contenders = []
    for name, make in (("torch-fused", lambda p: torch.optim.Adam(p, fused=True, **ADAM)),
                       ("adapter", lambda p: ft.Adam(p, **ADAM)),
                       ("flat", lambda p: ft.Adam(p, flat=True, **ADAM))):
        params = model()
        contenders.append(Contender(name, iteration(params, make(params))))
    return measure(contenders, **dict(timing, min_reps=3, max_reps=10))


def clipstep_cell(torch, n, timing):
    """({contender: stats}, rounds): Adam at ``n`` float32 elements, with and without clipping."""
    import fastopt
    params0, grads = _arrays([(n,)], 2), _arrays([(n,)], 3, 1e-2)   # norm ~ 1e-2 sqrt(n) > max_norm
    alone = fastopt.Adam([p.copy() for p in params0], **ADAM)
    clipped = fastopt.Adam([p.copy() for p in params0], **ADAM)
    contenders = [Contender("step", lambda: alone.step(grads)),
                  Contender("clip+step", lambda: clipped.step(grads, max_norm=CLIP_MAX_NORM))]
    if torch is not None:
        tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params0]
        for p, g in zip(tparams, grads):
            p.grad = torch.from_numpy(g.copy())
        topt = torch.optim.Adam(tparams, fused=True, **ADAM)
        clip = torch.nn.utils.clip_grad_norm_

        def torch_step():
            clip(tparams, CLIP_MAX_NORM, foreach=True)
            topt.step()
        contenders.append(Contender("torch-clip+fused", torch_step))
    return measure(contenders, **timing)


#: The threads table's cases: (label, shapes), one Adam step (NumPy API) over float32 arrays.
THREAD_CASES = (
    ("1e4", ((10_000,),)),
    ("1e5", ((100_000,),)),
    ("1e6", ((1_000_000,),)),
    ("200 tensors", ((512, 512),) * 4 + ((512,),) * 96 + ((4096,),) * 100),
)
#: Milliseconds of other work between the threads table's steps when ``--between-work`` is not given.
BETWEEN_MS = 1.0
#: The other work: passes of one ufunc over this many float32 elements (4 MiB, more than a core's
#: L2 cache, so the step's arrays leave it as they would in a forward and backward pass).
BETWEEN_BUFFER = 1 << 20


class OtherWork:
    """Spends ``ms`` milliseconds of wall time on other single-threaded CPU work: in-place NumPy
    ufunc passes over a buffer larger than L2, chunk by chunk until the time is up (nothing when
    ``ms`` is 0). NumPy's ufuncs run on the calling thread only, as the non-BLAS parts of a
    forward and backward pass do."""

    def __init__(self, ms):
        self.seconds = ms / 1e3
        self._buffer = np.ones(BETWEEN_BUFFER if ms > 0 else 0, dtype=np.float32)
        self._parts = np.array_split(self._buffer, 16) if ms > 0 else []

    def __call__(self):
        if self.seconds <= 0:
            return
        end = time.perf_counter() + self.seconds
        while True:
            for part in self._parts:      # ~5-20 us each: the time is met within a part
                np.multiply(part, 1.0, out=part)
                if time.perf_counter() >= end:
                    return


def thread_cell(shapes, steps, between_ms=0.0):
    """Single Adam steps (NumPy API, float32 arrays of ``shapes``) on 1 and 2 threads, alternated,
    each after ``between_ms`` ms of other work (:class:`OtherWork`; 0: back to back): µs per step
    ``{"1thr": [...], "2thr": [...]}``."""
    import fastopt
    params, grads = _arrays(shapes, 4), _arrays(shapes, 5, 1e-2)
    opt = fastopt.Adam(params, **ADAM)
    other_work = OtherWork(between_ms)
    times = {1: [], 2: []}
    before = fastopt.get_num_threads()
    try:
        for _ in range(3):
            for th in (1, 2):
                fastopt.set_num_threads(th)
                other_work()
                opt.step(grads)                       # warm: state, helpers started
        for _ in range(steps):
            for th in (1, 2):
                fastopt.set_num_threads(th)
                other_work()
                t0 = time.perf_counter()
                opt.step(grads)
                times[th].append((time.perf_counter() - t0) * 1e6)
    finally:
        fastopt.set_num_threads(before)
    return {f"{th}thr": xs for th, xs in times.items()}


def thread_rows(cases, steps, busy, between, log):
    """The threads table's rows: each case of ``cases`` ((label, shapes)) back to back and with
    ``between`` ms of other work between steps; ``steps`` single steps per thread count (a quarter
    of them from 1e6 elements on)."""
    rows = []
    for label, shapes in cases:
        n = int(sum(np.prod(s) for s in shapes))
        for between_ms in dict.fromkeys((0.0, float(between))):
            times = thread_cell(shapes, steps if n < 1_000_000 else max(steps // 4, 5), between_ms)
            values = {}
            for key, xs in times.items():
                values[f"{key}-median"] = float(np.median(xs))
                values[f"{key}-p90"] = float(np.percentile(xs, 90))
            rows.append(dict(size=label, n=n, tensors=len(shapes), threads=2, busy=busy,
                             between_ms=between_ms, us_per_step=values, noise=None))
            log(f"threads {label:>11} busy={busy} between={between_ms:g} ms: 1 thr "
                f"{values['1thr-median']:.1f} us, 2 thr {values['2thr-median']:.1f} us "
                f"(p90 {values['2thr-p90']:.1f})")
    return rows


def _spin(stop):
    while not stop.is_set():
        pass


@contextlib.contextmanager
def busy_machine(n):
    """``n`` processes spinning on a core each for the duration (nothing with n = 0)."""
    if n <= 0:
        yield
        return
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.2)            # let them take their cores
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def run(args, torch, log, timing, threads):
    """The four tables' rows: {"adapter": [...], "iteration": [...], "clipstep": [...],
    "threads": [...]}."""
    out = {"adapter": [], "clipstep": [], "threads": [], "iteration": []}
    import fastopt
    before = fastopt.get_num_threads()
    try:
        if torch is not None:
            cases = [c for c in ADAPTER_CASES if not args.quick or c[0] in ADAPTER_QUICK]
            for label, shapes in cases:
                for th in threads:
                    fastopt.set_num_threads(th)
                    torch.set_num_threads(th)
                    with blas_limits(th):
                        stats, reps = adapter_cell(torch, shapes, timing)
                    us = {c: s["median"] * 1e6 for c, s in stats.items()}
                    # what each tensor costs the adapter beyond the NumPy API, in ns
                    us["extra ns/tensor"] = 1e3 * (us["adapter"] - us["numpy-api"]) / len(shapes)
                    row = dict(size=label, n=int(sum(np.prod(s) for s in shapes)), tensors=len(shapes),
                               threads=th, reps=reps, us_per_step=us, noise=noise(stats))
                    out["adapter"].append(row)
                    log(f"adapter {label:>14} thr={th}: numpy-api {us['numpy-api']:.1f} us, "
                        f"adapter {us['adapter']:.1f} us, flat {us['flat']:.1f} us "
                        f"(numpy-flat {us['numpy-flat']:.1f})")
            if not args.quick:
                for th in threads:
                    fastopt.set_num_threads(th)
                    torch.set_num_threads(th)
                    with blas_limits(th):
                        stats, reps = iteration_cell(torch, timing)
                    ms = {c: s["median"] * 1e3 for c, s in stats.items()}
                    out["iteration"].append(dict(size=f"{ITERATION_TENSORS} x 100", n=ITERATION_TENSORS * 100,
                                                 tensors=ITERATION_TENSORS, threads=th, reps=reps,
                                                 ms_per_iteration=ms, noise=noise(stats)))
                    log(f"iteration {ITERATION_TENSORS} x 100 thr={th}: torch-fused {ms['torch-fused']:.1f} ms, "
                        f"flat {ms['flat']:.1f} ms")
        n = 1_000_000 if args.quick else 10_000_000
        for th in threads:
            fastopt.set_num_threads(th)
            if torch is not None:
                torch.set_num_threads(th)
            stats, reps = clipstep_cell(torch, n, timing)
            ns = {c: s["median"] * 1e9 / n for c, s in stats.items()}
            out["clipstep"].append(dict(size=f"1e{int(np.log10(n))}", n=n, threads=th, reps=reps,
                                        ns_per_elem=ns, noise=noise(stats)))
            log(f"clip+step 1e{int(np.log10(n))} thr={th}: step {ns['step']:.3g} ns/elem, "
                f"clip+step {ns['clip+step']:.3g}")
        steps = 60 if args.quick else 400
        between = getattr(args, "between_work", None)
        between = BETWEEN_MS if between is None else between
        with busy_machine(args.busy):
            out["threads"] = thread_rows(THREAD_CASES, steps, args.busy, between, log)
    finally:
        fastopt.set_num_threads(before)
    return out

