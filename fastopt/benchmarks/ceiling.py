"""The C references of the benchmark: ``ceiling.c`` compiled at bench time and called with ctypes.

``ceiling.c`` ships inside the package. :func:`build` compiles it into a temporary directory with
the C compiler Python was built with (``CC`` overrides it), ``-O3 -march=native -fno-math-errno
-fopenmp``, dropping ``-march=native`` or ``-fopenmp`` if the compiler refuses them, and loads the
library. Both references are timed inside C on the arrays the benchmark passes, so a contender's
time is the loop alone:

* :meth:`CReference.adam_f32` -- a plain fused float32 Adam step (the ``C-adam`` column);
* :meth:`CReference.stream` -- the memory-traffic bound of an update that reads R arrays and writes
  W of them back per element (the ``mem-bound`` column; R and W per algorithm in
  :mod:`.settings`).
"""
import ctypes
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("ceiling.c")
REQUIRED_FLAGS = ["-O3", "-fno-math-errno"]   # without -fno-math-errno sqrtf stays scalar
OPTIONAL_FLAGS = ["-march=native", "-fopenmp"]
_TIMED = [ctypes.c_long] + [ctypes.c_void_p] * 4 + [ctypes.c_int]


def compiler():
    """The C compiler command (a list), or None when there is none on PATH."""
    command = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if command and shutil.which(command[0]):
        return command
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


class CReference:
    """The loaded library; :meth:`close` (or leaving a ``with`` block) deletes its directory."""

    def __init__(self, library_path, workdir, command):
        self.workdir = workdir
        self.command = command
        lib = ctypes.CDLL(str(library_path))
        lib.fastopt_ref_adam_f32.restype = ctypes.c_double
        lib.fastopt_ref_adam_f32.argtypes = _TIMED
        for fn in (lib.fastopt_ref_stream_f32, lib.fastopt_ref_stream_f64):
            fn.restype = ctypes.c_double
            fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        lib.fastopt_ref_set_threads.argtypes = [ctypes.c_int]
        self.lib = lib
        self.openmp = bool(lib.fastopt_ref_openmp())
        self.max_streams = int(lib.fastopt_ref_max_streams())

    @property
    def flags(self):
        """The compile command as one line, for the report."""
        return " ".join([os.path.basename(self.command[0])] + self.command[1:])

    def set_threads(self, n):
        """Run the C loops on ``n`` OpenMP threads (no-op when built without OpenMP)."""
        self.lib.fastopt_ref_set_threads(int(n))

    def adam_f32(self, param, grad, exp_avg, exp_avg_sq):
        """``timed(k)``: seconds for k fused Adam steps over these float32 arrays (updated in place)."""
        arrays = _checked([param, grad, exp_avg, exp_avg_sq], np.float32, "adam_f32")
        fn, n, ptrs = self.lib.fastopt_ref_adam_f32, arrays[0].size, [a.ctypes.data for a in arrays]

        def timed(k):
            return fn(n, *ptrs, int(k))
        timed.arrays = arrays          # the C loop holds raw pointers: keep the buffers alive
        return timed

    def stream(self, written, read_only):
        """``timed(k)``: seconds for k passes that read every array and write back ``written``.

        ``written`` (read and written: a param and its state buffers) and ``read_only`` (a
        gradient) are float32 or float64 arrays of one dtype and size, updated in place.
        """
        arrays = _checked(list(written) + list(read_only), None, "stream")
        reads, writes = len(arrays), len(written)
        if not 1 <= reads <= self.max_streams:
            raise ValueError(f"stream: {reads} arrays; the C kernel takes 1 to {self.max_streams}")
        fn = (self.lib.fastopt_ref_stream_f32 if arrays[0].dtype == np.float32
              else self.lib.fastopt_ref_stream_f64)
        table = (ctypes.c_void_p * reads)(*[a.ctypes.data for a in arrays])
        n = arrays[0].size

        def timed(k):
            return fn(n, reads, writes, table, int(k))
        timed.arrays = arrays          # the C loop holds raw pointers: keep the buffers alive
        return timed

    def close(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _checked(arrays, dtype, what):
    dtype = np.dtype(dtype or arrays[0].dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{what}: arrays must be float32 or float64, got {dtype}")
    for a in arrays:
        if a.dtype != dtype or a.size != arrays[0].size or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{what}: arrays must be writeable, C-contiguous {dtype} arrays of one size")
    return arrays


def build(source=SOURCE):
    """Compile ``source`` and load it: ``(CReference, None)``, or ``(None, reason)`` when there is no
    C compiler or it fails (the reason is one line for the report)."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler found (install gcc or clang, or set CC)"
    workdir = tempfile.mkdtemp(prefix="fastopt-bench-")
    library = os.path.join(workdir, "libfastopt_ref.so")
    error = ""
    # All optional flags first, then without OpenMP, then without -march=native, then neither.
    for drop in ([], ["-fopenmp"], ["-march=native"], OPTIONAL_FLAGS):
        flags = REQUIRED_FLAGS + [f for f in OPTIONAL_FLAGS if f not in drop]
        command = cc + flags
        try:
            done = subprocess.run(command + ["-shared", "-fPIC", "-o", library, str(source), "-lm"],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            error = str(exc)
            continue
        if done.returncode == 0:
            try:
                return CReference(library, workdir, command), None
            except OSError as exc:
                error = str(exc)
                break
        error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    shutil.rmtree(workdir, ignore_errors=True)
    return None, f"{os.path.basename(cc[0])} could not build {source.name}: {error[:200]}"
