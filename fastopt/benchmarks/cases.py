"""The benchmark's cases: the data of a size, and the contenders of a cell.

A cell is one (algorithm, size, dtype, thread count). Every contender updates its own copy of the
same params with the same gradients and the same hyperparameters:

* ``fastopt`` -- ``fastopt.<Algorithm>(params).step(grads)``;
* ``numpy`` -- the in-place NumPy update of :mod:`.numpy_reference` (when there is one);
* ``torch-fused``, ``torch-foreach``, ``torch-loop`` -- ``torch.optim.<Algorithm>`` with
  ``fused=True``, ``foreach=True`` and ``foreach=False`` over ``torch.from_numpy`` views (when torch
  is installed and the variant exists);
* ``mem-bound`` -- the algorithm's memory traffic streamed by ``ceiling.c`` (the reads and writes
  its declaration gives, in :mod:`.settings`), and ``C-adam`` -- ``ceiling.c``'s fused Adam step
  (Adam float32 only). On one array both run on fastopt's own param, gradient and state buffers,
  so they see the same memory and cache state as fastopt (a big shared L3 otherwise favours
  whichever contender's buffers happen to be resident); on the 200 arrays, on flat buffers of the
  same total size.
"""
import argparse
import math

import numpy as np

from .numpy_reference import NUMPY_OPTIMIZERS, make_numpy_optimizer, numpy_clip_grad_norm_
from .settings import ALGORITHMS, CLIP_MAX_NORM, MANY, MANY_LABEL, MANY_SHAPES, matrix_label
from .timing import Contender, blas_limits, measure, noise, restored_calls


def parse_size(text):
    """A ``--sizes`` entry: an element count (``1e4``, ``1000000``) or ``200x`` (:data:`MANY`)."""
    t = text.strip().lower()
    if t in (MANY, "200", "200arrays", "many"):
        return MANY
    try:
        n = int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 1e4, 1000000 or {MANY})") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1, got {text!r}")
    return n


def size_label(size):
    """``1e7`` for powers of ten, the count otherwise, ``200 arrays`` for :data:`MANY`."""
    if size == MANY:
        return MANY_LABEL
    e = math.log10(size)
    return f"1e{int(round(e))}" if abs(e - round(e)) < 1e-9 else str(size)


def shapes_of(size):
    return list(MANY_SHAPES) if size == MANY else [(size,)]


def n_elements(size):
    return int(sum(np.prod(s) for s in shapes_of(size)))


def make_data(size, dtype, seed=0, shapes=None):
    """(initial params, grads) for a size (or for the given ``shapes``): lists of arrays."""
    rng = np.random.default_rng(seed)
    shapes = shapes_of(size) if shapes is None else shapes
    params = [rng.standard_normal(s, dtype=np.float64).astype(dtype) for s in shapes]
    grads = [(rng.standard_normal(s, dtype=np.float64) * 1e-2).astype(dtype) for s in shapes]
    return params, grads


def make_fastopt_optimizer(name, params):
    """``fastopt.<Algorithm>`` of algorithm ``name`` with the benchmark's hyperparameters."""
    import fastopt
    algorithm = ALGORITHMS[name]
    return getattr(fastopt, algorithm.cls)(params, **algorithm.hyper)


def state_arrays(optimizer, index=0):
    """The elementwise state buffers of param ``index`` of a fastopt optimizer, flat, in the order
    it keeps them (scalar states, such as ASGD's eta and mu, are left out)."""
    size = optimizer.params[index].size
    return [value.reshape(-1) for key, value in optimizer.state.get(index, {}).items()
            if isinstance(value, np.ndarray) and key != "step" and value.ndim and value.size == size]


