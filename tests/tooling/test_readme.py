"""README.md states what the code does: its optimizers table is the one the declarations generate."""
import pathlib
import re

import pytest

import fastopt.algorithms

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests (installed tests)")
def test_readme_optimizers_table_is_generated_from_the_declarations():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- optimizers-table:.*?-->\n(.*?)\n<!-- /optimizers-table -->", text, re.S)
    assert found, "README.md lost its optimizers-table markers"
    assert found.group(1) == fastopt.algorithms.docs_table().rstrip("\n"), (
        "README.md's optimizers table is stale: paste fastopt.algorithms.docs_table() between the "
        "markers")
