"""Every ```python block of README.md and of the documentation pages (docs/**/*.md) runs, alone.

A block is a user's first contact with an API, copied into a file and run: it must hold its own
imports and data and finish without error. Each block runs in a fresh interpreter
(``sys.executable``) in an empty temporary folder, so it can neither lean on an earlier block nor
on the repository's files, and it imports the fastopt this test process imported (its folder goes
first on ``PYTHONPATH``: never an unbuilt source tree). One test per block, named
``<file>:<line>``, fails on a non-zero exit and shows the block's output.

Generated pages are skipped (docs/_build, the gallery docs/auto_examples, the performance pages'
docs/performance/_generated and the API pages docs/api, written by the build). ``bash`` and
``text`` blocks are not run. Under CI a block that needs a missing package (torch, DeepSpeed, ...)
fails like any other; elsewhere it is skipped, as tests/conftest.py does for test modules.

Most of a block's time is its interpreter starting and importing torch, so the selected blocks are
started ahead, two at a time (``FASTOPT_DOC_BLOCK_JOBS``), and each test waits for its own.
"""
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fastopt

ROOT = Path(__file__).resolve().parents[2]
#: Folders of generated pages, relative to docs/: their code comes from elsewhere (the examples,
#: the bench data, the docstrings) and is tested there.
GENERATED = ("_build", "auto_examples", "performance/_generated", "api")
#: Seconds a block may take; blocks are meant to be small (a few steps on small arrays).
TIMEOUT = 120
#: Blocks run at once: their time is mostly interpreters starting and importing torch.
JOBS = max(1, int(os.environ.get("FASTOPT_DOC_BLOCK_JOBS", "2")))
#: A fence that opens a Python block: ```python (or ```{code-block} python, MyST's directive form).
_OPENING = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?:python|py|\{code-block\}\s+python|\{code\}\s+python)\s*$")


def markdown_files():
    """README.md and every hand-written page under docs/, sorted (a stable test order)."""
    files = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    docs = ROOT / "docs"
    if docs.is_dir():
        for path in sorted(docs.rglob("*.md")):
            relative = path.relative_to(docs).as_posix()
            if not any(relative == g or relative.startswith(g + "/") for g in GENERATED):
                files.append(path)
    return files


def python_blocks(path):
    """``(line, code)`` for each Python block in ``path``; ``line`` is the opening fence's (1-based).

    MyST directive options (``:caption: ...`` lines right after the fence) are not code.
    """
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _OPENING.match(lines[index].strip())
        if opening is None:
            index += 1
            continue
        fence, start, body = opening.group("fence"), index + 1, []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1                                   # past the closing fence
        while body and re.match(r"^\s*:\w[\w-]*:", body[0]):
            body.pop(0)
        indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        blocks.append((start, "\n".join(b[indent:] for b in body) + "\n"))
    return blocks


def _cases():
    cases = []
    for path in markdown_files():
        name = path.relative_to(ROOT).as_posix()
        for line, code in python_blocks(path):
            cases.append(pytest.param(code, id=f"{name}:{line}"))
    return cases


CASES = _cases()


def test_the_pages_have_blocks_to_run():
    """The search finds blocks (a broken pattern would make every page pass by finding none)."""
    assert CASES, "no ```python block found in README.md or docs/"


def test_blocks_are_found_with_their_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nprint(1)\n```\n\n```bash\nls\n```\n\n"
                    "````{code-block} python\n:caption: x\n  print(2)\n````\n")
    assert python_blocks(page) == [(3, "print(1)\n"), (11, "print(2)\n")]


def run_block(code):
    """Run ``code`` as a script in a fresh interpreter in an empty folder: ``(status, stdout,
    stderr)``, status None when it ran longer than TIMEOUT."""
    package_root = str(Path(fastopt.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.setdefault("OMP_NUM_THREADS", "1")     # small blocks, run two at a time
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "block.py"
        script.write_text(code, encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, str(script)], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as timeout:
            return None, timeout.stdout or "", timeout.stderr or ""
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def started_blocks(request):
    """The selected blocks' runs, started in test order, JOBS at a time."""
    codes = [item.callspec.params["code"] for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")
             and "code" in item.callspec.params]
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        runs = {}
        for code in codes:
            if code not in runs:
                runs[code] = pool.submit(run_block, code)
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.parametrize("code", CASES)
def test_code_block_runs(code, started_blocks, under_ci):
    status, stdout, stderr = started_blocks[code].result()
    if status is None:
        pytest.fail(f"the block ran longer than {TIMEOUT} s:\n{code}\n{stdout}", pytrace=False)
    if status != 0:
        missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", stderr)
        if missing and missing.group(1).split(".")[0] != "fastopt" and not under_ci:
            pytest.skip(f"could not import '{missing.group(1)}' (the block needs it)")
        pytest.fail(f"the block exited with status {status}:\n{code}\n"
                    f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}", pytrace=False)
