"""Checks of a built documentation site (a folder of HTML pages), for tests/tooling/test_docs.py.

Each check returns a list of problems (empty: none), so a test can show them all at once and
the checks themselves can be tested on small pages made to fail them.
"""
import html.parser
import os
import posixpath
import re
import urllib.parse
import zlib

#: Schemes of links that leave the site (not checked for existence; never allowed for assets).
REMOTE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//)")
#: Link schemes that are not files at all.
NOT_FILES = ("mailto:", "javascript:", "data:", "tel:")
#: The tag attributes that load something into the page (an asset) and those that only link.
ASSET_ATTRIBUTES = {("script", "src"), ("img", "src"), ("source", "src"), ("iframe", "src"),
                    ("video", "src"), ("audio", "src"), ("embed", "src"), ("object", "data"),
                    ("img", "srcset"), ("source", "srcset")}
#: ``<link rel=...>`` values that load something (stylesheets, fonts, icons, preloads).
LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut",
                "apple-touch-icon", "manifest", "preconnect", "dns-prefetch"}
#: A CSS ``url(...)`` or ``@import "..."``.
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""")


class Page(html.parser.HTMLParser):
    """One parsed HTML page: its ids and its references ``(tag, attribute, value, rel)``."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.references = []
        self.images = []
        self.styles = []
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        rel = (attrs.get("rel") or "").lower()
        for attribute in ("href", "src", "data", "srcset"):
            value = attrs.get(attribute)
            if value is None:
                continue
            if attribute == "srcset":
                for candidate in value.split(","):
                    if candidate.strip():
                        self.references.append((tag, attribute, candidate.split()[0], rel))
            else:
                self.references.append((tag, attribute, value, rel))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "style":
            self._in_style = True
        if attrs.get("style"):
            self.styles.append(attrs["style"])

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def html_pages(site):
    """Paths (relative, with ``/``) of every HTML page under ``site`` (not the files of its
    ``_static`` folder: assets, such as the theme's template sources, not pages)."""
    found = []
    for folder, dirs, files in os.walk(site):
        if os.path.abspath(folder) == os.path.abspath(site) and "_static" in dirs:
            dirs.remove("_static")
        for name in files:
            if name.endswith(".html"):
                found.append(os.path.relpath(os.path.join(folder, name), site).replace(os.sep, "/"))
    return sorted(found)


def parse(site, page, cache=None):
    if cache is not None and page in cache:
        return cache[page]
    with open(os.path.join(site, page), encoding="utf-8") as f:
        parsed = Page(f.read())
    if cache is not None:
        cache[page] = parsed
    return parsed


def _is_asset(tag, attribute, rel):
    if tag == "link":
        return bool(set(rel.split()) & LOADING_RELS)
    return (tag, attribute) in ASSET_ATTRIBUTES


def broken_links(site):
    """Every relative ``href``/``src`` of every page that points to no file, and every
    ``#fragment`` that names no id (or ``name``) in the page it points to."""
    problems = []
    cache = {}
    for page in html_pages(site):
        for tag, attribute, value, _ in parse(site, page, cache).references:
            value = value.strip()
            if not value or REMOTE.match(value) or value.startswith(NOT_FILES):
                if value.startswith("file:"):
                    problems.append(f"{page}: <{tag} {attribute}={value!r}>: a file: URL")
                continue
            parts = urllib.parse.urlsplit(value)
            path = urllib.parse.unquote(parts.path)
            if path.startswith("/"):
                problems.append(f"{page}: <{tag} {attribute}={value!r}>: an absolute path")
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path)) if path else page
            full = os.path.join(site, *target.split("/"))
            if target.startswith("../"):
                problems.append(f"{page}: <{tag} {attribute}={value!r}>: outside the site")
                continue
            if os.path.isdir(full):
                full = os.path.join(full, "index.html")
                target = posixpath.join(target, "index.html")
            if not os.path.isfile(full):
                problems.append(f"{page}: <{tag} {attribute}={value!r}>: {target} does not exist")
                continue
            fragment = urllib.parse.unquote(parts.fragment)
            if fragment and target.endswith(".html") and fragment not in parse(site, target, cache).ids:
                problems.append(f"{page}: <{tag} {attribute}={value!r}>: no id {fragment!r} in {target}")
    return problems


def remote_assets(site):
    """Every script, stylesheet, font, image or other asset that a page (or a stylesheet of the
    site) would load from outside the site."""
    problems = []
    for page in html_pages(site):
        parsed = parse(site, page)
        for tag, attribute, value, rel in parsed.references:
            if REMOTE.match(value.strip()) and _is_asset(tag, attribute, rel) \
                    and not value.strip().startswith(NOT_FILES):
                problems.append(f"{page}: <{tag} {attribute}={value!r}> loads a remote asset")
        for style in parsed.styles:
            problems += [f"{page}: its CSS loads {url!r}" for url in _css_urls(style) if REMOTE.match(url)]
    for folder, _, files in os.walk(site):
        for name in files:
            if name.endswith(".css"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                relative = os.path.relpath(path, site)
                problems += [f"{relative} loads {url!r}" for url in _css_urls(text)
                             if REMOTE.match(url) and not url.startswith("data:")]
    return problems


def _css_urls(text):
    return [a or b for a, b in CSS_URL.findall(text)]


def read_inventory(path):
    """``{name: (domain:role, uri)}`` of a Sphinx ``objects.inv`` (version 2)."""
    with open(path, "rb") as f:
        header = [f.readline() for _ in range(4)]
        if not header[0].startswith(b"# Sphinx inventory version 2"):
            raise ValueError(f"{path}: not a Sphinx inventory version 2")
        body = zlib.decompress(f.read()).decode("utf-8")
    entries = {}
    line_re = re.compile(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S+)\s+(.*)")
    for line in body.splitlines():
        match = line_re.match(line.rstrip())
        if match:
            name, role, _, uri, _ = match.groups()
            entries.setdefault(name, (role, uri))
    return entries


def example_problems(site, gallery, examples):
    """For each example script (``{stem: source}``): its gallery page exists, shows the output
    the script printed, and, when the script draws with matplotlib, each figure as an existing
    image."""
    problems = []
    for stem, source in sorted(examples.items()):
        page = f"{gallery}/{stem}.html"
        if not os.path.isfile(os.path.join(site, gallery, f"{stem}.html")):
            problems.append(f"{stem}.py: no gallery page {page}")
            continue
        with open(os.path.join(site, gallery, f"{stem}.html"), encoding="utf-8") as f:
            text = f.read()
        if "sphx-glr-script-out" not in text:
            problems.append(f"{page}: no output of the script")
        if draws(source):
            parsed = Page(text)
            figures = [src for src in parsed.images if f"sphx_glr_{stem}_" in src]
            if not figures:
                problems.append(f"{page}: the script draws, but the page shows no figure")
            for src in figures:
                path = posixpath.normpath(posixpath.join(gallery, urllib.parse.unquote(src)))
                if not os.path.isfile(os.path.join(site, *path.split("/"))):
                    problems.append(f"{page}: figure {src} does not exist")
    return problems


def draws(source):
    """Whether an example script draws with matplotlib (imports pyplot and shows or draws a
    figure)."""
    return bool(re.search(r"^\s*(import matplotlib|from matplotlib)", source, re.MULTILINE))
