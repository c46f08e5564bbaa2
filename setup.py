"""Build fastopt's Cython extensions.

Every ``fastopt/**/*.pyx`` becomes an extension module named by its path (``fastopt/a/_b.pyx`` is
``fastopt.a._b``). Compiler directives are set once here for the whole package; kernels never
repeat them.

Two builds (``fastopt.build_info()["build"]`` says which one is installed):

* **portable** (the default; what a wheel holds): every module is compiled for the compiler's
  baseline target (x86-64: SSE2, any x86-64 CPU), and each module with vector code -- the update
  kernels ``fastopt._core._kernels``, L-BFGS ``fastopt.minimize._lbfgs`` and the bucket driver
  ``fastopt._core._bucket`` (the compiled drivers' own loops) -- once more per instruction-set
  variant the compiler supports, as ``<module>_<variant>``: ``avx2`` (x86-64-v3: ``-mavx2 -mfma
  -mf16c -mbmi -mbmi2 -mlzcnt -mmovbe -mpopcnt``) and ``avx512`` (x86-64-v4: those and ``-mavx512f
  -mavx512cd -mavx512vl -mavx512bw -mavx512dq``). The variants
  and the modules are declared in ``fastopt/_core/_isa.py``; ``fastopt._backend`` picks the best
  variant the running CPU supports at import (``FASTOPT_FORCE_ISA=baseline|avx2|avx512`` or
  ``FASTOPT_FORCE_BASELINE=1`` force one). A non-x86 compiler builds the baseline only.
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
* ``fastopt.minimize._lbfgs`` alone adds ``-ffp-contract=fast`` and ``-mprefer-vector-width=512``. Its loops
  are inner products and axpys: without FMA each element costs two floating-point operations and
  at n ~ 1e3 the two-loop recursion is bound by the FP ports, not by L2, and AVX-512 CPUs run it
  on 256-bit vectors unless told otherwise. Together these cut L-BFGS's time per iteration by ~25%
  at n = 1e3. Only L-BFGS's rounding depends on the variant then (the baseline has no FMA); the
  optimizer steps stay bit-identical everywhere.
* MSVC gets its own spellings: ``/fp:precise`` (no contraction; VS 2022 and later), ``/arch:AVX2``
  and ``/arch:AVX512`` for the variants, ``/fp:contract`` for L-BFGS.

Environment: ``FASTOPT_NATIVE=1`` (native build), ``FASTOPT_BUILD_JOBS`` (parallel compiler jobs;
default: the CPUs this process may use), ``FASTOPT_CYTHON_JOBS`` (parallel Cython jobs; default the
same).
"""
import contextlib
import glob
import json
import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(ROOT, "fastopt", "_core")


def _import_from_core(name):
    """A pure-Python module of fastopt/_core (the variant table, the code generator), imported
    without writing bytecode into the source tree."""
    sys.path.insert(0, CORE)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        return __import__(name)
    finally:
        sys.dont_write_bytecode = dont_write
        sys.path.pop(0)


isa = _import_from_core("_isa")

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}


def _env_flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SystemExit(f"{name}={os.environ[name]!r}: use 1 or 0")


NATIVE = _env_flag("FASTOPT_NATIVE")
if NATIVE and "FASTOPT_PORTABLE" in os.environ and _env_flag("FASTOPT_PORTABLE"):
    raise SystemExit("FASTOPT_NATIVE=1 and FASTOPT_PORTABLE=1 contradict each other (portable is the "
                     "default: set neither for a portable build)")


