"""The benchmark's algorithms, hyperparameters and memory traffic come from the declarations."""
import numpy as np
import pytest

from fastopt.algorithms import ALGORITHMS, BY_NAME
from fastopt.benchmarks import cases, settings


def test_every_declared_algorithm_is_benchmarked():
    """Elementwise ones with float32 states in the steps table, in declaration order (bitsandbytes'
    8-bit classes in the 8-bit table); the others on matrices."""
    elementwise = [a.name.lower() for a in ALGORITHMS
                   if a.driver is None and a.bitsandbytes_states is None]
    assert list(settings.ALGORITHMS) == elementwise
    assert {a.name.lower() for a in ALGORITHMS if a.driver is not None} == set(settings.MATRIX_CASES)
    for name, bench in settings.ALGORITHMS.items():
        declared = BY_NAME[bench.cls]
        assert bench.cls.lower() == name
        assert declared.driver is None


@pytest.mark.parametrize("name", sorted(settings.ALGORITHMS))
def test_hyperparameters_are_the_declared_defaults(name):
    """Every number the constructor takes, at its declared default unless settings.SETTINGS departs
    from it; flags and choices are left to the constructors (the plain algorithm)."""
    bench = settings.ALGORITHMS[name]
    declared = BY_NAME[bench.cls]
    overrides = settings.SETTINGS.get(declared.name, {})
    numbers = [h for h in declared.hyperparameters
               if h.constraint.kind not in ("flag", "choice") and h.name not in declared.fixed]
    assert list(bench.hyper) == [h.name for h in numbers]
    for h in numbers:
        assert bench.hyper[h.name] == overrides.get(h.name, h.default), h.name


def test_departures_from_the_defaults_are_real_hyperparameters():
    for cls, overrides in settings.SETTINGS.items():
        declared = BY_NAME[cls]
        for key, value in overrides.items():
            assert key in declared.hyper_by_name
            assert value != declared.hyper_by_name[key].default


def test_traffic_follows_the_settings():
    """SGD keeps a momentum buffer only with momentum, which the benchmark sets."""
    sgd = BY_NAME["SGD"]
    assert sgd.traffic() == (2, 1)
    assert sgd.traffic(dict(momentum=0.9)) == (3, 2)
    assert settings.ALGORITHMS["sgd"].reads == 3
    assert BY_NAME["Adam"].traffic(dict(amsgrad=True)) == (5, 4)
    assert BY_NAME["RMSprop"].traffic(dict(momentum=0.5, centered=True)) == (5, 4)


@pytest.mark.parametrize("name", [a.name for a in ALGORITHMS if a.driver is not None])
def test_a_step_that_is_not_elementwise_has_no_traffic_per_element(name):
    with pytest.raises(ValueError, match="not elementwise"):
        BY_NAME[name].traffic()


def test_a_new_declaration_is_benchmarked_as_declared():
    """What the benchmark makes of a declaration it has never seen (here a variant of Adam)."""
    declared = BY_NAME["Adam"].variant("AdamLike", "A variant.", defaults={"lr": 0.25, "eps": 1e-6})
    bench = settings.Algorithm.from_declaration(declared, {"weight_decay": 0.5})
    assert bench.cls == "AdamLike"
    assert dict(bench.hyper) == dict(lr=0.25, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.5)
    assert (bench.reads, bench.writes) == (4, 3)
    assert bench.bytes_per_element(8) == 56


@pytest.mark.parametrize("name", sorted(settings.ALGORITHMS))
def test_bench_optimizer_uses_the_settings(name):
    params, _ = cases.make_data(10, np.float32)
    opt = cases.make_fastopt_optimizer(name, params)
    group = opt.param_groups[0]
    for key, value in settings.ALGORITHMS[name].hyper.items():
        assert group[key] == value, key
