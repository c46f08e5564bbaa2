"""fastopt's build_ext: generate, probe, cythonize, compile in parallel, and record how it built.

Steps, all in :meth:`build_ext_fastopt.build_extensions` (so ``python setup.py --name`` or an sdist
writes nothing and compiles nothing):

1. The element loops of every declared algorithm (fastopt/algorithms) are generated from the
   templates (:mod:`build_tools.codegen`); a generated file is rewritten only when its text changed.
2. The compiler's flags are probed (:class:`build_tools.flags.BuildFlags`); the instruction-set
   variants it cannot build are left out.
3. Every extension is cythonized (in parallel), except the ones whose C file is current
   (:func:`_reuse_generated_c`). A variant ``<module>_<variant>`` is the module's own .pyx
   cythonized under its variant's name, into ``build/cython-<variant>/`` -- the one way every
   dispatched module gets its variants; there is no per-variant source file.
4. The extensions compile in parallel (``FASTOPT_BUILD_JOBS``, default: the usable CPUs). Nothing
   is recompiled when nothing changed: setuptools compares the sources' times with the module's,
   and a record of every module's flags (``fastopt-flags.json`` in the build's temporary folder)
   forces a rebuild when they changed (a native build after a portable one). An editable install
   builds in a fresh temporary folder each time: there an in-place module newer than its sources
   and built with the same flags is copied instead of recompiled (``pip install -e ".[test]"``
   after ``pip install -e .`` compiles nothing).
5. ``fastopt/_build_config.py`` says how this build was made (read by ``fastopt.build_info()``).
   It goes where the extensions go: the build directory (then into the wheel), or the source tree
   for in-place and editable builds.
"""
import glob
import json
import os
import shutil

from setuptools.command.build_ext import build_ext
from setuptools.modified import newer_group

from . import ROOT, codegen, isa
from .flags import BuildFlags

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}


