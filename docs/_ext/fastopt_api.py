"""The API reference, generated at every build from fastopt's declarations and ``__all__`` lists.

Writes ``api/generated/`` (git-ignored) before the pages are read:

* ``optimizers.md`` -- the overview table (``fastopt.algorithms.docs_table()``)
  and a toctree of the optimizer pages;
* ``<Name>.rst`` for every optimizer class in ``fastopt.__all__`` (bitsandbytes' 8-bit classes
  included): its update formula, arguments (default, accepted values, meaning), state, the class it
  follows, its memory traffic per element, an example for each front end -- run here, at build
  time, with its output shown -- and the autodoc of ``fastopt.<Name>`` and ``fastopt.torch.<Name>``;
* ``fastopt.rst``, ``fastopt.torch.rst``, ``fastopt.minimize.rst``, ``fastopt.lr_scheduler.rst`` --
  the autodoc of every other public name of those modules, listed from their ``__all__``.

Nothing is written per algorithm by hand: a newly declared algorithm gets its page.
"""
import contextlib
import inspect
import io
import os
import re
import textwrap

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Where the pages go, relative to the docs folder.
OUT = os.path.join("api", "generated")
#: Bytes of an element of each dtype the traffic table shows.
DTYPE_BYTES = {"float32": 4, "float64": 8}
#: bitsandbytes' blockwise 8-bit format: a 1-byte code per element and a float32 absmax per block.
BLOCK = 256


def optimizer_names():
    """The optimizer classes of ``fastopt.__all__``, in its order."""
    import fastopt
    return [n for n in fastopt.__all__
            if inspect.isclass(getattr(fastopt, n)) and getattr(getattr(fastopt, n), "algorithm", None) is not None]


def _literal(value):
    return f"``{value!r}``"


def _rst_table(header, rows):
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header] + rows:
        for i, cell in enumerate(row):
            lines = str(cell).splitlines() or [""]
            out.append(("   * - " if i == 0 else "     - ") + lines[0])
            out.extend("       " + line for line in lines[1:])
    return "\n".join(out)


def _heading(text, char):
    return f"{text}\n{char * len(text)}"


def _formula(algorithm):
    """The declared update, with the maximize line every optimizer has (as in the docstring)."""
    body = textwrap.dedent(algorithm.formula).strip("\n")
    maximize = r"g &\leftarrow -g \qquad \text{(if maximize)} \\"
    return ".. math::\n\n" + textwrap.indent(maximize + "\n" + body, "   ")


def _arguments(algorithm):
    from fastopt.algorithms._spec import REQUIRED
    pos, kw = algorithm.signature()
    by_name = algorithm.hyper_by_name
    rows = []
    for name in pos + kw:
        h = by_name.get(name)
        if h is None:
            continue
        default = "required" if h.default is REQUIRED else _literal(h.default)
        accepted = "bool" if h.constraint.kind == "flag" else h.constraint.describe()
        rows.append([f"``{name}``" + (" (keyword-only)" if name in kw else ""), default, accepted, h.doc])
    table = _rst_table(["argument", "default", "accepted values", "meaning"], rows)
    import fastopt._factory as factory
    options = ", ".join(f"``{o}``" for o in factory.OPTIONS)
    text = (table + "\n\n"
            f"Both front ends also take fastopt's keyword-only options ({options}; "
            f"``fastopt.torch.{algorithm.name}`` also ``flat``), described with the class below.")
    if algorithm.torch_extras:
        extras = ", ".join(f"``{k}``" for k in algorithm.torch_extras)
        text += (f" ``fastopt.torch.{algorithm.name}`` accepts torch's {extras} as well, for "
                 "compatibility: they are stored in the param groups and checkpoints and change "
                 "nothing.")
    return text


def _state(algorithm):
    items = ["* ``step`` -- the number of steps taken"] if algorithm.has_step else []
    for s in algorithm.state:
        text = f"* ``{s.name}`` -- {s.doc}"
        if s.when:
            text += f" (only when ``{s.when}``)"
        if s.shape == "scalar":
            text += "; a float32 scalar per param"
        elif s.shaped:
            text += f"; {s.shape_doc}"
        elif s.eager:
            text += "; created with the optimizer"
        items.append(text)
    if not items:
        return "No state per param."
    return "Kept per param (``opt.state``, ``state_dict()``):\n\n" + "\n".join(items)


def _follows(algorithm):
    """The class (or paper) the optimizer follows, in a sentence; the full citation is under
    *Reference*."""
    if algorithm.torch_name:
        return (f"``torch.optim.{algorithm.torch_name}`` (same arguments, defaults, param-group keys, "
                "state names and checkpoint format).")
    if algorithm.bitsandbytes_states is not None:
        return (f"``bitsandbytes.optim.{algorithm.name}`` (its arguments, defaults and checkpoint "
                "format; the differences are under *Reference*).")
    return "the work cited under *Reference*."


