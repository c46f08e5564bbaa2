"""fastopt's thread pool with helpers that come late: the caller waits only for chunks a helper
has claimed, and returns only once every chunk it handed out has finished.

Each test runs in a fresh Python process (the pool and its helpers live once per process) under a
time limit, so a hang fails the test instead of stalling the run, and a helper still writing
after the step returned cannot corrupt this process.

* ``FASTOPT_POOL_TEST_START_DELAY_MS`` (a test hook read when the pool is first used) makes every
  new helper thread sleep before it starts, as a loaded machine may: the helper created for the
  wake-up calibration then starts after the calibration's job was published and never sees it.
  The first large step of a process, which calibrates, must still finish, with the one-thread bits.
* ``_set_helper_chunk_hold_us`` (a test hook) makes a helper sleep between claiming a chunk and
  running it: the caller runs out of chunks long before, and a step that returned without waiting
  for every chunk it handed out shows the held chunk's old values.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastopt
from fastopt._backend import kernels

pytestmark = pytest.mark.skipif(not kernels.has_threads(), reason="built without threads")

#: A pool that waits for a helper that never claims anything hangs; this is far above the few
#: seconds these children take on a loaded 2-core machine.
CHILD_LIMIT_S = 20

PRELUDE = """
import faulthandler, sys
import numpy as np
import fastopt
from fastopt._core import _fastopt_threads as threads
# a hung pool: print every thread's stack and exit with an error
faulthandler.dump_traceback_later({limit}, exit=True)


def adam_run(n_threads, n=1_000_000, steps=3, seed=0):
    fastopt.set_num_threads(n_threads)
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    opt = fastopt.Adam([p], lr=1e-3, weight_decay=0.01)
    for _ in range(steps):
        opt.step([rng.standard_normal(n).astype(np.float32)])
    return p.tobytes()
"""


def _run_child(body, start_delay_ms=None):
    # The child imports the fastopt this process imported: `python -c` puts its working directory
    # first on sys.path, so it runs in the folder that holds that package (at a repository root,
    # the unbuilt source folder would shadow an installed package).
    here = str(Path(fastopt.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=here)
    env.pop("FASTOPT_POOL_TEST_START_DELAY_MS", None)
    if start_delay_ms is not None:
        env["FASTOPT_POOL_TEST_START_DELAY_MS"] = str(start_delay_ms)
    code = PRELUDE.format(limit=CHILD_LIMIT_S) + textwrap.dedent(body)
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=here, capture_output=True,
                              text=True, timeout=CHILD_LIMIT_S + 30)
    except subprocess.TimeoutExpired as exc:   # pragma: no cover - the child's own limit comes first
        pytest.fail(f"the child process hung: {exc.stderr}")
    assert done.returncode == 0, f"exit code {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


FIRST_STEP_CALIBRATES = """
assert threads._pool_start_delay_ms() == 50, threads._pool_start_delay_ms()
reference = adam_run(1)                      # no helper is started, nothing is calibrated
assert threads.calibration()["wake_ns"] < 0
# the process's first large step on two threads starts the helper and calibrates the wake-up
# cost with it, while the helper has not started yet
got = adam_run(2)
assert threads.calibration()["wake_ns"] > 0
assert got == reference, "2 threads changed the result"
print("ok")
"""

RECALIBRATE_THEN_PARALLEL_STEPS = """
assert threads._pool_start_delay_ms() == 50, threads._pool_start_delay_ms()
reference = adam_run(1)
fastopt.set_num_threads(2)
threads.recalibrate()                        # starts the helper and calibrates before it runs
assert threads.calibration()["wake_ns"] > 0
threads.set_parallel_min_size(0)             # every job is offered to the helpers
assert adam_run(2) == reference, "2 threads changed the result"
assert adam_run(3) == reference, "3 threads changed the result"   # one more late helper
print("ok")
"""


@pytest.mark.parametrize("body", [FIRST_STEP_CALIBRATES, RECALIBRATE_THEN_PARALLEL_STEPS],
                         ids=["first_large_step_calibrates", "recalibrate_then_parallel_steps"])
def test_a_helper_that_starts_after_the_calibration_job_is_not_waited_for(body):
    """Every new helper starts 50 ms late: the calibration's probe job, published before the
    helper runs, must not be waited for (the caller runs it after a while) and the steps give
    the one-thread bits."""
    assert _run_child(body, start_delay_ms=50).strip().endswith("ok")


HELD_CHUNKS = """
HOLD_US = 200_000      # far longer than the whole job takes the caller
n = 2_000_000          # a few ms on one thread: time for a sleeping helper to wake and claim
rng = np.random.default_rng(3)
start = rng.standard_normal(n).astype(np.float32)
threads.set_parallel_min_size(0)
threads._set_helper_chunk_hold_us(HOLD_US)
checked = 0
{loop}
# a helper held a chunk in at least one job, and every such job waited for it
assert checked >= 1, "no helper claimed a chunk: nothing was checked"
print("checked", checked)
"""

ADAM_LOOP = """
p_one, p_two = start.copy(), start.copy()
one = fastopt.Adam([p_one], lr=1e-3, weight_decay=0.01)
two = fastopt.Adam([p_two], lr=1e-3, weight_decay=0.01)
for step in range(100):
    g = rng.standard_normal(n).astype(np.float32)
    fastopt.set_num_threads(1)
    one.step([g])
    fastopt.set_num_threads(2)
    held = threads._helper_chunks_held()
    two.step([g])
    # compared at once: a chunk still held by a helper still has the previous step's values
    assert p_two.tobytes() == p_one.tobytes(), f"step {step} returned before all chunks ran"
    checked += threads._helper_chunks_held() > held
    if checked >= 2:
        break
"""

CLIP_LOOP = """
for attempt in range(100):
    g = rng.standard_normal(n).astype(np.float32)
    fastopt.set_num_threads(1)
    g_one = g.copy()
    norm_one = fastopt.clip_grad_norm_([g_one], 1.0)
    fastopt.set_num_threads(2)
    held = threads._helper_chunks_held()
    g_two = g.copy()
    norm_two = fastopt.clip_grad_norm_([g_two], 1.0)
    # a partial norm (or a scaled chunk) still held by a helper is missing from the result
    assert norm_two == norm_one, (attempt, norm_two, norm_one)
    assert g_two.tobytes() == g_one.tobytes(), f"attempt {attempt} returned before all chunks ran"
    checked += threads._helper_chunks_held() > held
    if checked >= 2:
        break
"""


@pytest.mark.parametrize("loop", [ADAM_LOOP, CLIP_LOOP], ids=["adam_step", "clip_grad_norm"])
def test_the_caller_returns_only_after_every_chunk_a_helper_claimed_has_finished(loop):
    """A helper holds each chunk it claims for 200 ms before running it, so the caller finishes
    all the other chunks first: the step must still wait for the held chunk, whose results (an
    updated slice, a partial norm) are checked right when the step returns."""
    out = _run_child(HELD_CHUNKS.format(loop=loop))
    assert out.startswith("checked "), out