def env_flag(name):
    """An environment variable that holds 1 or 0 (unset: False)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SystemExit(f"{name}={os.environ[name]!r}: use 1 or 0")


def native_build():
    """Whether FASTOPT_NATIVE=1 asks for a native build."""
    native = env_flag("FASTOPT_NATIVE")
    if native and "FASTOPT_PORTABLE" in os.environ and env_flag("FASTOPT_PORTABLE"):
        raise SystemExit("FASTOPT_NATIVE=1 and FASTOPT_PORTABLE=1 contradict each other (portable "
                         "is the default: set neither for a portable build)")
    return native


def build_jobs():
    """Parallel jobs: FASTOPT_BUILD_JOBS, else the CPUs this process may run on."""
    if os.environ.get("FASTOPT_BUILD_JOBS"):
        return max(1, int(os.environ["FASTOPT_BUILD_JOBS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def _variant_extension(ext, variant):
    """A copy of extension ``ext`` named for instruction-set ``variant``, from the same sources."""
    copy = type(ext)(isa.variant_module(ext.name, variant), list(ext.sources),
                     include_dirs=list(ext.include_dirs), define_macros=list(ext.define_macros),
                     depends=list(ext.depends))
    copy.fastopt_variant, copy.fastopt_contract = variant, ext.fastopt_contract
    return copy


def _cython_folder(ext):
    """Where Cython writes an extension's C: beside its .pyx, or for a variant in its own folder
    under build/ (the variants share the .pyx, each C file names its own module)."""
    if ext.fastopt_variant in (None, isa.BASELINE, isa.NATIVE):
        return None
    return os.path.join(ROOT, "build", f"cython-{ext.fastopt_variant}")


def _c_file(pyx, folder):
    c_file = os.path.splitext(pyx)[0] + ".c"
    return c_file if folder is None else os.path.join(folder, c_file)


def _reuse_generated_c(extensions, folder):
    """Point each extension whose generated C file is current at that file instead of its .pyx.

    pip builds in a fresh isolated environment, so Cython's own .pxd files (``libc/*.pxd``) are
    new files at every install: cythonize's timestamp check would
    regenerate every module and setuptools recompile them all (minutes), when nothing of fastopt
    changed. A module keeps its C file when that file was written by this Cython version, for this
    module, after every file of the project the module depends on (its .pyx, the .pxd/.pxi it
    cimports or includes, the generated files, every header, build_tools); anything else is
    cythonized as usual.
    """
    from Cython import __version__ as cython_version
    from Cython.Build.Dependencies import create_dependency_tree

    project = [os.path.abspath(p) for p in
               glob.glob(os.path.join(ROOT, "fastopt", "**", "*.h"), recursive=True)
               + glob.glob(os.path.join(ROOT, "build_tools", "**", "*.py*"), recursive=True)]
    tree = create_dependency_tree()
    for ext in extensions:
        pyx = ext.sources[0]
        c_file = _c_file(pyx, folder)
        if not pyx.endswith(".pyx") or not os.path.exists(c_file):
            continue
        with open(c_file) as f:
            if f.readline().strip() != f"/* Generated by Cython {cython_version} */":
                continue
            if f'"name": "{ext.name}"' not in f.read(2000):
                continue
        inputs = project + [d for d in map(os.path.abspath, tree.all_dependencies(pyx))
                            if d.startswith(ROOT + os.sep)]
        if max(os.path.getmtime(d) for d in inputs) < os.path.getmtime(c_file):
            ext.sources[0] = c_file


def _cythonize(extensions):
    """Cythonize ``extensions`` in place (their sources become C files), in parallel."""
    from Cython.Build import cythonize

    groups = {}
    for ext in extensions:
        groups.setdefault(_cython_folder(ext), []).append(ext)
    jobs = int(os.environ.get("FASTOPT_CYTHON_JOBS") or build_jobs())
    for folder, group in groups.items():
        _reuse_generated_c(group, folder)
        todo = [ext for ext in group if ext.sources[0].endswith(".pyx")]
        if not todo:
            continue
        done = cythonize(todo, compiler_directives=COMPILER_DIRECTIVES, build_dir=folder,
                         nthreads=jobs if len(todo) > 1 else 0)
        by_name = {ext.name: ext for ext in done}
        for ext in todo:
            ext.sources = by_name[ext.name].sources


def _build_cost(ext):
    """Rough order of compile time (the dispatched modules first, the kernels, which include the
    generated loops, before them all; then the larger C files), so parallel jobs end together."""
    base = ext.name[:-len(ext.fastopt_variant) - 1] if ext.name not in isa.DISPATCHED and \
        ext.fastopt_variant not in (None, isa.BASELINE, isa.NATIVE) else ext.name
    rank = isa.DISPATCHED.index(base) if base in isa.DISPATCHED else len(isa.DISPATCHED)
    return rank, -os.path.getsize(ext.sources[0])


class build_ext_fastopt(build_ext):
    """build_ext for fastopt's extensions (see the module's docstring)."""

    def finalize_options(self):
        self.native = native_build()
        declared = list(self.distribution.ext_modules)
        sources = {os.path.relpath(p, ROOT).replace(os.sep, "/") for p in
                   glob.glob(os.path.join(ROOT, "fastopt", "**", "*.pyx"), recursive=True)}
        undeclared = sources - {ext.sources[0].replace(os.sep, "/") for ext in declared}
        if undeclared:
            raise SystemExit(f"setup.py declares no extension for {sorted(undeclared)}: add "
                             "extension(\"<module>\") for each to its ext_modules")
        variants = [] if self.native else [v.name for v in isa.VARIANTS]
        for ext in declared:
            ext.fastopt_variant = (isa.NATIVE if self.native else isa.BASELINE) \
                if ext.name in isa.DISPATCHED else None
            if ext.name in isa.DISPATCHED:
                self.distribution.ext_modules += [_variant_extension(ext, v) for v in variants]
        if self.parallel is None:
            self.parallel = build_jobs()
        super().finalize_options()

    def build_extensions(self):
        codegen.render()
        self.flags = BuildFlags(self.compiler, isa, self.native)
        kept = []
        for ext in self.extensions:
            flags = self.flags.for_module(ext.fastopt_variant, ext.fastopt_contract)
            if flags is not None:
                ext.extra_compile_args = flags
                ext.extra_link_args = list(self.flags.threads)
                kept.append(ext)
        self.extensions[:] = kept
        _cythonize(self.extensions)
        self.extensions.sort(key=_build_cost)
        self.config_text = self.flags.config_text()
        # setuptools rebuilds a module when a source is newer than it, not when its flags changed:
        # a record of every module's flags next to the objects forces a full rebuild when they
        # differ (written after a successful build only, so a failed one rebuilds).
        record = os.path.join(self.build_temp, "fastopt-flags.json")
        flags_now = json.dumps({ext.name: [ext.extra_compile_args, ext.extra_link_args]
                                for ext in self.extensions}, sort_keys=True)
        try:
            with open(record) as f:
                flags_before = f.read()
        except OSError:
            flags_before = None
        if flags_before is not None and flags_before != flags_now:
            self.force = True
        super().build_extensions()
        self.mkpath(self.build_temp)
        with open(record, "w") as f:
            f.write(flags_now)

    def run(self):
        super().run()
        # after run: an in-place build's inplace flag is set again (run clears it while it builds)
        with open(self._config_path(), "w") as f:
            f.write(self.config_text)

    def build_extension(self, ext):
        if self.editable_mode and not self.force and self._copy_current_inplace(ext):
            return
        super().build_extension(ext)

    def _copy_current_inplace(self, ext):
        """In an editable install (a fresh build folder each time): copy the in-place module when
        it is newer than its sources and was built with these flags. Returns whether it did."""
        build_py = self.get_finalized_command("build_py")
        inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
        config = os.path.join(build_py.get_package_dir("fastopt"), "_build_config.py")
        try:
            with open(config) as f:
                same_flags = f.read() == self.config_text
        except OSError:
            return False
        if not (same_flags and os.path.exists(inplace_file)
                and not newer_group(list(ext.sources) + list(ext.depends), inplace_file)):
            return False
        self.mkpath(os.path.dirname(regular_file))
        shutil.copy2(inplace_file, regular_file)
        return True

    def _config_path(self):
        if self.inplace:
            package_dir = self.get_finalized_command("build_py").get_package_dir("fastopt")
        else:
            package_dir = os.path.join(self.build_lib, "fastopt")
        self.mkpath(package_dir)
        return os.path.join(package_dir, "_build_config.py")

    def get_outputs(self):
        return super().get_outputs() + [os.path.join(self.build_lib, "fastopt", "_build_config.py")]
