"""tests/_support/_strategies.py's param shapes and groups come from the declarations without
rejecting most draws: Hypothesis' ``filter_too_much`` health check must not depend on which
examples a run draws (they change with a test's node id and with the modules loaded)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _strategies import accepted_ranks, accepts_shape, param_groups, param_shapes
from fastopt.algorithms import ALGORITHMS, BY_NAME

NAMES = [a.name for a in ALGORITHMS]


def test_accepted_ranks_follow_param_rules():
    assert accepted_ranks(BY_NAME["Muon"]) == [2]
    assert accepted_ranks(BY_NAME["Adam"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])     # filter_too_much stays on
@given(data=st.data())
def test_param_shapes_are_accepted_and_drawn_without_filtering(name, data):
    algorithm = BY_NAME[name]
    shape = data.draw(param_shapes(algorithm, max_rank=3, max_side=4, long_vectors=(100, 3000)))
    assert accepts_shape(algorithm, shape)
    assert len(shape) in accepted_ranks(algorithm)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_param_groups_are_drawn_without_filtering_too_much(name, data):
    data.draw(param_groups(BY_NAME[name]))
