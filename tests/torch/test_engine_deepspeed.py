"""DeepSpeed ZeRO with fastopt.torch.AdamW as the client optimizer, on the real engine.

One two-process launch (gloo on the loopback, DS_ACCELERATOR=cpu) of tests/_support/deepspeed_worker.py
trains a seeded tiny MLP through ``deepspeed.initialize(model=..., optimizer=<client optimizer>)``
over ZeRO stage 1, 2, 3 x (optimizer states in place, ``offload_optimizer: cpu``) x (fp32, bf16),
with fastopt.torch.AdamW, torch.optim.AdamW(foreach=False) and, under offload, DeepSpeedCPUAdam,
plus a one-tensor param group, ZeRO-3 sub-groups (two flat partitions stepped through one param
group in turn) and checkpoint resume; every test below reads that launch's results.

What DeepSpeed does to its client optimizer (deepspeed 0.19.8): ZeRO-1/2 replace each group's
``params`` with one flat fp32 partition and step one group at a time with ``param_groups``
reassigned to a one-group list; ZeRO-3 empties each group's ``params`` and puts a partition in for
its step only, the other groups staying empty. A correct client optimizer must follow all of it.
"""
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")
import fastopt  # noqa: E402

pytestmark = pytest.mark.torch

import deepspeed_worker as worker  # noqa: E402  (tests/_support: pytest's pythonpath)

SUPPORT = pathlib.Path(worker.__file__).parent

CASES = worker.all_cases()
KEYS = {key: (stage, offload, dtype, layout, opt, resume)
        for key, stage, offload, dtype, layout, opt, resume in CASES}

# fastopt's AdamW and torch.optim.AdamW(foreach=False) agree to a few float32 ulps per step. The
# DeepSpeed runs of torch.optim.AdamW and the same training without DeepSpeed (two half-batch
# gradients averaged against one full-batch gradient) measured 2e-7 apart in losses and 1.2e-7 in
# weights.
FP32 = dict(rtol=1e-5, atol=1e-6)
# bf16: the forward and the gradients are bf16 (the optimizer's fp32 master weights are not), and
# master weights a few ulps apart can round to a different bf16 weight, after which the trajectories
# differ by bf16's resolution. Measured: fastopt against torch.optim.AdamW, the same losses and
# master weights 1.2e-7 apart; DeepSpeedCPUAdam against torch.optim.AdamW (a few ulps apart per
# step, enough to flip roundings), losses 4.9e-4 (2.2e-3 relative) and weights 6.4e-5 apart.
BF16 = dict(rtol=2e-3, atol=5e-4)
# DeepSpeedCPUAdam decays with an FMA and orders its update differently, a few ulps from
# torch.optim.AdamW per step; measured 9.5e-7 (2.8e-6 relative) in losses, 4.5e-7 in weights.
DSCPUADAM = dict(rtol=5e-5, atol=5e-6)
# bf16 DeepSpeed runs against the fp32 training without DeepSpeed: losses measured 3.4e-3 relative
# apart, weights 3.5e-3 in relative norm (a few single weights further: bf16 rounding flips).
BF16_VS_FP32 = dict(rtol=1e-2, atol=5e-3)
BF16_VS_FP32_WEIGHTS = 1e-2


def _fastopt_path():
    here = pathlib.Path(fastopt.__file__).resolve().parent.parent
    return os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The launch's results: {case key: {"losses", "params", "error", "seconds"}, "plain-...": ...}."""
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    out_dir = tmp_path_factory.mktemp("deepspeed")
    out = out_dir / "results.pt"
    env = dict(os.environ, PYTHONPATH=_fastopt_path(), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(worker.WORLD), OMP_NUM_THREADS="1",
               DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"              # keep gloo on the loopback interface
    start = time.perf_counter()
    logs = [out_dir / f"rank{rank}.log" for rank in range(worker.WORLD)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as log_file:        # a file, not a pipe: a rank's output cannot block it
            procs.append(subprocess.Popen(
                [sys.executable, str(SUPPORT / "deepspeed_worker.py"), str(out)],
                env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)), cwd=out_dir,
                stdout=log_file, stderr=subprocess.STDOUT))
    try:
        for proc in procs:
            # DeepSpeedCPUAdam's op is JIT-built on its first use on a machine (~1 min, cached after)
            proc.wait(timeout=400)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failed = [rank for rank, proc in enumerate(procs) if proc.returncode != 0]
    assert not failed, "\n".join(f"rank {rank} exited with {procs[rank].returncode}:\n"
                                  + logs[rank].read_text(errors="replace")[-5000:] for rank in failed)
    data = torch.load(out, weights_only=False)
    data["wall"] = time.perf_counter() - start
    return data


def _run(results, key):
    run = results[key]
    assert run["error"] is None, f"{key} raised {run['error']}"
    return run


def _assert_same_training(ours, ref, tol, what):
    torch.testing.assert_close(torch.tensor(ours["losses"]), torch.tensor(ref["losses"]), **tol,
                               msg=lambda m: f"{what}: per-step losses differ\n{m}")
    assert ours["params"].keys() == ref["params"].keys()
    for name, p in ref["params"].items():
        torch.testing.assert_close(ours["params"][name], p, **tol,
                                   msg=lambda m, name=name: f"{what}: final {name} differs\n{m}")


def _assert_moved(results, run, layout, what):
    """Every weight left its initial value (a silent no-op step leaves them all where they were)."""
    initial = results[f"initial-{layout}"]
    frozen = [n for n, p in initial.items() if torch.equal(run["params"][n], p)]
    assert not frozen, f"{what}: {frozen} never moved from their initial values"


