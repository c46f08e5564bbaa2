"""The optimizer algorithms, one declaration per file (see ``_spec.py`` for what a declaration holds).

Every module of this package other than ``_spec`` declares its algorithms in a tuple
``ALGORITHMS``; they are collected here in file-name order. Adding an algorithm is adding a file:
the build generates its compiled loops, and ``fastopt``/``fastopt.torch`` build its classes.

This package imports nothing from the rest of fastopt: the build loads it by path.
"""
import importlib
import os

from ._spec import REQUIRED, Algorithm

_HERE = os.path.dirname(os.path.abspath(__file__))


def _collect():
    found = []
    for filename in sorted(os.listdir(_HERE)):
        stem, ext = os.path.splitext(filename)
        if ext != ".py" or stem.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{stem}")
        declared = getattr(module, "ALGORITHMS", None)
        if not declared or not all(isinstance(a, Algorithm) for a in declared):
            raise TypeError(f"{module.__name__} must declare ALGORITHMS, a tuple of Algorithm")
        found.extend(declared)
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two algorithms share a name: {names}")
    return tuple(found)


#: Every declared algorithm, in file-name order.
ALGORITHMS = _collect()
#: By class name.
BY_NAME = {a.name: a for a in ALGORITHMS}
#: The distinct compiled kernels (a variant such as AdamW shares its parent's), in table order.
KERNELS = tuple({a.kernel: a for a in reversed(ALGORITHMS)}[k]
                for k in dict.fromkeys(a.kernel for a in ALGORITHMS))


def docs_table():
    """The table of optimizers (markdown) of the docs' API overview, made from the declarations."""
    rows = ["| class | follows | arguments (defaults) | state per param |",
            "|---|---|---|---|"]
    for a in ALGORITHMS:
        pos, kw = a.signature()
        by_name = a.hyper_by_name
        def fmt(n):
            if n in by_name and by_name[n].default is REQUIRED:
                return n
            return f"{n}={by_name[n].default!r}" if n in by_name else f"{n}=False"
        args = ", ".join([fmt(n) for n in pos] + (["*"] if kw else []) + [fmt(n) for n in kw])
        follows = f"`torch.optim.{a.torch_name}`" if a.torch_name else a.reference
        state = ", ".join(["`step`"] if a.has_step else [])
        names = ", ".join(f"`{s.name}`" + (f" (if {s.when})" if s.when else "") for s in a.state)
        state = ", ".join(x for x in (state, names) if x) or "none"
        rows.append(f"| `fastopt.{a.name}` | {follows} | `{args}` | {state} |")
    return "\n".join(rows)
