"""Test inputs made from the declarations: valid and invalid hyperparameter values, from each
hyperparameter's ``Constraint`` (``fastopt/algorithms/_spec.py``), so that a newly declared
algorithm is fuzzed and bad-input-tested with nothing added here.

* :func:`valid_values` -- a Hypothesis strategy of values a constraint accepts;
* :func:`invalid_values` -- a Hypothesis strategy of ``(value, exception type)`` it refuses, over
  the examples of :func:`invalid_examples` (a list, for ``pytest.mark.parametrize``);
* :func:`param_groups` -- a strategy of whole param groups of an algorithm (every hyperparameter,
  the algorithm's rules across them holding);
* :func:`accepts_shape` -- whether an algorithm takes params of a shape (Muon: matrices only);
* :func:`param_shapes` -- a strategy of param shapes an algorithm takes, drawn among the ranks
  its ``param_rules`` accept (:func:`accepted_ranks`) rather than filtered out of all shapes, so
  that no Hypothesis health check depends on which examples a run happens to draw.

The values stay within a window of sensible magnitudes around the default (an unbounded side
reaches ``max(1, 2 |default|)``): a float beyond it is as valid, but says nothing more about the
kernels and overflows the state within a few steps.
"""
import math

from hypothesis import strategies as st

from fastopt._validation import check_constraint

#: A value of no constraint's type.
_NOT_A_NUMBER = "0.1"


def _window(constraint, default):
    scale = max(1.0, 2.0 * abs(default)) if isinstance(default, (int, float)) else 1.0
    low = -scale if constraint.low is None else constraint.low
    high = scale if constraint.high is None else constraint.high
    if constraint.low is not None and constraint.high is None:
        high = max(high, low + scale)
    if constraint.high is not None and constraint.low is None:
        low = min(low, high - scale)
    return low, high


def _real_accepts(constraint, value):
    try:
        check_constraint("x", value, constraint)
    except (TypeError, ValueError):
        return False
    return True


def valid_values(constraint, default=None):
    """A strategy of values ``constraint`` accepts: its boundaries, zero and ``default`` (where
    they are valid) often, and anything in between."""
    kind = constraint.kind
    if kind == "flag":
        out = st.booleans()
    elif kind == "choice":
        out = st.sampled_from(constraint.values)
    elif kind == "pair":
        first, second = default if default is not None else (None, None)
        out = st.tuples(valid_values(constraint.item, first), valid_values(constraint.item, second))
    elif kind == "tuple":
        defaults = default if default is not None else (None,) * len(constraint.items)
        out = st.tuples(*(valid_values(c, d) for c, d in zip(constraint.items, defaults)))
    elif kind == "integer":
        low = 0 if constraint.low is None else constraint.low
        high = constraint.high if constraint.high is not None else low + 10
        high = min(high, max(low + 10, 2 * (default or 0)))     # Muon's ns_steps: a few, not 99
        out = st.integers(min(low, high), high)
        if default is not None:
            out = st.just(default) | out
    elif kind == "real":
        low, high = _window(constraint, default)
        special = [v for v in (default, 0.0, constraint.low, constraint.high)
                   if isinstance(v, (int, float)) and _real_accepts(constraint, v)]
        out = st.floats(low, high, exclude_min=not constraint.low_inclusive and constraint.low == low,
                        exclude_max=not constraint.high_inclusive and constraint.high == high,
                        allow_nan=False, allow_infinity=False)
        if special:
            out = st.sampled_from(list(dict.fromkeys(special))) | out
    else:
        raise AssertionError(f"no strategy for constraints of kind {kind!r}: add one to tests/_support/_strategies.py")
    if constraint.optional:
        out = st.none() | out
    return out


def _a_valid_value(constraint, default=None):
    """One value ``constraint`` accepts (``default`` if given), to pair with an invalid one."""
    if default is not None:
        return default
    kind = constraint.kind
    if kind == "flag":
        return False
    if kind == "choice":
        return constraint.values[0]
    if kind == "pair":
        return (_a_valid_value(constraint.item),) * 2
    if kind == "tuple":
        return tuple(_a_valid_value(c) for c in constraint.items)
    if kind == "integer":
        return 0 if constraint.low is None else constraint.low
    low, high = _window(constraint, None)
    return next(v for v in (0.0, low, high, (low + high) / 2) if _real_accepts(constraint, v))


