"""8-bit optimizer states: AdamW with bitsandbytes' blockwise 8-bit moments, against float32 AdamW,
torch's fused step, bitsandbytes itself and the memory-traffic bound of an 8-bit step.

Contenders, all AdamW with the same hyperparameters (:data:`ADAMW`), timed round-robin on one array
(or the 200 arrays) of the cell's size:

* ``fastopt-8bit`` -- ``fastopt.AdamW8bit`` on float32 params: 16 bytes per element and step (the
  param read and written 8, the gradient 4, the two 1-byte moment codes read and written 4; each
  256-element block's float32 absmax adds 0.06);
* ``fastopt-f32`` -- ``fastopt.AdamW``, float32 states (28 bytes);
* ``fastopt-bf16-8bit`` -- ``fastopt.AdamW8bit`` on bfloat16 params and gradients without a master
  copy (10 bytes);
* ``torch-fused`` -- ``torch.optim.AdamW(fused=True)``, float32 (when torch is installed);
* ``bnb-8bit``, ``bnb-32bit`` -- ``bitsandbytes.optim.AdamW8bit`` and ``AdamW(optim_bits=32)`` on
  CPU tensors (when bitsandbytes is installed). Their CPU steps are 10-100 times slower than the
  others, so they are timed in a round-robin of their own with fewer rounds (interleaved with the
  fast contenders, they would leave those a handful of rounds at 1e7);
* ``mem-bound`` -- the 16 bytes of the 8-bit step streamed by ``ceiling.c`` (when it builds): one
  pass reading the gradient and reading and writing the param (on ``fastopt-8bit``'s own buffers,
  as the step table does), one pass reading and writing as many bytes as the two code arrays. On the
  200 arrays, flat buffers of the same size; there the arrays below ``min_8bit_size`` (4096
  elements: 3% of the elements) keep float32 states and move 28 bytes.

:func:`state_bytes` measures the memory of each optimizer's state: in a fresh process per
contender (so that allocations do not mix), the growth of the resident set from before the param
and gradient are created to after the optimizer's first step on one param of
:data:`MEMORY_ELEMENTS` elements, minus the param's and gradient's bytes, per element.

bfloat16 arrays are ``fastopt._dtypes.BF16Array`` views here, so the benchmark needs no ml_dtypes.
"""
import gc
import json
import os
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np

from .. import _dtypes
from .cases import make_data, n_elements, set_threads, size_label
from .report import EIGHT_BIT_RATIOS, ratio
from .settings import MANY
from .timing import Contender, blas_limits, measure, noise

#: AdamW's hyperparameters, the same for every contender.
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
#: Lion's (measured for its state memory only: a one-state algorithm).
LION = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-2)
#: Bytes an 8-bit AdamW step moves per element with float32 params (absmax left out).
BOUND_BYTES = 16
#: The table's sizes, and with --quick.
SIZES = (1_000_000, 10_000_000, MANY)
QUICK_SIZES = (1_000_000, MANY)
#: bitsandbytes' rounds at least (its step takes 10-100 ns per element: 0.1-1 s at 1e7).
BNB_MIN_REPS = 3
#: With --quick, bitsandbytes is left out from this many elements (seconds a round).
QUICK_BNB_LIMIT = 10_000_000
#: The one param of the state-memory measure: large enough that the 0.04 byte per element of
#: slack in its targets is 400 KB, a hundred pages.
MEMORY_ELEMENTS = 10_000_000
#: Elements of the warm-up step each memory process takes before its baseline (above
#: ``min_8bit_size``, so the 8-bit path's code and one-time allocations are in the baseline).
WARMUP_ELEMENTS = 1 << 16
#: Two 1-byte moments and their float32 absmax per 256-element block; one for Lion.
BLOCK = 256
EIGHT_BIT_STATE = 2 * (1 + 4 / BLOCK)


class Optimizer(NamedTuple):
    """A contender: its library (``fastopt``, ``torch``, ``bitsandbytes``), class, options and the
    dtype of its params and gradients."""

    library: str
    cls: str
    options: dict
    dtype: str = "float32"


