"""The documentation site (docs/): it builds with warnings as errors, documents every public name,
shows each optimizer's formula, runs every example of the gallery, links only to what exists,
loads nothing from the network, and renders in a real browser (headless Chromium).

The site is built once per session, exactly as a developer builds it, from the repository root:
``sphinx-build -W -b html docs <tmpdir>``, with the fastopt this interpreter imports (the
installed one: sphinx-build, a script, does not put the current directory on ``sys.path``).
The build runs every script of examples/ (some train for a while: DeepSpeed, FSDP2, the HF
Trainer). Under CI a missing Sphinx, extension, example requirement or browser fails the tests;
elsewhere they skip.
"""
import functools
import http.server
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest

import docsite   # tests/_support/docsite.py

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
#: What building the site imports: Sphinx and its extensions (the ``docs`` extra), then what the
#: gallery's examples and the generated API pages import (the ``test`` extra).
BUILD_REQUIREMENTS = ("sphinx", "pydata_sphinx_theme", "numpydoc", "sphinx_gallery", "myst_parser",
                      "mathjax", "matplotlib", "torch", "sklearn", "deepspeed", "transformers",
                      "accelerate", "ml_dtypes")
#: Debian's Chromium and its driver (apt-get install chromium chromium-driver).
CHROMIUM = "/usr/bin/chromium"
#: Pages the browser test loads: the landing page, an optimizer's page, the gallery.
BROWSER_PAGES = ("index.html", "api/generated/Adam.html", "auto_examples/index.html")


class Build:
    def __init__(self, process, out):
        self.process = process
        self.out = out

    @property
    def log(self):
        return self.process.stdout + self.process.stderr


def _sphinx_build():
    """The sphinx-build of this interpreter's environment (else the one on PATH)."""
    beside = shutil.which("sphinx-build", path=os.path.dirname(sys.executable))
    return beside or shutil.which("sphinx-build")


def readme_sphinx_arguments():
    """The arguments of the sphinx-build in README.md's docs command (``python -m pip install
    ".[docs]" && sphinx-build ...``), so the site is built here as the README tells a reader to
    build it; the output directory, its last argument, is the caller's to choose."""
    readme = ROOT / "README.md"
    found = re.search(r"<!-- docs-command -->\n```bash\n.*?&& sphinx-build (.+)\n```",
                      readme.read_text(encoding="utf-8"))
    assert found, "README.md lost its <!-- docs-command --> block (pip install ... && sphinx-build ...)"
    return found.group(1).split()[:-1]


def test_readme_docs_command_builds_with_warnings_as_errors():
    assert readme_sphinx_arguments() == ["-W", "-b", "html", "docs"]