def _tolerance(dtype):
    return FP32 if dtype == "fp32" else BF16


def _key(stage, offload, dtype, layout, opt, resume=False):
    return worker.case_key(stage, offload, dtype, layout, opt, resume)


REFERENCE = [k for k, c in KEYS.items() if c[4] == "torch"]
FASTOPT = [k for k, c in KEYS.items() if c[4] == "fastopt"]
CPU_ADAM_RUNS = [k for k, c in KEYS.items() if c[4] == "dscpuadam"]
RESUMED = [k for k, c in KEYS.items() if c[5]]


@pytest.mark.parametrize("key", REFERENCE)
def test_reference_reproduces_plain_training(results, key):
    """The harness itself: torch.optim.AdamW under DeepSpeed trains as it does without it."""
    stage, offload, dtype, layout, _, _ = KEYS[key]
    run, plain = _run(results, key), results[f"plain-{layout}"]
    _assert_moved(results, run, layout, key)
    what = f"{key} vs the same training without DeepSpeed"
    if dtype == "fp32":
        _assert_same_training(run, plain, FP32, what)
        return
    torch.testing.assert_close(torch.tensor(run["losses"]), torch.tensor(plain["losses"]), **BF16_VS_FP32,
                               msg=lambda m: f"{what}: per-step losses differ\n{m}")
    ours, ref = (torch.cat([p.flatten() for p in r["params"].values()]) for r in (run, plain))
    assert (ours - ref).norm() <= BF16_VS_FP32_WEIGHTS * ref.norm(), what


@pytest.mark.parametrize("key", FASTOPT)
def test_fastopt_matches_torch(results, key):
    stage, offload, dtype, layout, _, resume = KEYS[key]
    ref = _run(results, _key(stage, offload, dtype, layout, "torch", resume))
    run = _run(results, key)
    _assert_moved(results, run, layout, key)
    _assert_same_training(run, ref, _tolerance(dtype), f"{key} vs torch.optim.AdamW")


@pytest.mark.parametrize("key", CPU_ADAM_RUNS)
def test_deepspeed_cpu_adam_matches_torch(results, key):
    """The harness: DeepSpeedCPUAdam and torch.optim.AdamW train alike under offload."""
    stage, offload, dtype, layout, _, _ = KEYS[key]
    tol = DSCPUADAM if dtype == "fp32" else BF16
    _assert_same_training(_run(results, key), _run(results, _key(stage, offload, dtype, layout, "torch")),
                          tol, f"{key} vs torch.optim.AdamW")


@pytest.mark.parametrize("key", CPU_ADAM_RUNS)
def test_fastopt_matches_deepspeed_cpu_adam(results, key):
    """Under offload, the switch from DeepSpeedCPUAdam to fastopt keeps the training."""
    stage, offload, dtype, layout, _, _ = KEYS[key]
    tol = DSCPUADAM if dtype == "fp32" else BF16
    _assert_same_training(_run(results, _key(stage, offload, dtype, layout, "fastopt")), _run(results, key),
                          tol, f"fastopt vs {key}")


@pytest.mark.parametrize("key", RESUMED)
def test_checkpoint_resume_equals_uninterrupted_run(results, key):
    """save_checkpoint after some steps, load_checkpoint into a fresh engine and optimizer, go on:
    the same losses and weights as the run that never stopped."""
    stage, offload, dtype, layout, opt, _ = KEYS[key]
    uninterrupted = _run(results, _key(stage, offload, dtype, layout, opt))
    _assert_same_training(_run(results, key), uninterrupted, dict(rtol=0, atol=0),
                          f"{key} vs the uninterrupted run")


def test_one_launch_runs_every_case(results):
    assert set(KEYS) <= set(results)
    print(f"deepspeed launch: {results['wall']:.1f} s wall, {results['seconds']:.1f} s in the cases")


def test_the_documented_switch_from_deepspeedcpuadam_trains_to_the_same_losses():
    """examples/deepspeed_zero2_offload.py, as a user would run it: its ZeRO-Offload config with
    DeepSpeedCPUAdam, and the same config changed as docs/coming-from/deepspeed-cpu-adam.md says
    (no "optimizer" section, ``zero_force_ds_cpu_optimizer: false``, fastopt.torch.AdamW as the
    client optimizer), trained
    in lockstep on the same batches: the printed losses agree."""
    example = pathlib.Path(__file__).parents[2] / "examples" / "deepspeed_zero2_offload.py"
    import fastopt
    root = str(pathlib.Path(fastopt.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)     # the example sets up its one rank itself
    done = subprocess.run([sys.executable, str(example), "--width", "128", "--steps", "16"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = {}
    for line in done.stdout.splitlines():
        if "losses every 5 steps" in line:
            name = line.split(":")[0].strip()
            losses[name] = [float(v) for v in line.split("losses every 5 steps")[1].split()]
    assert set(losses) == {"DeepSpeedCPUAdam", "fastopt.torch.AdamW"}, done.stdout
    assert len(losses["fastopt.torch.AdamW"]) == 4
    assert losses["fastopt.torch.AdamW"][-1] < losses["fastopt.torch.AdamW"][0]    # it trains
    # (printed with 4 decimals; DeepSpeedCPUAdam's FMA keeps it a few ulps away per step)
    torch.testing.assert_close(losses["fastopt.torch.AdamW"], losses["DeepSpeedCPUAdam"],
                               rtol=0, atol=2e-4)
