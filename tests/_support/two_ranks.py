"""Launching a two-rank gloo job for the engine tests (tests/torch/test_engine_*.py).

:func:`launch` starts ``python WORKER RANK ARGS...`` once per rank with the environment
``torch.distributed``'s ``env://`` rendezvous reads (MASTER_ADDR, MASTER_PORT on a free port,
RANK, WORLD_SIZE), waits for both and fails with both ranks' output if either fails. The workers
write their results to files the tests read, so that one launch serves every test of a file.

``FASTOPT_ENGINE_CANDIDATE=torch`` makes the workers run ``torch.optim``'s class where they would
run fastopt's, which proves a harness with the reference on both sides (every comparison must
then hold exactly); the default, ``fastopt``, is what the tests are for.
"""
import os
import pathlib
import socket
import subprocess
import sys

import pytest

WORLD_SIZE = 2
#: Which optimizers the workers compare with torch.optim's: "fastopt" (the tests' point) or
#: "torch" (the harness checked against itself).
CANDIDATE = os.environ.get("FASTOPT_ENGINE_CANDIDATE", "fastopt")


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
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), *map(str, args)],
                              env=dict(env, RANK=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD_SIZE)]
    outputs = []
    try:
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                out = f"(killed after {timeout} s)\n{out}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    failed = [f"rank {rank} exited with {proc.returncode}:\n{out}"
              for rank, (proc, out) in enumerate(zip(procs, outputs)) if proc.returncode != 0]
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)
    return outputs