def _torch_contenders(torch, name, params0, grads, loop=True, fastest_only=False):
    """torch.optim's implementations of algorithm ``name`` as contenders: ``fused=True``,
    ``foreach=True`` and (with ``loop``) ``foreach=False``, those torch has; with
    ``fastest_only``, the first of them torch has (its fastest CPU path)."""
    algorithm = ALGORITHMS[name]
    out = []
    variants = [("torch-fused", dict(fused=True)), ("torch-foreach", dict(foreach=True))]
    if loop:
        variants.append(("torch-loop", dict(foreach=False)))
    for label, kw in variants:
        if fastest_only and out:
            break
        tparams = [torch.from_numpy(p.copy()) for p in params0]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g)
        try:
            opt = getattr(torch.optim, algorithm.cls)(tparams, **algorithm.hyper, **kw)
            opt.step()
        except (TypeError, RuntimeError, ValueError, AttributeError):
            continue          # e.g. RMSprop has no fused implementation; torch has no Lion
        out.append(Contender(label, opt.step))
    return out


def _c_contenders(refs, name, size, dtype, fo, fo_params, grads, c_adam=True):
    """``mem-bound`` (and for Adam float32 ``C-adam``) on fastopt's buffers, or flat copies."""
    algorithm = ALGORITHMS[name]
    n = n_elements(size)
    if size != MANY:
        fo.step(grads)                      # the state exists after a first step
        written = [fo_params[0].reshape(-1)] + state_arrays(fo)
        read_only = [grads[0].reshape(-1)]
    else:
        written, read_only = [np.ones(n, dtype)], [np.concatenate(grads, axis=None)]
    # An algorithm that moves more arrays than fastopt keeps (or fewer) gets zeroed ones (or fewer).
    written = (written + [np.zeros(n, dtype) for _ in range(algorithm.writes)])[:algorithm.writes]
    extra = algorithm.reads - algorithm.writes
    read_only = (read_only + [np.zeros(n, dtype) for _ in range(extra)])[:extra]
    out = [Contender("mem-bound", timed=refs.stream(written, read_only))]
    if c_adam and algorithm.cls == "Adam" and dtype == np.float32:
        if size != MANY:
            m, v = (fo.state[0][key].reshape(-1) for key in ("exp_avg", "exp_avg_sq"))
        else:
            m, v = np.zeros(n, dtype), np.zeros(n, dtype)
        out.append(Contender("C-adam", timed=refs.adam_f32(written[0], read_only[0], m, v)))
    return out


def set_threads(threads, torch=None, refs=None):
    import fastopt
    fastopt.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    if refs is not None:
        refs.set_threads(threads)


def bench_cell(name, size, dtype, threads, data, torch, refs, timing, torch_loop=None, numpy_block=None,
               summary=False):
    """Time one cell; returns ({contender: stats in seconds per step}, rounds).

    With ``summary``, the summary's contenders only: fastopt, NumPy, torch's fastest CPU path
    (``fused=True``, else ``foreach=True``) and the memory-traffic bound (no ``C-adam``).
    """
    params0, grads = data
    contenders = []
    fo_params = [p.copy() for p in params0]
    fo = make_fastopt_optimizer(name, fo_params)
    contenders.append(Contender("fastopt", lambda: fo.step(grads)))
    if name in NUMPY_OPTIMIZERS:
        np_params = [p.copy() for p in params0]
        npo = make_numpy_optimizer(name, np_params, **({} if numpy_block is None else {"block": numpy_block}))
        contenders.append(Contender("numpy", lambda: npo.step(grads)))
    if torch is not None:
        # foreach=False differs from foreach=True only with several tensors (one tensor: the same
        # arithmetic, one kernel per op); by default it is timed on the 200-array case only.
        loop = (size == MANY) if torch_loop is None else torch_loop
        contenders.extend(_torch_contenders(torch, name, params0, grads, loop=loop and not summary,
                                            fastest_only=summary))
    if refs is not None:
        contenders.extend(_c_contenders(refs, name, size, dtype, fo, fo_params, grads, c_adam=not summary))
    set_threads(threads, torch, refs)
    with blas_limits(threads):
        return measure(contenders, **timing)


