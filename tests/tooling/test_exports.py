"""fastopt's public names are written out in its sources, where readers, IDEs and static tools see
them, and ``from ... import *`` brings exactly the public API.

The optimizer classes are built from the declarations in ``fastopt/algorithms``; ``fastopt`` and
``fastopt.torch`` then name each one explicitly (``Adam = _CLASSES["Adam"]``) instead of filling
their namespace with ``globals().update``. These tests read the sources, so a declared algorithm
that is not named (and listed in ``__all__``) fails here, with what to add.
"""
import ast
import inspect
import types
from pathlib import Path

import pytest

import fastopt
import fastopt.lr_scheduler
from fastopt.algorithms import ALGORITHMS

PACKAGE = Path(fastopt.__file__).resolve().parent
DECLARED = [a.name for a in ALGORITHMS]

#: module, its source file, the dict its classes are taken from
EXPLICIT = [("fastopt", "__init__.py", "_CLASSES"), ("fastopt.torch", "torch/__init__.py", "_ADAPTERS")]


def _tree(filename):
    return ast.parse((PACKAGE / filename).read_text(encoding="utf-8"), filename)


def _named_from(tree, source_dict):
    """``{name: key}`` for the module-level ``name = source_dict["key"]`` assignments."""
    named = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Subscript)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == source_dict
                and isinstance(node.value.slice, ast.Constant)):
            named[node.targets[0].id] = node.value.slice.value
    return named


def _literal_all(tree, filename):
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__"):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                pytest.fail(f"fastopt/{filename}: __all__ must be a literal list of names (static "
                            f"tools read it without running the module), got "
                            f"{ast.unparse(node.value)}")
    pytest.fail(f"fastopt/{filename} has no __all__")


def test_no_module_fills_its_namespace_with_globals_update():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "update" and isinstance(node.func.value, ast.Call)
                    and isinstance(node.func.value.func, ast.Name)
                    and node.func.value.func.id == "globals"):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, f"globals().update hides public names from readers and tools: {found}"


@pytest.mark.parametrize("module, filename, source_dict", EXPLICIT)
def test_every_declared_algorithm_is_named_explicitly(module, filename, source_dict):
    named = _named_from(_tree(filename), source_dict)
    wrong = {name: key for name, key in named.items() if name != key}
    assert not wrong, f"fastopt/{filename} names classes after other keys: {wrong}"
    missing = [name for name in DECLARED if name not in named]
    assert not missing, (
        f"fastopt/algorithms declares {missing} but fastopt/{filename} does not name them; add "
        + "; ".join(f'{name} = {source_dict}["{name}"]' for name in missing)
        + " (and the names to its __all__)")
    extra = sorted(set(named) - set(DECLARED))
    assert not extra, f"fastopt/{filename} names {extra}, which fastopt/algorithms does not declare"


@pytest.mark.parametrize("module, filename, source_dict", EXPLICIT)
def test_all_is_a_literal_list_holding_every_algorithm(module, filename, source_dict):
    if module == "fastopt.torch":
        pytest.importorskip("torch")
    imported = __import__(module, fromlist=["*"])
    listed = _literal_all(_tree(filename), filename)
    assert listed == imported.__all__
    assert len(set(listed)) == len(listed), f"{module}.__all__ repeats a name"
    missing = [name for name in DECLARED if name not in listed]
    assert not missing, f"{module}.__all__ lacks the declared algorithms {missing}"
    absent = [name for name in listed if not hasattr(imported, name)]
    assert not absent, f"{module}.__all__ lists {absent}, which {module} does not have"
    for name in DECLARED:
        assert getattr(imported, name) is getattr(imported, source_dict)[name]
        assert getattr(imported, name).__name__ == name


def _star_import(module):
    namespace = {}
    exec(f"from {module} import *", namespace)
    namespace.pop("__builtins__")
    return namespace


@pytest.mark.parametrize("module", ["fastopt", "fastopt.torch", "fastopt.lr_scheduler", "fastopt.minimize"])
def test_star_import_brings_the_public_api_only(module):
    if module == "fastopt.torch":
        pytest.importorskip("torch")
    imported = __import__(module, fromlist=["*"])
    names = _star_import(module)
    assert sorted(names) == sorted(imported.__all__)
    private = [name for name in names if name.startswith("_")]
    assert not private, f"from {module} import * brings private names {private}"
    modules = [name for name, value in names.items()
               if isinstance(value, types.ModuleType) and name != "lr_scheduler"]
    assert not modules, f"from {module} import * brings the modules {modules}"
    for helper in ("np", "math", "Counter", "torch", "V", "identifiers", "copy", "warnings"):
        assert helper not in names, f"from {module} import * brings the helper {helper!r}"


@pytest.mark.parametrize("module", ["fastopt.torch", "fastopt.lr_scheduler", "fastopt.minimize"])
def test_every_public_class_defined_in_the_module_is_exported(module):
    """A new scheduler or adapter defined in the module but left out of ``__all__`` fails here."""
    if module == "fastopt.torch":
        pytest.importorskip("torch")
    imported = __import__(module, fromlist=["*"])
    # a package's classes may be defined in its private modules (fastopt.torch._lbfgs)
    defined = [name for name, value in vars(imported).items()
               if inspect.isclass(value) and value.__module__.startswith(module)
               and not name.startswith("_")]
    assert sorted(set(defined) - set(imported.__all__)) == []
