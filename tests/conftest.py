"""Shared pytest set-up: the ``slow`` marker's default deselection and Hypothesis profiles.

* Tests marked ``slow`` are skipped unless ``FASTOPT_SLOW=1`` is set or ``-m`` names ``slow``
  (``pytest -m slow`` runs only them).
* ``HYPOTHESIS_PROFILE`` selects a Hypothesis profile: ``ci`` (default: few examples, fast, and
  derandomized, so a failure in CI fails again on every rerun and on every machine) or ``long``
  (>= 10,000 random examples per fuzz test, for a separate job; a failure prints the
  ``@reproduce_failure`` blob that replays it).
"""
import os

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:   # hypothesis is optional; the fuzz tests skip without it
    settings = None

if settings is not None:
    settings.register_profile("ci", max_examples=34, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=10_000, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FASTOPT_SLOW", "0") in ("1", "true", "yes"):
        return
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set FASTOPT_SLOW=1 or run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