#: The timed contenders, in the table's order.
TIMED = {
    "fastopt-8bit": Optimizer("fastopt", "AdamW8bit", ADAMW),
    "fastopt-f32": Optimizer("fastopt", "AdamW", ADAMW),
    "fastopt-bf16-8bit": Optimizer("fastopt", "AdamW8bit", ADAMW, "bfloat16"),
    "torch-fused": Optimizer("torch", "AdamW", dict(ADAMW, fused=True)),
    "bnb-8bit": Optimizer("bitsandbytes", "AdamW8bit", ADAMW),
    "bnb-32bit": Optimizer("bitsandbytes", "AdamW", dict(ADAMW, optim_bits=32)),
}
#: The contenders of the state-memory measure: the timed ones and a one-state 8-bit algorithm.
MEMORY = {**TIMED, "fastopt-lion8bit": Optimizer("fastopt", "Lion8bit", LION)}
#: State bytes per param each should hold.
EXPECTED_STATE_BYTES = {"fastopt-8bit": EIGHT_BIT_STATE, "fastopt-f32": 8.0,
                        "fastopt-bf16-8bit": EIGHT_BIT_STATE, "torch-fused": 8.0,
                        "bnb-8bit": EIGHT_BIT_STATE, "bnb-32bit": 8.0,
                        "fastopt-lion8bit": EIGHT_BIT_STATE / 2}


def import_bitsandbytes():
    """``(bitsandbytes, None)``, or ``(None, reason)`` when it cannot be imported."""
    # Without it, bitsandbytes' import looks its CPU kernels up on the Hugging Face Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import bitsandbytes
    except ImportError:
        return None, "not installed"
    except (OSError, RuntimeError) as exc:     # a broken install: a missing native library
        return None, f"its import failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return bitsandbytes, None


def _bf16(values):
    """float32 values as bfloat16, rounded toward zero (the top half of each float32: no 8-byte
    temporaries, a second at 1e7 elements less than rounding to nearest; the speed is the same)."""
    return (values.view(np.uint32) >> 16).astype(np.uint16).view(_dtypes.BF16Array)


def arrays_for(optimizer, params0, grads0):
    """Fresh copies of the params (and the gradients) in ``optimizer``'s dtype."""
    if optimizer.dtype == "bfloat16":
        return [_bf16(p) for p in params0], [_bf16(g) for g in grads0]
    return [p.copy() for p in params0], grads0


def make_step(optimizer, params, grads, torch=None, bnb=None):
    """The optimizer over ``params`` (NumPy arrays, updated in place) with ``grads``: a callable
    that takes one step."""
    if optimizer.library == "fastopt":
        import fastopt
        opt = getattr(fastopt, optimizer.cls)(params, **optimizer.options)
        return lambda: opt.step(grads)
    tparams = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]    # sharing the arrays
    for tp, g in zip(tparams, grads):
        tp.grad = torch.from_numpy(g)
    module = torch.optim if optimizer.library == "torch" else bnb.optim
    return getattr(module, optimizer.cls)(tparams, **optimizer.options).step


