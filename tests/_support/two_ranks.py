"""Launching a two-rank gloo job for the engine tests (tests/torch/test_engine_*.py).

:func:`launch` starts ``python WORKER RANK ARGS...`` once per rank with the environment
``torch.distributed``'s ``env://`` rendezvous reads (MASTER_ADDR, MASTER_PORT on a free port,
RANK, WORLD_SIZE), waits for both and fails with both ranks' output if either fails. The workers
write their results to files the tests read, so that one launch serves every test of a file.

:func:`results` does it all for a test module's fixture: the launch, and each rank's results
file loaded. ``FASTOPT_ENGINE_CANDIDATE=torch`` runs torch.optim in fastopt's place (see
engine_candidate.py).
"""
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import pytest

from engine_candidate import CANDIDATE

WORLD_SIZE = 2


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fastopt_path():
    import fastopt
    here = pathlib.Path(fastopt.__file__).resolve().parent.parent
    return os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])


def require_gloo():
    """Skip (a failure under CI, through conftest) when torch.distributed lacks gloo."""
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")


def launch(worker, args, timeout=120):
    """Run ``worker`` as ranks 0 and 1 with ``args`` after the rank; fail with their output if
    either rank exits non-zero or does not finish within ``timeout`` seconds."""
    if CANDIDATE not in ("fastopt", "torch"):
        raise ValueError(f"FASTOPT_ENGINE_CANDIDATE must be 'fastopt' or 'torch', got {CANDIDATE!r}")
    env = dict(os.environ, PYTHONPATH=_fastopt_path(), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(WORLD_SIZE), OMP_NUM_THREADS="1",
               FASTOPT_ENGINE_CANDIDATE=CANDIDATE)
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"              # keep gloo on the loopback interface
    # each rank's output goes to a file: a rank that fills a pipe nobody reads yet (its warnings)
    # would block, and the other rank would wait for it in a collective until the timeout
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(WORLD_SIZE)]
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), *map(str, args)],
                              env=dict(env, RANK=str(rank)), stdout=log, stderr=subprocess.STDOUT,
                              text=True)
             for rank, log in enumerate(logs)]
    outputs = []
    try:
        for proc, log in zip(procs, logs):
            try:
                proc.wait(timeout=timeout)
                killed = ""
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = f"(killed after {timeout} s)\n"
            log.seek(0)
            outputs.append(killed + log.read())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    failed = [f"rank {rank} exited with {proc.returncode}:\n{out}"
              for rank, (proc, out) in enumerate(zip(procs, outputs)) if proc.returncode != 0]
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)
    return outputs


def results(worker, out_dir, timeout=120):
    """Launch ``worker`` (it writes ``out_dir/rank<RANK>.pt``) and return each rank's results."""
    import torch
    require_gloo()
    launch(worker, [out_dir], timeout=timeout)
    return [torch.load(pathlib.Path(out_dir) / f"rank{rank}.pt", weights_only=False)
            for rank in range(WORLD_SIZE)]


def completed(ranks, kind):
    """Every rank's record of ``kind``; fails with the run's error if it raised on a rank."""
    for rank, outcome in enumerate(ranks):
        if outcome[kind]["error"] is not None:
            pytest.fail(f"the {kind} run failed on rank {rank}:\n{outcome[kind]['error']}", pytrace=False)
    return [outcome[kind] for outcome in ranks]


def assert_same_run(ours, reference, exact, what, tolerance):
    """Same losses (for the steps ``ours`` trained: the last ones) and the same final params
    (``{name: tensor}``): bit for bit if ``exact``, else within ``tolerance``."""
    import torch
    tolerance = dict(rtol=0, atol=0) if exact else tolerance
    trained = len(ours["losses"])
    torch.testing.assert_close(torch.tensor(ours["losses"], dtype=torch.float64),
                               torch.tensor(reference["losses"][-trained:], dtype=torch.float64),
                               **tolerance, msg=lambda m: f"{what}: losses differ\n{m}")
    assert ours["params"].keys() == reference["params"].keys()
    for name, param in ours["params"].items():
        torch.testing.assert_close(param, reference["params"][name], **tolerance,
                                   msg=lambda m, name=name: f"{what}: param {name} differs\n{m}")


def assert_resumed(ranks, run, resumed, steps_left, what, assert_same):
    """The run ``resumed`` (from ``run``'s checkpoint) trained ``run``'s last ``steps_left`` steps
    and ends as ``run`` did, bit for bit, on every rank (``assert_same(ours, reference, exact,
    what)``: the test file's comparison)."""
    full = completed(ranks, run)
    again = completed(ranks, resumed)
    for rank in range(len(ranks)):
        assert len(again[rank]["losses"]) == steps_left, f"{what}, rank {rank}"
        assert_same(again[rank], full[rank], exact=True, what=f"{what}, rank {rank}")