def _traffic(algorithm):
    """Bytes moved per element by a step, from ``Algorithm.traffic()`` (elementwise algorithms)."""
    try:
        reads, writes = algorithm.traffic()
    except ValueError as exc:
        return f"Not available: {exc}."
    states = reads - 2
    rows = [[f"{dtype} params and states", str(reads), str(writes), str((reads + writes) * size)]
            for dtype, size in DTYPE_BYTES.items()]
    text = ""
    if algorithm.option_defaults.get("optim_bits") == 8:
        per_state = 1 + 4 / BLOCK
        moved = 3 * 4 + 2 * states * per_state
        rows.insert(0, ["float32 params, 8-bit states (the default)", str(reads), str(writes),
                        f"{moved:.2f}"])
        text = (f"\n\nAn 8-bit state moves one byte per element, plus its float32 absmax per "
                f"{BLOCK}-element block, when read and again when written; params of fewer than "
                "``min_8bit_size`` elements keep float32 states.")
    return ("A step after the first few reads the param, its gradient and each state per element, "
            "and writes back the param and each state (``Algorithm.traffic()``, with the default "
            "arguments):\n\n"
            + _rst_table(["layout", "arrays read", "arrays written", "bytes per element"], rows)
            + text)


def example_sources(algorithm):
    """(NumPy example, torch example) for ``algorithm``: a few steps on a sum of squares, with the
    arguments of the docstring's generated example (``fastopt._factory.example_arguments``: a
    learning rate that moves in a few steps, and a value for each argument whose default its
    constraint refuses); the other arguments keep their defaults."""
    from fastopt._factory import example_arguments
    name = algorithm.name
    extra = "".join(f", {k}={v!r}" for k, v in example_arguments(algorithm).items())
    numpy_code = f"""\
import numpy as np
import fastopt

rng = np.random.default_rng(0)
w = rng.standard_normal((64, 64)).astype(np.float32)   # 4096 elements
print(f"loss before: {{float((w * w).sum()):.2f}}")
opt = fastopt.{name}([w]{extra})
for _ in range(20):
    grad = 2 * w                 # the gradient of sum(w**2)
    opt.step([grad])             # updates w in place
print(f"loss after:  {{float((w * w).sum()):.2f}}")
print("state:", sorted(opt.state.get(0, {{}})))
"""
    torch_code = f"""\
import torch
import fastopt.torch

torch.manual_seed(0)
model = torch.nn.Linear(64, 64, bias=False)
x = torch.randn(256, 64)
opt = fastopt.torch.{name}(model.parameters(){extra})
for step in range(20):
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    if step in (0, 19):
        print(f"step {{step}}: loss {{loss.item():.4f}}")
"""
    return numpy_code, torch_code


def run_example(code, label):
    """Run ``code`` in a fresh namespace and return what it printed; an error stops the build."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"<{label}>", "exec"), {"__name__": "__main__"})
    except Exception as exc:
        raise ExtensionError(f"the generated example of {label} failed: {exc!r}\n{code}") from exc
    return out.getvalue()


def _example(algorithm):
    numpy_code, torch_code = example_sources(algorithm)
    parts = []
    for title, code, label in (("NumPy", numpy_code, f"fastopt.{algorithm.name}"),
                               ("torch", torch_code, f"fastopt.torch.{algorithm.name}")):
        output = run_example(code, label)
        parts.append(f"{title} (``{label}``):\n\n.. code-block:: python\n\n"
                     + textwrap.indent(code, "   ")
                     + "\nOutput (run when these pages were built):\n\n.. code-block:: text\n\n"
                     + textwrap.indent(output, "   "))
    return "\n\n".join(parts)


def optimizer_page(name):
    import fastopt
    algorithm = getattr(fastopt, name).algorithm
    sections = [
        f".. _api-{name}:",
        _heading(f"fastopt.{name}", "="),
        algorithm.title,
        f"**Follows:** {_follows(algorithm)}",
        _heading("Update", "-"),
        "For each param :math:`p` with gradient :math:`g`, at step :math:`t`, elementwise, in the "
        "param's dtype:",
        _formula(algorithm),
        _heading("Arguments", "-"),
        _arguments(algorithm),
        _heading("State", "-"),
        _state(algorithm),
        _heading("Memory traffic", "-"),
        _traffic(algorithm),
        _heading("Example", "-"),
        _example(algorithm),
    ]
    if algorithm.reference:
        sections += [_heading("Reference", "-"), algorithm.reference]
    sections += [_heading("Classes", "-"),
                 f".. autoclass:: fastopt.{name}",
                 f".. autoclass:: fastopt.torch.{name}"]
    return "\n\n".join(sections) + "\n"


def overview_page(names):
    import fastopt.algorithms
    table = fastopt.algorithms.docs_table()
    # the class column links to each class's page
    table = re.sub(r"^\| `fastopt\.(\w+)` \|", lambda m: f"| [`fastopt.{m.group(1)}`](<{m.group(1)}.rst>) |",
                   table, flags=re.MULTILINE)
    toctree = "\n".join(names)
    return f"""# Optimizers

