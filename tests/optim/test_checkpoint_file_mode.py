"""fastopt.save: the temporary file a save writes the state into is never readable by more users
than the checkpoint it replaces -- not while it is written, and not when a killed save leaves it
behind."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastopt
from fastopt import _atomic_file, checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits and SIGKILL")


def _temporaries(directory):
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.endswith(_atomic_file.TEMP_SUFFIX))


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.fixture
def umask():
    """Set the umask for one test: ``umask(value)``; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _save_watching_the_temporary(monkeypatch, path, optimizer):
    """Save ``optimizer`` to ``path``; returns the temporary's permission bits seen on disk
    before NumPy writes the archive into it, after its first bytes and after the last."""
    seen = []
    write_archive = np.savez

    def look():
        (tmp,) = _temporaries(os.path.dirname(path))
        seen.append(_mode(tmp))

    class Watched:
        """The temporary's file object, looked at after the first write into it."""

        def __init__(self, file):
            self._file = file
            self._writes = 0

        def write(self, data):
            written = self._file.write(data)
            self._writes += 1
            if self._writes == 1:
                self._file.flush()
                look()
            return written

        def __getattr__(self, name):
            return getattr(self._file, name)

    def spy(file, **arrays):
        look()
        write_archive(Watched(file), **arrays)
        file.flush()
        look()

    monkeypatch.setattr(checkpoint.np, "savez", spy)
    try:
        fastopt.save(optimizer, path, params=True)
    finally:
        monkeypatch.undo()
    assert len(seen) == 3
    return seen


def _optimizer(value=0.0):
    opt = fastopt.Adam([np.full(1000, value), np.full(7, value)], lr=1e-3)
    opt.step([np.ones(1000), np.ones(7)])
    return opt


@pytest.mark.parametrize("target_mode, mask", [(0o600, 0o022), (0o640, 0o022), (0o400, 0o022),
                                               (0o600, 0o000)],
                         ids=lambda mode: f"{mode:04o}")
def test_overwriting_writes_a_temporary_never_wider_than_the_target(tmp_path, monkeypatch, umask,
                                                                    target_mode, mask):
    path = str(tmp_path / "ckpt.npz")
    fastopt.save(_optimizer(), path)
    os.chmod(path, target_mode)
    umask(mask)
    saved = _optimizer(1.0)
    seen = _save_watching_the_temporary(monkeypatch, path, saved)
    assert all(mode & ~target_mode == 0 for mode in seen), [oct(m) for m in seen]
    assert _mode(path) == target_mode                 # the final file keeps the target's mode
    assert _temporaries(tmp_path) == []
    params = [np.zeros(1000), np.zeros(7)]
    fastopt.load(fastopt.Adam(params, lr=1e-3), path)  # the watched save wrote a whole checkpoint
    assert all(np.array_equal(p, q) for p, q in zip(params, saved._params))


# Guards, not regression tests (fastopt always did this): taking the target's mode for the
# temporary keeps the umask for a new checkpoint, and a umask narrower than an existing
# checkpoint's mode narrows only the temporary, not the file that replaces it.

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027], ids=lambda mode: f"umask{mode:04o}")
def test_a_new_checkpoint_is_written_under_the_umask_from_the_start(tmp_path, monkeypatch, umask,
                                                                    mask):
    path = str(tmp_path / "new.npz")
    umask(mask)
    seen = _save_watching_the_temporary(monkeypatch, path, _optimizer())
    assert seen == [0o666 & ~mask] * 3
    assert _mode(path) == 0o666 & ~mask


def test_a_narrower_umask_narrows_the_temporary_only(tmp_path, monkeypatch, umask):
    path = str(tmp_path / "ckpt.npz")
    fastopt.save(_optimizer(), path)
    os.chmod(path, 0o644)
    umask(0o077)
    seen = _save_watching_the_temporary(monkeypatch, path, _optimizer(1.0))
    assert seen == [0o600] * 3
    assert _mode(path) == 0o644


_SAVER = """
import os, sys, numpy as np, fastopt
os.umask(0o022)
path = sys.argv[1]
params = [np.random.default_rng(0).standard_normal(600_000)]
opt = fastopt.Adam(params, lr=1e-3)
print("ready", flush=True)
while True:
    opt.step([np.ones_like(params[0])])
    fastopt.save(opt, path, params=True)
"""


def test_a_killed_save_of_a_0600_checkpoint_leaves_no_wider_temporary(tmp_path):
    """SIGKILL a process that saves over a 0600 checkpoint in a loop: whatever temporary file a
    kill leaves behind (holding the full state) is 0600 too, not 0644."""
    path = tmp_path / "ckpt.npz"
    fastopt.save(fastopt.Adam([np.zeros(600_000)]), path)
    os.chmod(path, 0o600)
    rng = np.random.default_rng(0)
    left_behind = []
    for _ in range(30):
        # cwd: `python -c` puts it first on sys.path, and it must not be an unbuilt source tree
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                                 text=True, cwd=tmp_path)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        left_behind += [(name, _mode(name)) for name in _temporaries(tmp_path)]
        checkpoint.remove_stale_temporaries(path)
        if len(left_behind) >= 3:
            break
    assert left_behind, "no kill hit a save mid-write: this run tested nothing"
    assert all(mode == 0o600 for _, mode in left_behind), \
        [(os.path.basename(name), oct(mode)) for name, mode in left_behind]
    assert _mode(path) == 0o600
