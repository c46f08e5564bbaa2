"""The landing page's directives: ``fastopt-cards`` and ``optional-toctree``.

Pages are written by several people at once, so the landing page names some that may not exist
yet. Sphinx warns (an error under ``-W``) for a toctree entry that names a missing page or a glob
that matches none, and that warning cannot be suppressed; these directives leave such entries out.

``optional-toctree`` is Sphinx's ``toctree`` (same options; its entries are globs) without the
entries that match no page; with none left, it is nothing.

``fastopt-cards`` is a grid of cards, one per part of the site.

Each line of the directive's content is ``pattern | title | text``. ``pattern`` is a document name
or a glob of them (``coming-from/*``): the card's title links to the first match (a folder's
``index`` first), and a list under the text to every other, by its title, so the cards follow the
pages as they are added. Pages are written by several people at once: a card
whose pattern matches no page yet is left out.
"""
import fnmatch

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.directives.other import TocTree
from sphinx.util.matching import patfilter


class OptionalTocTree(TocTree):
    def run(self):
        env = self.state.document.settings.env
        self.options["glob"] = True
        kept = StringList()
        for source, offset, entry in self.content.xitems():
            if entry.strip() and patfilter(env.found_docs, entry.strip()):
                kept.append(entry, source, offset)
        if not kept:
            return []
        self.content = kept
        return super().run()


class CardsDirective(Directive):
    has_content = True

    def run(self):
        env = self.state.document.settings.env
        env.metadata[env.docname]["has-cards"] = True
        grid = nodes.container(classes=["fastopt-cards"])
        for number, line in enumerate(self.content):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3:
                raise self.error(f"fastopt-cards line {number + 1}: expected 'pattern | title | text', "
                                 f"got {line!r}")
            pattern, title, text = parts
            docs = sorted(d for d in env.found_docs if fnmatch.fnmatchcase(d, pattern))
            # an index page of a folder first
            docs.sort(key=lambda d: not d.endswith("/index"))
            if not docs:
                continue
            card = nodes.container(classes=["fastopt-card"])
            heading = nodes.paragraph(classes=["fastopt-card-title"])
            heading += self._link(env, docs[0], title)
            card += heading
            card += nodes.paragraph(text=text)
            if len(docs) > 1:
                items = nodes.bullet_list()
                for doc in docs[1:] if docs[0].endswith("/index") else docs:
                    item = nodes.list_item()
                    para = nodes.paragraph()
                    para += self._link(env, doc, None)
                    item += para
                    items += item
                card += items
            grid += card
        return [grid]

    def _link(self, env, docname, title):
        ref = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + docname,
                                    refdoc=env.docname, refexplicit=title is not None,
                                    refwarn=True)
        ref += nodes.inline("", title or docname)
        return ref


def _reread_pages_with_cards(app, env, added, changed, removed):
    """A page added or removed changes the cards: read the pages that have them again."""
    if not (added or removed):
        return []
    return [doc for doc in env.found_docs if env.metadata.get(doc, {}).get("has-cards")]


def setup(app):
    app.add_directive("fastopt-cards", CardsDirective)
    app.add_directive("optional-toctree", OptionalTocTree)
    app.connect("env-get-outdated", _reread_pages_with_cards)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
