"""The compiler flags of every module, probed from the compiler in use.

Two builds (``fastopt.build_info()["build"]`` says which one is installed):

* **portable** (the default; what a wheel holds): every module is compiled for the compiler's
  baseline target (x86-64: SSE2, any x86-64 CPU), and each module with vector code (the modules of
  ``fastopt/_core/_isa.py``'s ``DISPATCHED``: the update kernels, L-BFGS and the bucket driver) once
  more per instruction-set variant the compiler supports, as ``<module>_<variant>``: ``avx2``
  (x86-64-v3: ``-mavx2 -mfma -mf16c -mbmi -mbmi2 -mlzcnt -mmovbe -mpopcnt``) and ``avx512``
  (x86-64-v4: those and ``-mavx512f -mavx512cd -mavx512vl -mavx512bw -mavx512dq``).
  ``fastopt._backend`` picks the best variant the running CPU supports at import
  (``FASTOPT_FORCE_ISA=baseline|avx2|avx512`` or ``FASTOPT_FORCE_BASELINE=1`` force one). A
  non-x86 compiler builds the baseline only.
* **native** (``FASTOPT_NATIVE=1``): one target, the building CPU (``-march=native`` on every
  module), no variants, for a build that runs on this machine only.

Flags, and why:

* ``-O3`` -- the update loops must vectorize.
* ``-fno-math-errno`` -- without it GCC keeps ``sqrt`` scalar (it must be able to set ``errno``) and
  Adam is ~8x slower. It changes no result: IEEE ``sqrt`` is exact either way.
* ``-ffp-contract=off`` -- no silent FMA contraction, so every build and variant (native, baseline,
  AVX2, AVX-512) rounds exactly alike and optimizer steps are bit-identical across them and to a
  NumPy reference.
* never ``-ffast-math`` -- it assumes no NaN/Inf and breaks non-finite detection and propagation.
* No OpenMP: large jobs run on fastopt's own thread pool (``fastopt/_core/pool.c``, POSIX threads;
  on Windows every job runs on the calling thread), compiled into ``fastopt._core._fastopt_threads``;
  no OpenMP runtime is linked or bundled.
* L-BFGS (an extension declared with ``contract=True``) alone adds ``-ffp-contract=fast`` and
  ``-mprefer-vector-width=512``. Its loops are inner products and axpys: without FMA each element
  costs two floating-point operations and at n ~ 1e3 the two-loop recursion is bound by the FP
  ports, not by L2, and AVX-512 CPUs run it on 256-bit vectors unless told otherwise. Together these
  cut L-BFGS's time per iteration by ~25% at n = 1e3. Only L-BFGS's rounding depends on the variant
  then (the baseline has no FMA); the optimizer steps stay bit-identical everywhere.
* ``-g0`` -- Python's own CFLAGS carry ``-g`` (its build's debug information); the generated loops'
  debug information costs a sixth of the build's compile time and changes no instruction (the
  ``.text`` sections are identical), and wheels strip it anyway. ``CFLAGS=-g`` in the environment
  keeps it.
* MSVC gets its own spellings: ``/fp:precise`` (no contraction; VS 2022 and later), ``/arch:AVX2``
  and ``/arch:AVX512`` for the variants, ``/fp:contract`` for L-BFGS.
"""
import contextlib
import os
import sys
import tempfile

from setuptools.errors import CCompilerError, ExecError

X86_PROBE = ("#if !(defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86))\n"
             "#error not x86\n#endif\n")


@contextlib.contextmanager
def _silenced():
    """Keep a probe's compiler messages off the build log (file descriptors 1 and 2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _debug_info_requested():
    """Whether CFLAGS in the environment (not Python's own) ask for debug information."""
    return any(flag.startswith("-g") and flag != "-g0" for flag in os.environ.get("CFLAGS", "").split())


class BuildFlags:
    """The compiler flags of every module, from what ``compiler`` accepts (probed with the compiler
    object build_ext compiles with, so CC, CFLAGS and macOS's ARCHFLAGS apply).

    ``isa`` is fastopt/_core/_isa.py (the variants), ``native`` whether this is a native build."""

    def __init__(self, compiler, isa, native):
        self.compiler = compiler
        self.isa = isa
        self.native = native
        self.msvc = compiler.compiler_type == "msvc"
        x86 = self._compiles([], X86_PROBE)
        if self.msvc:
            self.base, self.contract, self.threads = ["/fp:precise"], ["/fp:contract"], []
        else:
            self.base = self._accepted(["-O3", "-fno-math-errno", "-ffp-contract=off",
                                        "-Wno-unreachable-code"])
            if native:
                self.base += self._accepted(["-march=native"])
            if not _debug_info_requested():
                self.base += self._accepted(["-g0"])
            self.contract = self._accepted(["-ffp-contract=fast", "-mprefer-vector-width=512"])
            self.threads = self._accepted(["-pthread"]) if os.name == "posix" else []
        #: variant name -> its flags, for the variants this compiler builds
        self.variant_flags = {}
        if not native and x86:
            for variant in isa.VARIANTS:
                flags = list(variant.msvc_flags) if self.msvc else isa.gcc_flags(variant.name)
                macros = isa.compiler_macros(variant.name, msvc=self.msvc)
                probe = "".join(f"#ifndef {m}\n#error {m}\n#endif\n" for m in macros)
                if self._compiles(flags, X86_PROBE + probe):
                    self.variant_flags[variant.name] = flags
        #: the variants built of every dispatched module, best first
        self.variants = ([isa.NATIVE] if native else
                         [v.name for v in isa.VARIANTS if v.name in self.variant_flags] + [isa.BASELINE])

    def _compiles(self, flags, source="int main(void) { return 0; }\n"):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(source)
            try:
                with _silenced():
                    self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            except (CCompilerError, ExecError, OSError):
                return False
        return True

    def _accepted(self, flags):
        return [flag for flag in flags if self._compiles([flag])]

    def for_module(self, variant, contract):
        """Compile flags of a module built for ``variant`` (None: a module compiled once), with
        L-BFGS's contraction flags if ``contract``; None if this build leaves that variant out."""
        flags = self.base + self.threads
        if variant in self.variant_flags:
            flags = flags + self.variant_flags[variant]
        elif variant not in (None, self.isa.BASELINE, self.isa.NATIVE):
            return None   # a variant this compiler (or a native build) does not make
        return flags + self.contract if contract else flags

    def config_text(self):
        """``fastopt/_build_config.py``: how this build was made (``fastopt.build_info()``)."""
        return ("# Generated by build_tools (setup.py's build_ext); not tracked.\n"
                f"BUILD = {'native' if self.native else 'portable'!r}\n"
                f"# the variants of every dispatched module (fastopt/_core/_isa.py), best first\n"
                f"VARIANTS = {tuple(self.variants)!r}\n"
                f"COMPILER = {self.compiler.compiler_type!r}\n"
                f"CFLAGS = {self.base + self.threads!r}\n"
                f"VARIANT_CFLAGS = {self.variant_flags!r}\n"
                f"LBFGS_CFLAGS = {self.contract!r}\n")