def invalid_examples(constraint, default=None):
    """``[(value, exception type)]`` that ``constraint`` refuses, as fastopt (and torch) refuse them:
    TypeError for a value of the wrong type (a bool for a number, a number for a flag, a pair of
    the wrong length), ValueError for a value of the right type out of range or non-finite."""
    kind = constraint.kind
    out = []
    if kind == "choice":
        out += [(v, ValueError) for v in ("no such choice", 0.5, None) if v not in constraint.values]
    elif not constraint.optional:
        out.append((None, TypeError))
    if kind == "choice":
        pass
    elif kind == "flag":
        out += [(1, TypeError), (0, TypeError), ("yes", TypeError)]
    elif kind in ("pair", "tuple"):
        items = (constraint.item,) * 2 if kind == "pair" else constraint.items
        good = default if default is not None else tuple(_a_valid_value(c) for c in items)
        out += [(good[0], TypeError), (tuple(good) + (good[0],), TypeError), ("ab", TypeError),
                (tuple(good[:-1]), TypeError)]
        for i, item in enumerate(items):
            for bad, exc in invalid_examples(item, good[i]):
                out.append((tuple(good[:i]) + (bad,) + tuple(good[i + 1:]), exc))
    elif kind == "integer":
        out += [(1.5, TypeError), (True, TypeError), (_NOT_A_NUMBER, TypeError)]
        if constraint.low is not None:
            out.append((constraint.low - 1, ValueError))
        if constraint.high is not None:
            out.append((constraint.high + 1, ValueError))
    elif kind == "real":
        out += [(math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError),
                (_NOT_A_NUMBER, TypeError), (True, TypeError)]
        for bound, inclusive, outward in ((constraint.low, constraint.low_inclusive, -math.inf),
                                          (constraint.high, constraint.high_inclusive, math.inf)):
            if bound is None:
                continue
            out.append((bound + math.copysign(max(1.0, abs(bound)), outward), ValueError))
            out.append((float(bound) if not inclusive else math.nextafter(bound, outward), ValueError))
    else:
        raise AssertionError(f"no invalid values for constraints of kind {kind!r}: add them to "
                             "tests/_support/_strategies.py")
    return out


def invalid_values(constraint, default=None):
    """A strategy of ``(value, exception type)`` that ``constraint`` refuses: the examples of
    :func:`invalid_examples`, and for a bounded real any float beyond a bound."""
    out = st.sampled_from(invalid_examples(constraint, default))
    if constraint.kind == "real" and not constraint.optional:
        beyond = []
        if constraint.low is not None:
            beyond.append(st.floats(max_value=constraint.low, exclude_max=constraint.low_inclusive,
                                    allow_nan=False, allow_infinity=False))
        if constraint.high is not None:
            beyond.append(st.floats(min_value=constraint.high, exclude_min=constraint.high_inclusive,
                                    allow_nan=False, allow_infinity=False))
        if beyond:
            out = out | st.one_of(beyond).map(lambda v: (v, ValueError))
    return out


def checked_fields(algorithm, group):
    """The struct field values of a group's hyperparameters, checked as the class checks them (the
    values an algorithm's ``Rule`` tests)."""
    values = {}
    for h in algorithm.hyperparameters:
        value = check_constraint(h.name, group.get(h.name, algorithm.fixed.get(h.name, h.default)),
                                 h.constraint)
        values.update(zip(h.fields, value) if len(h.fields) > 1 else [(h.fields[0], value)])
    return values


def param_groups(algorithm):
    """A strategy of param-group hyperparameters of ``algorithm`` (a dict with every hyperparameter
    the constructor takes; ``fixed`` ones left out), its rules holding."""
    hypers = {h.name: valid_values(h.constraint, h.default) for h in algorithm.hyperparameters
              if h.name not in algorithm.fixed}
    return st.fixed_dictionaries(hypers).filter(
        lambda group: all(rule.test(checked_fields(algorithm, group)) for rule in algorithm.rules))


def accepts_shape(algorithm, shape):
    """Whether ``algorithm`` takes a param of ``shape`` (its ``param_rules``)."""
    return all(rule.test(tuple(shape)) for rule in algorithm.param_rules)


def accepted_ranks(algorithm, max_rank=3):
    """The ranks ``0..max_rank`` of params ``algorithm`` takes: its ``param_rules`` tested on a
    shape of each rank with sides of 2 (Muon: ``[2]``)."""
    ranks = [rank for rank in range(max_rank + 1) if accepts_shape(algorithm, (2,) * rank)]
    if not ranks:
        raise AssertionError(f"{algorithm.name} takes params of no rank up to {max_rank}")
    return ranks


def param_shapes(algorithm, max_rank=3, max_side=4, long_vectors=None):
    """A strategy of param shapes ``algorithm`` takes: a rank among :func:`accepted_ranks`, then
    each side in ``0..max_side``; with ``long_vectors=(low, high)`` also vectors of ``low..high``
    elements (if rank 1 is accepted), which reach past a SIMD body into its scalar tail.

    The rank is drawn from the accepted ones, not filtered: a filter rejecting most draws (3 of 4
    ranks for Muon) trips Hypothesis' ``filter_too_much`` health check depending on the examples
    drawn. A rule that looks at the sides as well as the rank still filters what it refuses."""
    ranks = accepted_ranks(algorithm, max_rank)
    out = st.sampled_from(ranks).flatmap(
        lambda rank: st.lists(st.integers(0, max_side), min_size=rank, max_size=rank).map(tuple))
    if long_vectors is not None and 1 in ranks:
        out = st.one_of(out, st.integers(*long_vectors).map(lambda n: (n,)))
    return out.filter(lambda shape: accepts_shape(algorithm, shape))


def require_reference(name):
    """Fail, saying what is missing, unless tests/_support/reference.py has a reference step of algorithm
    ``name`` (its independent NumPy implementation, the oracle of the tests) and its defaults."""
    import pytest
    from reference import DEFAULTS, STEP_FUNCTIONS
    missing = [what for what, table in (("a step function in STEP_FUNCTIONS", STEP_FUNCTIONS),
                                        ("its defaults in DEFAULTS", DEFAULTS)) if name not in table]
    if missing:
        pytest.fail(f"tests/_support/reference.py lacks {' and '.join(missing)} for {name}: every declared "
                    "algorithm needs an independent NumPy reference to be tested against",
                    pytrace=False)
