"""Every public name has a NumPy-style ``Examples`` section, and its doctest passes.

The public names: the classes and functions of ``fastopt.__all__``, ``fastopt.torch.__all__``,
``fastopt.minimize.__all__`` and ``fastopt.lr_scheduler.__all__`` (the optimizer classes' sections
are generated from their declarations, the others written by hand). Each docstring's examples run
with doctest's NORMALIZE_WHITESPACE and ELLIPSIS, in a fresh namespace; the torch front end's need
torch (under CI its absence fails, see tests/conftest.py).
"""
import doctest
import importlib
import inspect
import re

import pytest

import fastopt

NUMPY_MODULES = ("fastopt", "fastopt.minimize", "fastopt.lr_scheduler")
TORCH_MODULE = "fastopt.torch"

#: A numpydoc section heading: a title line underlined by dashes of the same length.
SECTION = re.compile(r"^(\w[\w ]*)\n(-+)$", re.MULTILINE)


def public_names(module_name):
    """``(module name, name)`` for each class and function of the module's ``__all__``."""
    module = importlib.import_module(module_name)
    return [(module_name, name) for name in module.__all__
            if not inspect.ismodule(getattr(module, name))]


def all_cases():
    cases = [case for module in NUMPY_MODULES for case in public_names(module)]
    try:
        cases += public_names(TORCH_MODULE)
    except ImportError:          # no torch: one case that skips (fails under CI) on its import
        cases.append((TORCH_MODULE, None))
    return cases


CASES = all_cases()


def resolve(module_name, name):
    if module_name == TORCH_MODULE:
        pytest.importorskip("torch")
    module = importlib.import_module(module_name)
    assert name is not None, "fastopt.torch imported at last: rerun the collection"
    return getattr(module, name)


def sections(doc):
    """The numpydoc section titles of ``doc``, in order."""
    return [title for title, dashes in SECTION.findall(inspect.cleandoc(doc))
            if len(dashes) == len(title)]


def test_every_module_has_public_names():
    counts = {module: sum(1 for m, _ in CASES if m == module) for module in NUMPY_MODULES}
    assert all(counts.values()), counts
    assert counts["fastopt"] >= len(fastopt.__all__) - 1      # all but the lr_scheduler module


@pytest.mark.parametrize("module_name, name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_docstring_has_examples_that_pass(module_name, name):
    obj = resolve(module_name, name)
    qualified = f"{module_name}.{name}"
    doc = obj.__doc__
    assert doc, f"{qualified} has no docstring"
    titles = sections(doc)
    assert "Examples" in titles, f"{qualified}: no Examples section (sections: {titles})"
    assert titles[-1] == "Examples", f"{qualified}: Examples must be the last section (numpydoc order): {titles}"

    tests = doctest.DocTestFinder(recurse=False, exclude_empty=False).find(obj, qualified, globs={})
    examples = sum(len(test.examples) for test in tests)
    assert examples >= 2, f"{qualified}: its Examples section holds {examples} doctest lines"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, f"{qualified}: doctest failed\n" + "".join(report)
