"""One class factory for both front ends: the NumPy classes and fastopt.torch's are made by
fastopt._factory from the same declarations, with fastopt's options declared once."""
import inspect
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _factory
from fastopt.algorithms import ALGORITHMS
from fastopt.optimizer import ParamGroup

PACKAGE = Path(fastopt.__file__).resolve().parent


def _keyword_defaults(cls):
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY}


def test_the_options_are_declared_once():
    # the options dict's literal appears in fastopt/_factory.py only
    spelled = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if '"master_weights": False' in p.read_text(encoding="utf-8")]
    assert spelled == ["_factory.py"]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_every_numpy_class_takes_the_options_keyword_only_with_their_defaults(algorithm):
    defaults = _keyword_defaults(getattr(fastopt, algorithm.name))
    assert {n: defaults[n] for n in _factory.OPTIONS} == dict(_factory.OPTIONS, **algorithm.option_defaults)


@pytest.mark.torch
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.name)
def test_every_torch_class_takes_the_same_options(algorithm):
    torch_front = pytest.importorskip("fastopt.torch")
    defaults = _keyword_defaults(getattr(torch_front, algorithm.name))
    assert {n: defaults[n] for n in _factory.OPTIONS} == dict(_factory.OPTIONS, **algorithm.option_defaults)
    assert getattr(torch_front, algorithm.name)._fastopt_cls is getattr(fastopt, algorithm.name)


def test_a_variant_subclasses_the_class_whose_kernel_it_shares():
    assert issubclass(fastopt.AdamW, fastopt.Adam)
    assert fastopt.AdamW.__init__ is not fastopt.Adam.__init__
    w = np.zeros(2)
    opt = fastopt.AdamW([w], lr=0.1, weight_decay=0.5)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


def test_a_modified_group_forgets_what_was_derived_from_it():
    group = ParamGroup(lr=0.1)
    group.checked, group.pushed = object(), object()
    group["lr"] = 0.2
    assert group.checked is None and group.pushed is None
    group.checked, group.pushed = object(), object()
    group.update(lr=0.3)
    assert group.checked is None and group.pushed is None
