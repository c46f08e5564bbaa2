"""Build fastopt's Cython extensions.

Every ``fastopt/**/*.pyx`` becomes an extension module named by its path (``fastopt/a/_b.pyx`` is
``fastopt.a._b``). Compiler directives are set
once here for the whole package; kernels never repeat them.

Flags, and why:

* ``-O3`` -- the update loops must vectorize.
* ``-fno-math-errno`` -- without it GCC keeps ``sqrt`` scalar (it must be able to set ``errno``) and
  Adam is ~8x slower. It changes no result: IEEE ``sqrt`` is exact either way.
* ``-ffp-contract=off`` -- no silent FMA contraction, so every build (native, portable, AVX2 path)
  rounds exactly alike and results are bit-identical across them and to a NumPy reference.
* never ``-ffast-math`` -- it assumes no NaN/Inf and breaks non-finite detection and propagation.
* ``-march=native`` by default (the building CPU's vector ISA). ``FASTOPT_PORTABLE=1`` builds for any
  x86-64 instead and adds ``fastopt._core._kernels_avx2`` (``-mavx2 -mfma``), chosen at run time on CPUs that
  have AVX2 and FMA.
* No OpenMP: large jobs run on fastopt's own thread pool (``fastopt/_core/pool.c``, POSIX threads),
  compiled into ``fastopt._core._fastopt_threads``; no OpenMP runtime is linked or bundled.
* ``fastopt._lbfgs`` alone adds ``-ffp-contract=fast`` and ``-mprefer-vector-width=512``. Its loops
  are inner products and axpys: without FMA each element costs two floating-point operations and
  at n ~ 1e3 the two-loop recursion is bound by the FP ports, not by L2, and AVX-512 CPUs run it
  on 256-bit vectors unless told otherwise. Together these cut L-BFGS's time per iteration by ~25%
  at n = 1e3. Only L-BFGS's rounding depends on the build then; the optimizer steps stay
  bit-identical everywhere.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}

PORTABLE = os.environ.get("FASTOPT_PORTABLE", "0").lower() in ("1", "true", "yes")


def _compiler_accepts(flags, source="int main(void){return 0;}\n", link=True):
    """True if the C compiler used for extensions compiles (and links) ``source`` with ``flags``."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        out = os.path.join(tmp, "probe.out" if link else "probe.o")
        cmd = cc + flags + ([] if link else ["-c"]) + [src, "-o", out]
        try:
            return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        except OSError:
            return False


IS_X86 = _compiler_accepts(["-mavx2", "-mfma"], link=False)

base_cflags = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wno-unreachable-code"]
if not PORTABLE and _compiler_accepts(["-march=native"], link=False):
    base_cflags.append("-march=native")
lbfgs_cflags = [flag for flag in ("-ffp-contract=fast", "-mprefer-vector-width=512")
                if _compiler_accepts([flag], link=False)]
# The thread pool's C source, compiled into the module that drives it.
POOL_SOURCES = {os.path.join("fastopt", "_core", "_fastopt_threads.pyx"): [os.path.join("fastopt", "_core", "pool.c")]}
thread_ldflags = ["-pthread"] if os.name == "posix" and _compiler_accepts(["-pthread"]) else []


def make_extension(pyx, extra_cflags=()):
    name = os.path.splitext(pyx)[0].replace(os.sep, ".")
    return Extension(
        name,
        [pyx] + POOL_SOURCES.get(pyx, []),
        include_dirs=[np.get_include(), os.path.join("fastopt", "_core")],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=base_cflags + thread_ldflags + list(extra_cflags),
        extra_link_args=thread_ldflags,
    )


extensions = []
for pyx in sorted(glob.glob(os.path.join("fastopt", "**", "*.pyx"), recursive=True)):
    if os.path.basename(pyx) == "_kernels_avx2.pyx":
        if PORTABLE and IS_X86:
            extensions.append(make_extension(pyx, ["-mavx2", "-mfma", "-mf16c"]))
        continue
    extensions.append(make_extension(pyx, lbfgs_cflags if pyx.endswith("_lbfgs.pyx") else ()))


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
      templates (fastopt/_core/_codegen.py), then every .pyx is cythonized: both are build steps,
      so importing setup.py (``python setup.py --name``) writes nothing.
    * ``fastopt/_build_config.py`` says how this build was made (read by ``fastopt.build_info()``).
      It goes where the extensions go: the build directory (then into the wheel), or the source
      tree for in-place and editable builds.
    """

    def finalize_options(self):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastopt", "_core"))
        try:
            import _codegen
            _codegen.render()
        finally:
            sys.path.pop(0)
        _reuse_generated_c(self.distribution.ext_modules)
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules, compiler_directives=COMPILER_DIRECTIVES,
            nthreads=int(os.environ.get("FASTOPT_CYTHON_JOBS", "0") or 0))
        super().finalize_options()

    def run(self):
        super().run()
        with open(self._config_path(), "w") as f:
            f.write("# Generated by setup.py's build_ext; not tracked.\n")
            f.write(f"PORTABLE = {PORTABLE!r}\nCFLAGS = {base_cflags!r}\n"
                    f"LBFGS_CFLAGS = {lbfgs_cflags!r}\n")

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