def _bound(refs, size, params, grads):
    """The ``mem-bound`` contender: 16 bytes per element streamed in two passes (see the module's
    docstring)."""
    n = n_elements(size)
    if size != MANY:
        param, grad = params[0].reshape(-1), grads[0].reshape(-1)
    else:
        param, grad = np.ones(n, np.float32), np.concatenate(grads, axis=None)
    codes = np.ones((n + 1) // 2, np.float32)      # 2 x n one-byte codes, as float32
    main, moments = refs.stream([param], [grad]), refs.stream([codes], [])
    return Contender("mem-bound", timed=lambda k: main(k) + moments(k))


def cell(size, threads, data, torch, bnb, refs, timing, with_bnb=True):
    """({contender: stats}, rounds, bitsandbytes' rounds or None) for one size and thread count;
    ``data``: the size's float32 (params, gradients), copied for each contender."""
    params0, grads0 = data
    fast, slow = [], []
    for name, optimizer in TIMED.items():
        if optimizer.library == "torch" and torch is None:
            continue
        if optimizer.library == "bitsandbytes" and (bnb is None or not with_bnb):
            continue
        params, grads = arrays_for(optimizer, params0, grads0)
        contender = Contender(name, make_step(optimizer, params, grads, torch, bnb))
        (slow if optimizer.library == "bitsandbytes" else fast).append(contender)
        if name == "fastopt-8bit" and refs is not None:
            fast.append(_bound(refs, size, params, grads))
    set_threads(threads, torch, refs)
    with blas_limits(threads):
        stats, reps = measure(fast, **timing)
        bnb_reps = None
        if slow:
            bnb_timing = dict(timing, min_reps=min(timing["min_reps"], BNB_MIN_REPS))
            slow_stats, bnb_reps = measure(slow, **bnb_timing)
            stats.update(slow_stats)
    return stats, reps, bnb_reps


def row(size, threads, stats, reps, bnb_reps):
    """A row of the table: ns per element per contender, the ratios of :data:`EIGHT_BIT_RATIOS`
    and the bandwidth of the bound."""
    n = n_elements(size)
    ns = {c: s["median"] * 1e9 / n for c, s in stats.items()}
    bound = ns.get("mem-bound")
    return dict(size=size_label(size), n=n, threads=threads, reps=reps, bnb_reps=bnb_reps,
                ns_per_elem=ns,
                ratios={title: ratio(ns.get(a), ns.get(b)) for title, a, b in EIGHT_BIT_RATIOS},
                bound_bytes_per_elem=BOUND_BYTES,
                bound_gb_per_s=BOUND_BYTES / bound if bound else None, noise=noise(stats))


def run(args, torch, bnb, refs, log, timing, threads):
    """Rows of the 8-bit table (ns per element per step), one per size and thread count."""
    import fastopt
    rows = []
    before = fastopt.get_num_threads()
    try:
        for size in QUICK_SIZES if args.quick else SIZES:
            with_bnb = not (args.quick and n_elements(size) >= QUICK_BNB_LIMIT)
            data = make_data(size, np.float32)          # one size in memory at a time
            for th in threads:
                t0 = time.perf_counter()
                stats, reps, bnb_reps = cell(size, th, data, torch, bnb, refs, timing, with_bnb)
                r = row(size, th, stats, reps, bnb_reps)
                rows.append(r)
                ns = r["ns_per_elem"]
                log(f"8-bit {r['size']:>10} thr={th}: fastopt-8bit {ns['fastopt-8bit']:.3g}, "
                    f"fastopt-f32 {ns['fastopt-f32']:.3g}"
                    + (f", bnb-8bit {ns['bnb-8bit']:.3g}" if "bnb-8bit" in ns else "")
                    + f" ns/elem, {time.perf_counter() - t0:.1f} s")
    finally:
        fastopt.set_num_threads(before)
    return rows


# --------------------------------------------------------------------------------------------------
# State memory: the growth of the resident set in a fresh process per contender
# --------------------------------------------------------------------------------------------------

def resident_bytes():
    """(bytes, source): the resident set of this process (``/proc/self/statm``), or where there is
    no /proc its peak (``getrusage``: the growth of the peak is the growth when nothing is freed)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), "statm"
    except (OSError, ValueError, IndexError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024), "peak RSS"


def _release_free_memory():
    """Collect garbage and hand the allocator's free pages back to the system (glibc's
    ``malloc_trim``), so that a reading counts the memory in use: temporaries freed inside the heap
    stay resident otherwise, and a later allocation reuses them without growing the resident set."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):      # not glibc: no trimming
        pass