def _build_jobs():
    """Parallel jobs: FASTOPT_BUILD_JOBS, else the CPUs this process may run on."""
    if os.environ.get("FASTOPT_BUILD_JOBS"):
        return max(1, int(os.environ["FASTOPT_BUILD_JOBS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


# The thread pool's C source, compiled into the module that drives it.
POOL_SOURCES = {os.path.join("fastopt", "_core", "_fastopt_threads.pyx"): [os.path.join("fastopt", "_core", "pool.c")]}


def _module_name(pyx):
    return os.path.splitext(pyx)[0].replace(os.sep, ".")


#: module name -> (dispatched module, variant) for the dispatched modules and their variants.
VARIANT_OF = {}
for _module in isa.DISPATCHED:
    VARIANT_OF[_module] = (_module, isa.NATIVE if NATIVE else isa.BASELINE)
    for _variant in isa.VARIANTS:
        VARIANT_OF[isa.variant_module(_module, _variant.name)] = (_module, _variant.name)


def _build_cost(ext):
    """Rough order of compile time (the kernels first), so parallel jobs end together."""
    module, _ = VARIANT_OF.get(ext.name, (ext.name, None))
    return {"fastopt._core._kernels": 0, "fastopt.minimize._lbfgs": 1, "fastopt._core._bucket": 2}.get(module, 3)


extensions = [
    Extension(_module_name(pyx), [pyx] + POOL_SOURCES.get(pyx, []),
              include_dirs=[np.get_include(), os.path.join("fastopt", "_core")],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for pyx in sorted(glob.glob(os.path.join("fastopt", "**", "*.pyx"), recursive=True))
]
extensions.sort(key=_build_cost)


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


X86_PROBE = ("#if !(defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86))\n"
             "#error not x86\n#endif\n")


class BuildFlags:
    """The compiler flags of every module, from what the compiler in use accepts (probed with the
    same compiler object, so CC, CFLAGS and macOS's ARCHFLAGS apply)."""

    def __init__(self, compiler):
        self.compiler = compiler
        self.msvc = compiler.compiler_type == "msvc"
        x86 = self._compiles([], X86_PROBE)
        if self.msvc:
            self.base, self.lbfgs, self.threads = ["/fp:precise"], ["/fp:contract"], []
        else:
            self.base = self._accepted(["-O3", "-fno-math-errno", "-ffp-contract=off",
                                        "-Wno-unreachable-code"])
            if NATIVE:
                self.base += self._accepted(["-march=native"])
            self.lbfgs = self._accepted(["-ffp-contract=fast", "-mprefer-vector-width=512"])
            self.threads = self._accepted(["-pthread"]) if os.name == "posix" else []
        self.variant_flags = {}
        if not NATIVE and x86:
            for variant in isa.VARIANTS:
                flags = list(variant.msvc_flags) if self.msvc else isa.gcc_flags(variant.name)
                macros = isa.compiler_macros(variant.name, msvc=self.msvc)
                probe = "".join(f"#ifndef {m}\n#error {m}\n#endif\n" for m in macros)
                if self._compiles(flags, X86_PROBE + probe):
                    self.variant_flags[variant.name] = flags
        #: the variants built of every dispatched module, best first
        self.variants = ([isa.NATIVE] if NATIVE else
                         [v.name for v in isa.VARIANTS if v.name in self.variant_flags] + [isa.BASELINE])

    def _compiles(self, flags, source="int main(void) { return 0; }\n"):
        from distutils.errors import CCompilerError, DistutilsExecError
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(source)
            try:
                with _silenced():
                    self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            except (CCompilerError, DistutilsExecError, OSError):
                return False
        return True

    def _accepted(self, flags):
        return [flag for flag in flags if self._compiles([flag])]

    def for_module(self, name):
        """Compile flags of module ``name``, or None if this build leaves it out."""
        module, variant = VARIANT_OF.get(name, (None, None))
        flags = self.base + self.threads
        if variant in self.variant_flags:
            flags = flags + self.variant_flags[variant]
        elif variant not in (None, isa.BASELINE, isa.NATIVE):
            return None   # a variant this compiler (or a native build) does not make
        if module == "fastopt.minimize._lbfgs":
            flags = flags + self.lbfgs
        return flags


def _reuse_generated_c(extensions):
    """Point each extension whose generated C file is current at that file instead of its .pyx.

    pip builds in a fresh isolated environment, so Cython's own .pxd files (``libc/*.pxd``) and
    SciPy's ``cython_blas.pxd`` are new files at every install: cythonize's timestamp check would
    regenerate every module and setuptools recompile them all (minutes), when nothing of fastopt
    changed -- the README's second command, after the first, paid a full build. A module keeps its
    C file when that file was written by this Cython version after this file and every file of
    the project the module depends on (its .pyx, the .pxd/.pxi it cimports or includes, the
    generated loops, every header); anything else is cythonized as usual.
    """
    from Cython import __version__ as cython_version
    from Cython.Build.Dependencies import create_dependency_tree

    root = os.path.dirname(os.path.abspath(__file__))
    headers = glob.glob(os.path.join(root, "fastopt", "**", "*.h"), recursive=True)
    tree = create_dependency_tree()
    for ext in extensions:
        pyx = ext.sources[0]
        c_file = os.path.splitext(pyx)[0] + ".c"
        if not pyx.endswith(".pyx") or not os.path.exists(c_file):
            continue
        with open(c_file) as f:
            if f.readline().strip() != f"/* Generated by Cython {cython_version} */":
                continue
        inputs = [os.path.abspath(__file__), *headers]
        inputs += [d for d in map(os.path.abspath, tree.all_dependencies(pyx))
                   if d.startswith(root + os.sep)]
        if max(os.path.getmtime(d) for d in inputs) < os.path.getmtime(c_file):
            ext.sources[0] = c_file


class build_ext_fastopt(build_ext):
    """build_ext that generates and cythonizes the sources first, and records how it built.

    * The element loops of every declared algorithm (fastopt/algorithms) are generated from
      templates (fastopt/_core/_codegen.py), the compiler's flags are probed (:class:`BuildFlags`;
      the variants it cannot build are left out), then every .pyx is cythonized: all build steps,
      so importing setup.py (``python setup.py --name``) writes nothing.
    * Extensions compile in parallel (``FASTOPT_BUILD_JOBS``, default: the usable CPUs).
    * ``fastopt/_build_config.py`` says how this build was made (read by ``fastopt.build_info()``).
      It goes where the extensions go: the build directory (then into the wheel), or the source
      tree for in-place and editable builds.
    """

    def finalize_options(self):
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler

        _import_from_core("_codegen").render()
        # The compiler build_ext will use (build_ext.run makes the same one), to probe its flags.
        compiler = new_compiler(compiler=self.compiler)
        customize_compiler(compiler)
        self.flags = BuildFlags(compiler)
        kept = []
        for ext in self.distribution.ext_modules:
            flags = self.flags.for_module(ext.name)
            if flags is not None:
                ext.extra_compile_args = flags
                ext.extra_link_args = list(self.flags.threads)
                kept.append(ext)
        _reuse_generated_c(kept)
        self.distribution.ext_modules[:] = cythonize(
            kept, compiler_directives=COMPILER_DIRECTIVES,
            nthreads=int(os.environ.get("FASTOPT_CYTHON_JOBS", "0") or 0))
        if self.parallel is None:
            self.parallel = _build_jobs()
        super().finalize_options()

    def run(self):
        # Setuptools rebuilds a module only when a source is newer than it, not when its flags
        # changed: a native build after a portable one (or the reverse) would keep the other's
        # modules. A record of every module's flags next to the objects forces a full rebuild
        # when they differ (written after a successful build only, so a failed one rebuilds).
        record = os.path.join(self.build_temp, "fastopt-flags.json")
        flags_now = json.dumps({ext.name: [ext.extra_compile_args, ext.extra_link_args]
                                for ext in self.extensions}, sort_keys=True)
        try:
            with open(record) as f:
                flags_before = f.read()
        except OSError:
            flags_before = None
        if flags_before != flags_now:
            self.force = True
        super().run()
        self.mkpath(self.build_temp)
        with open(record, "w") as f:
            f.write(flags_now)
        flags = self.flags
        with open(self._config_path(), "w") as f:
            f.write("# Generated by setup.py's build_ext; not tracked.\n")
            f.write(f"BUILD = {'native' if NATIVE else 'portable'!r}\n"
                    f"# the variants of every dispatched module (fastopt/_core/_isa.py), best first\n"
                    f"VARIANTS = {tuple(flags.variants)!r}\n"
                    f"COMPILER = {flags.compiler.compiler_type!r}\n"
                    f"CFLAGS = {flags.base + flags.threads!r}\n"
                    f"VARIANT_CFLAGS = {flags.variant_flags!r}\n"
                    f"LBFGS_CFLAGS = {flags.lbfgs!r}\n")

    def _config_path(self):
        if self.inplace:
            package_dir = self.get_finalized_command("build_py").get_package_dir("fastopt")
        else:
            package_dir = os.path.join(self.build_lib, "fastopt")
        self.mkpath(package_dir)
        return os.path.join(package_dir, "_build_config.py")

    def get_outputs(self):
        return super().get_outputs() + [os.path.join(self.build_lib, "fastopt", "_build_config.py")]


setup(cmdclass={"build_ext": build_ext_fastopt}, ext_modules=extensions)
