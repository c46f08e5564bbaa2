"""``fastopt bench --check``: targets files are validated, and targets evaluated on measured rows."""
import json

import pytest

from fastopt.benchmarks import targets


def _row(optimizer="adam", size="1e7", n=10**7, threads=1, noise=0.05, **ns):
    return dict(optimizer=optimizer, dtype="float32", size=size, n=n, threads=threads, noise=noise,
                ns_per_elem=ns)


ROWS = {
    "steps": [_row(fastopt=1.0, **{"C-adam": 0.98, "torch-fused": 1.2}),
              _row(threads=2, fastopt=0.6, **{"C-adam": 0.5, "torch-fused": 0.7}),
              _row(size="200 arrays", n=1_507_328, fastopt=1.0, **{"C-adam": 0.99}),
              _row(optimizer="sgd", size="1e4", n=10**4, noise=0.9, fastopt=0.3, numpy=1.5)],
    "clip": [dict(dtype="float32", size="200 arrays", n=1_507_328, threads=1, noise=0.0,
                  us_per_call={"fastopt": 400.0, "torch-foreach": 1300.0})],
    "lbfgs": [dict(n=100, ratio=0.05), dict(n=1000, ratio=0.12), dict(n=100_000, ratio=0.3)],
}


def _write(tmp_path, entries):
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"targets": entries}))
    return path


def test_ratio_targets_per_matching_row(tmp_path):
    path = _write(tmp_path, [{"table": "steps", "optimizer": "adam", "size": "1e7",
                              "ratio": ["fastopt", "C-adam"], "at_most": 1.05, "note": "near C"}])
    result = targets.check(targets.load(path), ROWS)
    assert result == [
        (True, "adam float32 1e7, 1 thr: fastopt / C-adam = 1.02 (target <= 1.05)  (near C)"),
        (False, "adam float32 1e7, 2 thr: fastopt / C-adam = 1.2 (target <= 1.05)  (near C)"),
    ]


def test_overhead_threads_and_element_filters(tmp_path):
    path = _write(tmp_path, [
        {"table": "steps", "size": "200 arrays", "threads": 1, "overhead_us": ["fastopt", "C-adam"],
         "at_most": 10},
        {"table": "steps", "min_elements": 10**5, "max_elements": 2 * 10**6, "ratio": ["fastopt", "C-adam"],
         "at_least": 1.0},
        {"table": "steps", "optimizer": "sgd", "ratio": ["numpy", "fastopt"], "at_least": 5}])
    (over,), (elements,), (sgd,) = ([r] for r in targets.check(targets.load(path), ROWS))
    assert over == (False, "adam float32 200 arrays, 1 thr: (fastopt - C-adam) per step, us = 15.1 "
                           "(target <= 10)")
    assert elements[0] is True and "200 arrays" in elements[1]
    assert sgd == (True, "sgd float32 1e4, 1 thr: numpy / fastopt = 5 (target >= 5)  "
                         "[noisy cell: IQR 90% of median]")


def test_clip_lbfgs_and_unmeasured(tmp_path):
    path = _write(tmp_path, [
        {"table": "clip", "dtype": "float32", "ratio": ["torch-foreach", "fastopt"], "at_least": 3},
        {"table": "lbfgs", "max_n": 1000, "value": "ratio", "at_most": 0.1},
        {"table": "steps", "optimizer": "rmsprop", "ratio": ["torch-fused", "fastopt"], "at_least": 2},
        {"table": "steps", "optimizer": "adam", "size": "200 arrays", "ratio": ["numpy", "fastopt"],
         "at_least": 2}])
    result = targets.check(targets.load(path), ROWS)
    assert result == [
        (True, "clip_grad_norm_ float32 200 arrays, 1 thr: torch-foreach / fastopt = 3.25 (target >= 3)"),
        (True, "L-BFGS n = 100: ratio = 0.05 (target <= 0.1)"),
        (False, "L-BFGS n = 1,000: ratio = 0.12 (target <= 0.1)"),
        (None, "steps [optimizer=rmsprop]: not measured in this run"),
        (None, "adam float32 200 arrays, 1 thr: numpy not measured"),
    ]
    text = targets.format_check(result)
    assert text.splitlines()[0].startswith("  ✓ clip") and "  ✗ L-BFGS n = 1,000" in text
    assert "  ? steps [optimizer=rmsprop]" in text


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "non-empty list 'targets'"),
    ('{"targets": []}', "non-empty list 'targets'"),
    ('{"targets": [3]}', r"targets\[0\] is not an object"),
    ('{"targets": [{"table": "steps", "ratio": ["a", "b"], "at_most": 1, "size_": 3}]}', "unknown keys"),
    ('{"targets": [{"table": "x", "ratio": ["a", "b"], "at_most": 1}]}', "'table' must be one of"),
    ('{"targets": [{"table": "steps", "at_most": 1}]}', "needs exactly one of"),
    ('{"targets": [{"table": "steps", "value": "ratio", "at_most": 1}]}', "'value' is for the lbfgs"),
    ('{"targets": [{"table": "lbfgs", "ratio": ["a", "b"], "at_most": 1}]}', "'value' is for the lbfgs"),
    ('{"targets": [{"table": "steps", "ratio": ["a", "b"]}]}', "one number 'at_most' or 'at_least'"),
    ('{"targets": [{"table": "steps", "ratio": ["a", "b"], "at_most": 1, "at_least": 0}]}', "one number"),
    ('{"targets": [{"table": "steps", "ratio": ["a", "b"], "at_most": true}]}', "one number"),
    ("{not json", "cannot read targets file"),
])
def test_malformed_targets_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        targets.load(path)


def test_missing_targets_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read targets file"):
        targets.load(tmp_path / "nope.json")


def test_a_negative_ratio_is_not_a_met_target(tmp_path):
    """The bounded L-BFGS-B figure is a difference of two runs' times: a disturbed run can make
    it negative, which must not pass an "at most" target."""
    path = _write(tmp_path, [{"table": "lbfgs", "value": "ratio", "at_most": 0.2}])
    rows = {"lbfgs": [dict(n=1000, ratio=-0.8), dict(n=100, ratio=0.1)]}
    (disturbed, fine) = targets.check(targets.load(path), rows)
    assert disturbed[0] is None and "negative" in disturbed[1]
    assert fine[0] is True