def _cheap_data(n):
    """One float32 param and gradient of ``n`` elements (of the benchmark's scale), made with no
    float64 temporaries: the memory measure's data, where only the bytes matter."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n, dtype=np.float32)], [rng.standard_normal(n, dtype=np.float32) * 1e-2]


def measure_state_bytes(name, n):
    """In this process: the resident-set growth of contender ``name``'s optimizer over one param of
    ``n`` elements, from before the param and its gradient are created to after the first step,
    minus their bytes. A dict with the readings and ``bytes_per_param``."""
    optimizer = MEMORY[name]
    torch = bnb = None
    if optimizer.library != "fastopt":
        import torch
        if optimizer.library == "bitsandbytes":
            bnb, why = import_bitsandbytes()
            if bnb is None:
                raise ImportError(f"bitsandbytes: {why}")
        torch.set_num_threads(1)
    import fastopt
    fastopt.set_num_threads(1)
    # A first step on a small param: code paths, thread pools and one-time buffers are loaded
    # before the baseline, so the growth is the state of the big param alone.
    small = make_data(WARMUP_ELEMENTS, np.float32, seed=1)
    make_step(optimizer, *arrays_for(optimizer, *small), torch=torch, bnb=bnb)()
    del small
    _release_free_memory()
    before, source = resident_bytes()
    params, grads = arrays_for(optimizer, *_cheap_data(n))
    step = make_step(optimizer, params, grads, torch=torch, bnb=bnb)
    step()
    _release_free_memory()       # the data's and the step's temporaries, freed, are not state
    after, _ = resident_bytes()
    data_bytes = sum(p.nbytes for p in params) + sum(g.nbytes for g in grads)
    return dict(name=name, n=n, rss_before=before, rss_after=after, param_grad_bytes=data_bytes,
                source=source, bytes_per_param=(after - before - data_bytes) / n)


def _state_bytes_process(name, n, env, timeout):
    """:func:`measure_state_bytes` in a fresh process: its readings, or dict(error=one line)."""
    cmd = [sys.executable, "-m", "fastopt.benchmarks.eight_bit", name, str(n)]
    # run from the folder that holds the fastopt this process imported: ``-m`` puts the working
    # directory first on the path, and at a source checkout's root that is the unbuilt source tree
    import fastopt
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastopt.__file__)))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=here)
    except subprocess.TimeoutExpired:
        return dict(error=f"no result within {timeout} s")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        err = done.stderr.strip().splitlines()
        return dict(error=err[-1] if err else f"exit status {done.returncode}")
    return json.loads(lines[-1])


def state_bytes(names, n=None, log=None, timeout=600, workers=2):
    """The state bytes per param of each contender of ``names``, each measured in a fresh process
    (:func:`measure_state_bytes`) on one param of ``n`` elements (default
    :data:`MEMORY_ELEMENTS`): {name: readings dict, or dict(error=one line)}.

    ``workers`` processes run at a time: each reads its own resident set, so they do not disturb
    each other's readings, and most of their time is importing torch and bitsandbytes.
    """
    from concurrent.futures import ThreadPoolExecutor

    import fastopt
    n = MEMORY_ELEMENTS if n is None else n
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastopt.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if log is not None:
        log(f"8-bit state memory: {', '.join(names)}, one param of {n:,} elements, a fresh process each")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {name: pool.submit(_state_bytes_process, name, n, env, timeout) for name in names}
        out = {name: future.result() for name, future in futures.items()}
    if log is not None:
        log(f"8-bit state memory: {time.perf_counter() - t0:.1f} s")
    return out


def memory_row(readings, n=None):
    """The state-memory table's row (one param of ``n`` elements, default
    :data:`MEMORY_ELEMENTS`): bytes per param by contender (None where it failed), the expected
    bytes and the readings."""
    n = MEMORY_ELEMENTS if n is None else n
    return dict(size=size_label(n), n=n, threads=1,
                bytes_per_param={k: r.get("bytes_per_param") for k, r in readings.items()},
                expected_bytes_per_param={k: EXPECTED_STATE_BYTES.get(k) for k in readings},
                readings=readings)


def memory_names(torch, bnb, quick):
    """The contenders of the memory measure: those whose library is here (with --quick, fastopt's
    alone: importing torch and bitsandbytes takes seconds a process)."""
    keep = {"fastopt"} if quick else {"fastopt", "torch" if torch is not None else None,
                                       "bitsandbytes" if bnb is not None else None}
    return [name for name, o in MEMORY.items() if o.library in keep]


if __name__ == "__main__":
    # python -m fastopt.benchmarks.eight_bit NAME N: one measure of state_bytes, as JSON
    print(json.dumps(measure_state_bytes(sys.argv[1], int(sys.argv[2]))))
