"""fastopt's modules import one another without cycles, and the compiled core does not import
the Python layer above it.

The graph is read statically from the source (every ``import`` and ``from ... import``, also
those inside functions, which run later but still make a cycle: each module then needs the other
to be complete before it can work), so a cycle fails here even when a deferred import keeps it
from failing at import time.
"""
import ast
import re
from pathlib import Path

import fastopt

PACKAGE_DIR = Path(fastopt.__file__).resolve().parent
PACKAGE = "fastopt"
CORE = "fastopt._core"

# Python-level imports (not cimports) of the compiled core that reach above fastopt._core: none.
# What the core needs lives in the core (or is passed in).
KNOWN_UPWARD_CORE_IMPORTS = set()


def _module_name(path):
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(pattern):
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob(pattern))
            if "build" not in path.relative_to(PACKAGE_DIR).parts}


PYTHON_MODULES = _modules("*.py")
COMPILED_MODULES = _modules("*.pyx")
ALL_MODULES = set(PYTHON_MODULES) | set(COMPILED_MODULES)


def _package_of(module, path):
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module, path, level, target):
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target
    base = _package_of(module, path)
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{target}" if target else base


def _targets(source_module, names):
    """The fastopt modules an import of ``source_module`` (importing ``names`` from it) loads:
    ``from fastopt import _dtypes`` loads the submodule fastopt._dtypes, not only the package."""
    if source_module != PACKAGE and not source_module.startswith(PACKAGE + "."):
        return set()
    submodules = {f"{source_module}.{name}" for name in names} & ALL_MODULES
    rest = [name for name in names if f"{source_module}.{name}" not in ALL_MODULES]
    # The package itself counts only when something other than its submodules is taken from it
    # (importing fastopt.x initializes fastopt first, but that is already under way).
    return submodules | ({source_module} if rest or not names else set())


def _python_imports(module, path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported |= _targets(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path, node.level, node.module or "")
            imported |= _targets(source, [alias.name for alias in node.names])
    return imported - {module}


# ``import a.b`` or ``from a import b, c`` / ``from a import (b,\n c)``; a ``cimport`` line matches
# neither (``cimport`` is not preceded by whitespace-delimited ``import``).
_PYX_IMPORT = re.compile(r"^[ \t]*(?:import[ \t]+([\w.]+)"
                         r"|from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^#\n]*))",
                         re.MULTILINE)


_INCLUDE = re.compile(r'^[ \t]*include[ \t]+"([^"]+)"', re.MULTILINE)


def _with_includes(path, seen=()):
    """The text of a Cython source with its ``include "..."`` files spliced in (an AVX2 variant
    of a module is the module's source included under other compiler flags)."""
    text = path.read_text(encoding="utf-8")
    for name in _INCLUDE.findall(text):
        included = path.parent / name
        if included.exists() and included not in seen:
            text += "\n" + _with_includes(included, (*seen, path))
    return text


def _compiled_imports(module, path):
    """Python-level ``import`` / ``from ... import`` lines of a .pyx and the files it includes
    (``cimport`` lines are compile-time declarations, not imports at run time)."""
    imported = set()
    for plain, dots, target, names in _PYX_IMPORT.findall(_with_includes(path)):
        if plain:
            imported |= _targets(plain, [])
            continue
        names = [name.split(" as ")[0].strip() for name in names.strip("()").split(",")]
        imported |= _targets(_resolve(module, path, len(dots), target),
                             [name for name in names if name])
    return imported - {module}


def import_graph():
    graph = {module: _python_imports(module, path) for module, path in PYTHON_MODULES.items()}
    graph.update({module: _compiled_imports(module, path)
                  for module, path in COMPILED_MODULES.items()})
    return graph


def find_cycles(graph):
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in sorted(graph.get(node, ())):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_graph_sees_the_imports_it_must():
    # The walker itself: known edges of today's package, found (one of them inside a function).
    graph = import_graph()
    assert "fastopt.minimize._compiled" in graph["fastopt.minimize._lbfgs_py"]
    assert "fastopt.minimize._common" in graph["fastopt.minimize._second_order"]
    assert "fastopt._core._bf16" in graph["fastopt._core._gather"]  # a .pyx's Python import
    assert "fastopt._core._table" not in graph["fastopt._core._bucket"]   # cimport only


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_fastopt_modules_import_one_another_without_cycles():
    cycles = find_cycles(import_graph())
    assert cycles == [], (
        "import cycles among fastopt's modules (move what both need into a module both "
        f"import): {cycles}")


def test_the_compiled_core_imports_nothing_above_it():
    # its compiled modules and the Python modules that live in it alike
    graph = import_graph()
    upward = {(module, target) for module in graph if module.startswith(CORE + ".")
              for target in graph[module] if not (target == CORE or target.startswith(CORE + "."))}
    assert upward == KNOWN_UPWARD_CORE_IMPORTS, (
        "fastopt._core imports the Python layer above it (move what it needs into the core, or "
        f"pass it in): {sorted(upward - KNOWN_UPWARD_CORE_IMPORTS)}")
