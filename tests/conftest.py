"""Shared pytest set-up: no silent skips under CI, the ``slow`` marker's default deselection and
Hypothesis profiles.

* Under CI (environment variable ``CI`` set to ``true``/``1``/``yes``, as CI services and
  ``.ci/run`` set it), a test that calls ``pytest.importorskip`` for a package that is not
  installed -- the references torch and SciPy's private ``scipy.optimize._dcsrch``, or any test
  dependency -- fails instead of skipping, at collection or in the test: a CI run cannot go green
  by skipping its reference comparisons. Elsewhere such tests skip, so a partial install still runs the rest.
  The ``under_ci`` fixture tells a test which of the two applies.
  A test file that imports a missing package at module level (``import torch``) gets the same
  treatment: a collection error for a ``ModuleNotFoundError`` of a package other than fastopt is
  a skip of that file outside CI and a failure under CI, never a bare collection error.
* Tests marked ``slow`` are skipped unless ``FASTOPT_SLOW=1`` is set or ``-m`` names ``slow``
  (``pytest -m slow`` runs only them).
* ``HYPOTHESIS_PROFILE`` selects a Hypothesis profile: ``ci`` (default: few examples, fast, and
  derandomized, so a failure in CI fails again on every rerun and on every machine) or ``long``
  (>= 10,000 random examples per fuzz test, for a separate job; a failure prints the
  ``@reproduce_failure`` blob that replays it).
"""
import os
import re

import pytest

UNDER_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
#: The start of pytest.importorskip's skip reason for a module that cannot be imported.
IMPORT_SKIP = "could not import "

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


def _ci_failure(reason):
    return (f"CI: a package the tests need is missing ({reason}). Under CI a missing reference "
            "or test dependency fails the run instead of skipping; install it (.ci/run installs "
            "torch==2.13.0, `pip install .[test]` the others).")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if UNDER_CI and report.skipped and call.excinfo is not None \
            and call.excinfo.errisinstance(pytest.skip.Exception) \
            and str(call.excinfo.value).startswith(IMPORT_SKIP):
        report.outcome = "failed"
        report.longrepr = _ci_failure(str(call.excinfo.value))


#: How pytest reports a test module that could not import a package.
_MODULE_NOT_FOUND = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


def _missing_package(report):
    """The package whose absence made a test module fail to import, or None.

    Only a ``ModuleNotFoundError`` for a module outside fastopt counts (the last one the report
    shows: the innermost): a broken fastopt import is a real error, never a skip.
    """
    found = _MODULE_NOT_FOUND.findall(str(report.longrepr))
    if not found or found[-1].split(".")[0] == "fastopt":
        return None
    return found[-1]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    if UNDER_CI and report.skipped and isinstance(report.longrepr, tuple) \
            and str(report.longrepr[2]).startswith("Skipped: " + IMPORT_SKIP):
        report.outcome = "failed"
        report.longrepr = _ci_failure(str(report.longrepr[2])[len("Skipped: "):])
    elif report.failed and isinstance(collector, pytest.Module):
        missing = _missing_package(report)
        if missing is not None:
            reason = f"{IMPORT_SKIP}'{missing}' (imported at module level by {collector.path.name})"
            if UNDER_CI:
                report.longrepr = _ci_failure(reason)
            else:
                report.outcome = "skipped"
                report.longrepr = (str(collector.path), 0, "Skipped: " + reason)


@pytest.fixture(scope="session")
def under_ci():
    """True when the run is a CI run (see the module docstring)."""
    return UNDER_CI


@pytest.fixture
def thread_settings():
    """Restore fastopt's thread count and parallel threshold after a test that changes them."""
    from fastopt._backend import kernels
    import fastopt
    minimum = kernels.get_parallel_min_size()
    yield kernels
    fastopt.set_num_threads(0)
    kernels.set_parallel_min_size(minimum)


@pytest.fixture
def torch_flags_settable():
    """torch's own test utilities, which the optim_db tests import into the same session, forbid
    setting ``torch.backends`` flags outside their context manager; Lightning's Trainer sets them
    (the Lightning test files use this fixture on every test)."""
    import torch
    allow = getattr(torch.backends, "__allow_nonbracketed_mutation")
    with allow():
        yield