Every optimizer class of `fastopt` (NumPy arrays) has a twin in `fastopt.torch` (a
`torch.optim.Optimizer` subclass) with the same name, arguments and defaults. This table is
made from the declarations in `fastopt/algorithms/` (`fastopt.algorithms.docs_table()`); each
class's page has its update formula, arguments, state, memory traffic and a runnable example.

{table}

```{{toctree}}
:hidden:
:maxdepth: 1

{toctree}
```
"""


def _describe(qualified, obj, documented_at=None):
    """The reST of one public object: its autodoc, or, for an object whose documentation is on
    another page (``documented_at``: its name there), a short entry that points to it (a class
    documented twice is a duplicate object for Sphinx)."""
    if inspect.ismodule(obj):
        return f"See :mod:`{obj.__name__}`."
    if documented_at is not None:
        kind = "class" if inspect.isclass(obj) else "function"
        role = "class" if kind == "class" else "func"
        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = ""
        module, _, name = qualified.rpartition(".")
        return (f".. py:{kind}:: {name}{signature}\n   :module: {module}\n\n"
                f"   The same {kind} as :{role}:`{documented_at}`, documented there.")
    if inspect.isclass(obj):
        # the members it inherits from fastopt's own classes are documented with it (an LR
        # scheduler's ``step``), not those of other libraries' classes (torch.optim.Optimizer's)
        inherited = any(base.__module__.startswith("fastopt") for base in obj.__mro__[1:-1])
        return f".. autoclass:: {qualified}\n   :members:" + ("\n   :inherited-members:" if inherited else "")
    if callable(obj):
        return f".. autofunction:: {qualified}"
    return f".. autodata:: {qualified}"


def module_page(module_name, title, names, intro, documented_elsewhere=None):
    """The page of ``names`` of ``module_name``; ``documented_elsewhere``: ``{id(obj): name}`` of
    objects whose documentation is on another page."""
    import importlib
    module = importlib.import_module(module_name)
    documented_elsewhere = documented_elsewhere or {}
    entries = [_describe(f"{module_name}.{n}", getattr(module, n),
                         documented_elsewhere.get(id(getattr(module, n))))
               for n in names]
    return f"{_heading(title, '=')}\n\n{intro}\n\n" + "\n\n".join(entries) + "\n"


def api_pages():
    """{relative path: text} of every generated page."""
    import fastopt
    import fastopt.lr_scheduler
    import fastopt.minimize
    import fastopt.torch

    optimizers = optimizer_names()
    pages = {"optimizers.md": overview_page(optimizers)}
    for name in optimizers:
        pages[f"{name}.rst"] = optimizer_page(name)
    torch_optimizers = set(optimizers)
    # fastopt re-exports fastopt.minimize's functions and class: documented there
    in_minimize = {id(getattr(fastopt.minimize, n)): f"fastopt.minimize.{n}" for n in fastopt.minimize.__all__}
    pages["fastopt.rst"] = module_page(
        "fastopt", "fastopt", [n for n in fastopt.__all__ if n not in torch_optimizers],
        ".. module:: fastopt\n\nThe NumPy front end's public names but its optimizer classes, which "
        "have :doc:`pages of their own <optimizers>`.", documented_elsewhere=in_minimize)
    pages["fastopt.torch.rst"] = module_page(
        "fastopt.torch", "fastopt.torch",
        [n for n in fastopt.torch.__all__ if n not in torch_optimizers],
        ".. module:: fastopt.torch\n\n" + _first_paragraph(fastopt.torch.__doc__)
        + "\n\nIts optimizer classes are on the :doc:`optimizer pages <optimizers>`.")
    pages["fastopt.minimize.rst"] = module_page(
        "fastopt.minimize", "fastopt.minimize", list(fastopt.minimize.__all__),
        ".. module:: fastopt.minimize\n\n" + _first_paragraph(fastopt.minimize.__doc__))
    pages["fastopt.lr_scheduler.rst"] = module_page(
        "fastopt.lr_scheduler", "fastopt.lr_scheduler", list(fastopt.lr_scheduler.__all__),
        ".. module:: fastopt.lr_scheduler\n\n" + _first_paragraph(fastopt.lr_scheduler.__doc__))
    return pages


def _first_paragraph(doc):
    return inspect.cleandoc(doc or "").split("\n\n")[0]


def write_pages(app):
    out = os.path.join(app.srcdir, OUT)
    os.makedirs(out, exist_ok=True)
    pages = api_pages()
    for stale in set(os.listdir(out)) - set(pages):
        os.remove(os.path.join(out, stale))
    for relative, text in pages.items():
        path = os.path.join(out, relative)
        old = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        if old != text:   # unchanged pages keep their time stamps: an incremental build skips them
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    logger.info(f"fastopt_api: {len(pages)} API pages in {OUT}")


def setup(app):
    app.connect("builder-inited", write_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