@pytest.fixture(scope="session")
def site(tmp_path_factory, under_ci):
    assert (DOCS / "conf.py").is_file(), f"no Sphinx site at {DOCS}"
    for name in BUILD_REQUIREMENTS:
        pytest.importorskip(name)
    sphinx_build = _sphinx_build()
    if sphinx_build is None:
        message = "the sphinx package is installed but its sphinx-build script is not on PATH"
        if under_ci:
            pytest.fail("CI: " + message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("docs-html")
    process = subprocess.run([sphinx_build, *readme_sphinx_arguments(), str(out)], cwd=ROOT,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return Build(process, out)


@pytest.fixture(scope="session")
def built(site):
    """The site, for the tests that look at its pages: they need the build to have succeeded."""
    if site.process.returncode != 0:
        pytest.fail("the docs build failed (see test_build_succeeds_without_warnings)")
    return site.out


def test_build_succeeds_without_warnings(site):
    log = site.log
    assert site.process.returncode == 0, f"sphinx-build -W failed:\n{log[-6000:]}"
    flagged = [line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    assert not flagged, "\n".join(flagged)
    assert (site.out / "index.html").is_file()


def public_names():
    """Every public name the API reference must document, fully qualified."""
    import fastopt
    import fastopt.lr_scheduler
    import fastopt.minimize
    torch_front = pytest.importorskip("fastopt.torch")
    names = {"fastopt.Optimizer"}
    for module in (fastopt, torch_front, fastopt.minimize, fastopt.lr_scheduler):
        names.update(f"{module.__name__}.{n}" for n in module.__all__)
    return names


def optimizer_names():
    import fastopt
    return [n for n in fastopt.__all__ if getattr(getattr(fastopt, n), "algorithm", None) is not None]


def test_every_public_name_is_in_the_inventory(built):
    inventory = docsite.read_inventory(built / "objects.inv")
    missing = sorted(public_names() - set(inventory))
    assert not missing, f"not documented (absent from objects.inv): {missing}"
    for name in optimizer_names():
        for qualified in (f"fastopt.{name}", f"fastopt.torch.{name}"):
            role, uri = inventory[qualified]
            assert role == "py:class" and uri.startswith(f"api/generated/{name}.html"), (qualified, role, uri)


def _math_text(html):
    """The text of the page's display math (what MathJax typesets), whitespace-normalized."""
    import html as html_module
    blocks = re.findall(r'<div class="math[^"]*"[^>]*>(.*?)</div>', html, re.S)
    return [" ".join(html_module.unescape(re.sub(r"<[^>]+>", "", b)).split()) for b in blocks]


def test_each_optimizer_page_shows_its_formula(built):
    import textwrap
    import fastopt
    names = optimizer_names()
    assert {"Adam", "AdamW8bit", "Muon", "LARS8bit"} <= set(names)
    for name in names:
        page = built / "api" / "generated" / f"{name}.html"
        assert page.is_file(), f"no page for fastopt.{name}"
        text = page.read_text(encoding="utf-8")
        formula = " ".join(textwrap.dedent(getattr(fastopt, name).algorithm.formula).split())
        assert any(formula in block for block in _math_text(text)), f"{page}: the declared formula is not shown"
        # the page loads the site's own MathJax, which typesets the math (test_pages_render_in_chromium)
        assert re.search(r'<script[^>]+src="(\.\./)+_static/mathjax/tex-chtml\.js', text), page
        assert f'id="fastopt.{name}"' in text and f'id="fastopt.torch.{name}"' in text, (
            f"{page}: no autodoc of fastopt.{name} and fastopt.torch.{name}")
        assert "Output (run when these pages were built)" in text, f"{page}: no run example"
    assert (built / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert list((built / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def example_scripts():
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.py"))
            if not p.name.startswith("_")}


def test_every_example_ran_with_its_output_and_figures(built):
    examples = example_scripts()
    assert examples, f"no example scripts in {EXAMPLES}"
    problems = docsite.example_problems(str(built), "auto_examples", examples)
    assert not problems, "\n".join(problems)
    gallery = (built / "auto_examples" / "index.html").read_text(encoding="utf-8")
    for stem in examples:
        assert f'href="{stem}.html' in gallery, f"the gallery index does not link {stem}.py's page"


def test_internal_links_and_anchors_exist(built):
    problems = docsite.broken_links(str(built))
    assert not problems, f"{len(problems)} broken links:\n" + "\n".join(problems[:50])


def test_no_page_loads_a_remote_asset(built):
    problems = docsite.remote_assets(str(built))
    assert not problems, "\n".join(problems[:50])


# ------------------------------------------------------------------------------------------------
# The checks above catch what they look for (small sites made to fail them).
# ------------------------------------------------------------------------------------------------

def _write(root, relative, text):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_link_check_catches_missing_pages_files_and_anchors(tmp_path):
    _write(tmp_path, "index.html", '<a href="api/a.html#there">ok</a><a href="#top" id="top">self</a>'
                                   '<a href="https://example.org/x">external</a><img src="_static/i.png">')
    _write(tmp_path, "api/a.html", '<h1 id="there">A</h1><a href="../index.html#top">back</a>')
    _write(tmp_path, "_static/i.png", "png")
    assert docsite.broken_links(str(tmp_path)) == []
    _write(tmp_path, "api/a.html", '<h1 id="elsewhere">A</h1><a href="../missing.html">gone</a>'
                                   '<img src="../_static/none.png"><a href="b.html#x">b</a>')
    problems = "\n".join(docsite.broken_links(str(tmp_path)))
    assert "no id 'there' in api/a.html" in problems
    assert "missing.html does not exist" in problems
    assert "_static/none.png does not exist" in problems
    assert "api/b.html does not exist" in problems


def test_remote_asset_check_catches_scripts_stylesheets_fonts_and_images(tmp_path):
    _write(tmp_path, "index.html", '<a href="https://example.org">a link is fine</a>'
                                   '<script src="_static/local.js"></script>')
    _write(tmp_path, "_static/site.css", "@font-face { src: url(fonts/a.woff2); }")
    assert docsite.remote_assets(str(tmp_path)) == []
    _write(tmp_path, "index.html", '<script src="https://cdn.example.org/mathjax.js"></script>'
                                   '<link rel="stylesheet" href="//fonts.example.org/css">'
                                   '<img src="http://example.org/logo.png">'
                                   '<style>@import "https://example.org/x.css";</style>')
    _write(tmp_path, "_static/site.css", "@font-face { src: url('https://fonts.example.org/a.woff2'); }")
    problems = "\n".join(docsite.remote_assets(str(tmp_path)))
    for url in ("https://cdn.example.org/mathjax.js", "//fonts.example.org/css", "http://example.org/logo.png",
                "https://example.org/x.css", "https://fonts.example.org/a.woff2"):
        assert url in problems


def test_example_check_catches_a_missing_page_output_or_figure(tmp_path):
    examples = {"plots": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n", "prints": "print(1)\n"}
    _write(tmp_path, "auto_examples/plots.html", '<div class="sphx-glr-script-out">1</div>'
                                                 '<img src="../_images/sphx_glr_plots_001.png">')
    _write(tmp_path, "_images/sphx_glr_plots_001.png", "png")
    _write(tmp_path, "auto_examples/prints.html", '<div class="sphx-glr-script-out">1</div>')
    assert docsite.example_problems(str(tmp_path), "auto_examples", examples) == []
    (tmp_path / "_images" / "sphx_glr_plots_001.png").unlink()
    _write(tmp_path, "auto_examples/prints.html", "<p>no output</p>")
    problems = "\n".join(docsite.example_problems(str(tmp_path), "auto_examples",
                                                  dict(examples, absent="print(2)\n")))
    assert "figure ../_images/sphx_glr_plots_001.png does not exist" in problems
    assert "prints.html: no output" in problems
    assert "absent.py: no gallery page" in problems
    _write(tmp_path, "auto_examples/plots.html", '<div class="sphx-glr-script-out">1</div>')
    assert "draws, but the page shows no figure" in "\n".join(
        docsite.example_problems(str(tmp_path), "auto_examples", examples))


# ------------------------------------------------------------------------------------------------
# In a real browser
# ------------------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(built):
    """The built site over HTTP on 127.0.0.1 (file:// pages cannot load MathJax's fonts)."""
    handler = functools.partial(_QuietHandler, directory=str(built))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chromium(under_ci):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        message = f"no browser at {CHROMIUM} (apt-get install chromium chromium-driver)"
        if under_ci:
            pytest.fail("CI: " + message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        yield browser
        browser.close()


def load(browser, base, page):
    """Open ``page`` of the site: ``(problems, the page)``. Problems are console errors, uncaught
    exceptions, failed or refused requests, and any request that leaves the site."""
    context = browser.new_context()
    tab = context.new_page()
    problems = []
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    tab.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    def only_the_site(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            problems.append(f"a request left the site: {route.request.url}")
            route.abort()

    tab.route("**/*", only_the_site)
    tab.goto(base + page, wait_until="load")
    tab.wait_for_load_state("networkidle")
    return problems, tab


#: [math elements, typeset ones, MathJax errors] of a page, once MathJax is done ([n, -1, -1]: it
#: did not load).
MATH_TYPESET = """async () => {
    if (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) {
        return [document.querySelectorAll('div.math, span.math').length, -1, -1];
    }
    await window.MathJax.startup.promise;
    const blocks = [...document.querySelectorAll('div.math, span.math')];
    return [blocks.length, blocks.filter(b => b.querySelector('mjx-container')).length,
            document.querySelectorAll('mjx-merror, [data-mjx-error]').length];
}"""


def test_every_optimizer_formula_typesets_in_chromium(chromium, served):
    """MathJax (the site's own copy) typesets every formula of every optimizer page: no TeX it
    cannot parse (an unknown macro shows as an error box), no math left as source."""
    failures = []
    for name in optimizer_names():
        page = f"api/generated/{name}.html"
        problems, tab = load(chromium, served, page)
        try:
            blocks, rendered, errors = tab.evaluate(MATH_TYPESET)
        finally:
            tab.context.close()
        if not blocks or rendered != blocks or errors or problems:
            failures.append(f"{page}: {rendered} of {blocks} math elements typeset, {errors} MathJax "
                            f"errors; {problems}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("page", BROWSER_PAGES)
def test_pages_render_in_chromium(chromium, served, page):
    problems, tab = load(chromium, served, page)
    try:
        if "api/generated/" in page:
            # MathJax typesets every formula: each display math block holds an mjx-container
            blocks, rendered, errors = tab.evaluate(MATH_TYPESET)
            assert blocks > 0 and rendered == blocks and errors == 0, (
                f"{page}: {rendered} of {blocks} math blocks typeset, {errors} MathJax errors")
        broken = tab.evaluate("""() => [...document.images]
            .filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src)""")
        assert not broken, f"{page}: broken images {broken}"
        assert tab.title(), f"{page}: no title"
    finally:
        tab.context.close()
    assert not problems, f"{page}:\n" + "\n".join(problems)
