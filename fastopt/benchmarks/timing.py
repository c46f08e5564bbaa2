"""Round-robin timing: every contender of a cell takes its turn in each round (A, B, C, A, B, C, ...),
so a machine that gets busier or quieter during a cell slows all of them alike and only the ratios
within one run are compared."""
import contextlib
import gc
import time

import numpy as np


class Contender:
    """``run(k)`` performs k steps and returns the seconds they took."""

    def __init__(self, name, step=None, timed=None):
        self.name = name
        self._step = step
        self._timed = timed

    def run(self, k):
        if self._timed is not None:
            return self._timed(k)
        step = self._step
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        return time.perf_counter() - t0


def measure(contenders, budget, min_reps, max_reps, repeats=None, min_sample=1e-3):
    """Seconds per step of each contender, timed round-robin.

    Each sample times ``k`` consecutive steps (``k`` chosen so a sample lasts >= ``min_sample``);
    the number of rounds fits ``budget`` seconds, clamped to [min_reps, max_reps] (or ``repeats``);
    a cell that runs far over budget (a busy machine) stops after 3 rounds.
    Returns ({name: stats}, rounds), stats = dict(median, min, q25, q75) in seconds per step.
    """
    per_step = {}
    for c in contenders:          # warm-up: state allocation, page faults, first-call costs
        per_step[c.name] = c.run(1)
    for c in contenders:          # a second, warm estimate (not needed for slow steps: k = 1 anyway)
        if per_step[c.name] < 4 * min_sample:
            per_step[c.name] = c.run(1)
        per_step[c.name] = max(per_step[c.name], 1e-7)
    ks = {c.name: max(1, int(min_sample / per_step[c.name])) for c in contenders}
    round_cost = sum(ks[n] * per_step[n] for n in ks)
    reps = repeats or int(min(max_reps, max(min_reps, budget / max(round_cost, 1e-9))))
    samples = {c.name: [] for c in contenders}
    gc_was = gc.isenabled()
    gc.disable()
    t_end = time.perf_counter() + 5 * budget
    done = 0
    try:
        for _ in range(reps):
            for c in contenders:
                k = ks[c.name]
                samples[c.name].append(c.run(k) / k)
            done += 1
            # A busy machine (or OpenMP threads waiting on a preempted core) can make steps far
            # slower than the warm-up said: keep the run bounded, with at least 3 rounds.
            if repeats is None and done >= 3 and time.perf_counter() > t_end:
                break
    finally:
        if gc_was:
            gc.enable()
    stats = {}
    for name, xs in samples.items():
        q25, med, q75 = (float(q) for q in np.percentile(xs, [25, 50, 75]))
        stats[name] = dict(median=med, min=float(min(xs)), q25=q25, q75=q75)
    return stats, done


def noise(stats):
    """The cell's noise: the largest interquartile range relative to its median, over contenders."""
    return max((s["q75"] - s["q25"]) / s["median"] for s in stats.values() if s["median"] > 0)


def restored_calls(fn, grads, fresh):
    """A timed ``run(k)``: k calls of ``fn()``, each on gradients freshly copied from ``fresh``.

    Clipping the same arrays over and over would converge to a norm just under ``max_norm`` where the
    scaling pass is skipped (fastopt and NumPy skip it when the coefficient is >= 1, torch never
    does), so the steady state would time the norm alone. Each call gets the original gradients
    back (norm ~12 > max_norm: every call scales); the copy is not timed.
    """
    def timed(k):
        total = 0.0
        for _ in range(k):
            for d, s in zip(grads, fresh):
                np.copyto(d, s)
            t0 = time.perf_counter()
            fn()
            total += time.perf_counter() - t0
        return total
    return timed


def blas_limits(threads):
    """A context limiting BLAS to ``threads`` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")
