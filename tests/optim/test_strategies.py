"""tests/_support/_strategies.py against fastopt's checks: its valid values pass, its invalid ones are
refused with the exception it expects, for every declared hyperparameter."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _strategies import accepts_shape, invalid_examples, invalid_values, param_groups, valid_values
from fastopt._factory import CLASSES
from fastopt._validation import check_constraint
from fastopt.algorithms import ALGORITHMS

HYPERS = [(a.name, h) for a in ALGORITHMS for h in a.hyperparameters]
IDS = [f"{name}-{h.name}" for name, h in HYPERS]


@pytest.mark.parametrize("name, h", HYPERS, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_valid_values_are_accepted(name, h, data):
    check_constraint(h.name, data.draw(valid_values(h.constraint, h.default)), h.constraint)


@pytest.mark.parametrize("name, h", HYPERS, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_invalid_values_are_refused(name, h, data):
    value, exc = data.draw(invalid_values(h.constraint, h.default))
    with pytest.raises(exc):
        check_constraint(h.name, value, h.constraint)


@pytest.mark.parametrize("name, h", HYPERS, ids=IDS)
def test_every_constraint_has_invalid_examples(name, h):
    examples = invalid_examples(h.constraint, h.default)
    assert examples and all(exc in (TypeError, ValueError) for _, exc in examples)


@pytest.mark.parametrize("name", [a.name for a in ALGORITHMS])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_param_groups_construct_an_optimizer(name, data):
    """Whole groups (rules across hyperparameters included) are taken by the class."""
    cls = CLASSES[name]
    shape = next(s for s in [(3,), (2, 3)] if accepts_shape(cls.algorithm, s))
    group = data.draw(param_groups(cls.algorithm))
    opt = cls([np.zeros(shape)], **group)
    for key, value in group.items():
        assert opt.param_groups[0][key] == value, key
