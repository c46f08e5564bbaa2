"""README.md is the front page: it fits on a screen, keeps the blocks `.ci/run` reads, and names
every optimizer the declarations define (the full table, generated from them, is the docs' API
overview)."""
import pathlib
import re

import pytest

import fastopt.algorithms

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.skipif(not README.exists(),
                                reason="README.md is not beside the tests (installed tests)")


def _text():
    return README.read_text(encoding="utf-8")


def test_readme_fits_on_a_screen_of_pages():
    lines = _text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; what does not fit belongs in docs/"


@pytest.mark.parametrize("marker", ["main-command", "test-command", "docs-command"])
def test_readme_keeps_the_command_blocks(marker):
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.+)\n```", _text())
    assert found, f"README.md lost its <!-- {marker} --> block"
    assert found.group(1).startswith("python -m pip install \".[")


def test_readme_names_every_optimizer_of_the_declarations():
    text = _text()
    missing = [a.name for a in fastopt.algorithms.ALGORITHMS if f"`{a.name}`" not in text
               and not re.search(rf"\b{re.escape(a.name)}\b", text)]
    assert not missing, f"README.md does not name {missing}"