def bench_clip(size, dtype, threads, data, torch, refs, timing):
    """Time ``clip_grad_norm_`` over the arrays of ``size``: fastopt, NumPy, torch (foreach) and the
    memory-traffic bound of its two passes (the norm reads every gradient, the scaling reads and
    writes it)."""
    import fastopt
    _, grads0 = data
    contenders = []
    fg = [g.copy() for g in grads0]
    contenders.append(Contender("fastopt", timed=restored_calls(
        lambda: fastopt.clip_grad_norm_(fg, CLIP_MAX_NORM), fg, grads0)))
    ng = [g.copy() for g in grads0]
    contenders.append(Contender("numpy", timed=restored_calls(
        lambda: numpy_clip_grad_norm_(ng, CLIP_MAX_NORM), ng, grads0)))
    if torch is not None:
        tparams = [torch.from_numpy(np.zeros_like(g)) for g in grads0]
        tg = [g.copy() for g in grads0]
        for tp, g in zip(tparams, tg):
            tp.grad = torch.from_numpy(g)          # shares memory with tg
        clip = torch.nn.utils.clip_grad_norm_
        contenders.append(Contender("torch-foreach", timed=restored_calls(
            lambda: clip(tparams, CLIP_MAX_NORM, foreach=True), tg, grads0)))
    if refs is not None:
        flat = np.concatenate(grads0, axis=None)
        norm_pass, scale_pass = refs.stream([], [flat]), refs.stream([flat], [])
        contenders.append(Contender("mem-bound", timed=lambda k: norm_pass(k) + scale_pass(k)))
    set_threads(threads, torch, refs)
    with blas_limits(threads):
        return measure(contenders, **timing)


def bench_matrix_cell(case, shapes, dtype, threads, torch, timing):
    """Time one cell of the matrix table (``case`` on params of ``shapes``): fastopt against
    torch.optim with ``foreach=False`` and ``foreach=True`` (Muon has one implementation, timed as
    ``torch-loop``; LAMB and LARS have none in torch.optim: fastopt alone); returns ({contender:
    stats in seconds per step}, rounds)."""
    import fastopt
    params0, grads = make_data(None, dtype, shapes=shapes)
    fo_params = [p.copy() for p in params0]
    fo = getattr(fastopt, case.cls)(fo_params, **case.hyper)
    contenders = [Contender("fastopt", lambda: fo.step(grads))]
    if torch is not None and hasattr(torch.optim, case.cls):
        for label, kw in (("torch-loop", dict(foreach=False)), ("torch-foreach", dict(foreach=True))):
            tparams = [torch.from_numpy(p.copy()) for p in params0]
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(g)
            cls = getattr(torch.optim, case.cls)
            try:
                opt = cls(tparams, **case.hyper, **kw)
            except TypeError:          # no foreach argument (Muon): its one implementation
                if label != "torch-loop":
                    continue
                opt = cls(tparams, **case.hyper)
            contenders.append(Contender(label, opt.step))
    set_threads(threads, torch)
    with blas_limits(threads):
        for c in contenders:       # state allocated (and BLAS warmed up) outside the timing
            c.run(1)
        return measure(contenders, **timing)


def matrix_row(case, shapes, dtype, threads, stats, reps):
    """A row of the matrix table: ms per step per contender, and ``torch``, the faster of torch's."""
    ms = {c: s["median"] * 1e3 for c, s in stats.items()}
    torch_ms = [v for c, v in ms.items() if c.startswith("torch")]
    if torch_ms:
        ms["torch"] = min(torch_ms)
    return dict(optimizer=case.name, dtype=np.dtype(dtype).name, size=matrix_label(shapes),
                n=int(sum(np.prod(s) for s in shapes)), threads=threads, reps=reps, ms_per_step=ms,
                noise=noise(stats), seconds_per_step=stats)
