"""The one class factory of both front ends: the public optimizer classes (``fastopt.Adam``, ...)
and, through :func:`make_init` and :func:`build_classes`, ``fastopt.torch``'s, from their
declarations, with fastopt's own options (:data:`OPTIONS`) written once.

Each NumPy class is a thin :class:`fastopt.Optimizer` subclass: a constructor with the declared signature
and defaults (generated as source, like ``dataclasses`` does, so ``help()`` and ``inspect`` show the
real arguments), a NumPy-style docstring assembled from the declaration and the shared fragments
below, and the declaration itself as ``cls.algorithm``. Everything else (checks, state layout,
``state_dict``) is read from the declaration by the base class.
"""
import textwrap

from . import _validation
from .algorithms import ALGORITHMS
from .algorithms._spec import REQUIRED
from .optimizer import Optimizer

# Shared documentation fragments, written once for every optimizer.
PARAMS_DOC = """\
params : iterable of ndarray, or iterable of dict
    Arrays to optimize (float32, float64, float16 or ``ml_dtypes.bfloat16``, C-contiguous,
    writeable; updated in place), or param groups: dicts with a ``"params"`` list and
    hyperparameters that override the defaults."""

MAXIMIZE_DOC = "Maximize the objective instead of minimizing it (the gradient is negated)."

#: fastopt's own keyword-only options of every optimizer (not hyperparameters), with their defaults.
OPTIONS = {"skip_nonfinite": False, "master_weights": False, "state_dtype": None,
           "stochastic_rounding": False, "seed": None, "optim_bits": 32, "min_8bit_size": 4096}

#: fastopt.torch's own options (a NumPy loop flattens its arrays with :func:`fastopt.flatten`).
TORCH_OPTIONS = {"flat": False}

TORCH_OPTIONS_DOC = """\
flat : bool, default False
    Move the params of each param group and dtype into one flat buffer, and their gradients into
    one flat gradient buffer (:func:`fastopt.torch.flatten_`): a step then updates each buffer with
    one call, with no per-tensor work. ``zero_grad()`` zeroes the gradient buffer and keeps the
    views (``set_to_none=True`` only when asked explicitly). Params must require grad and not share
    memory; DTensor params, 8-bit states and Adafactor/Muon/LAMB/LARS (updates that read each param
    as a whole) are refused."""

OPTIONS_DOC = """\
skip_nonfinite : bool, default False
    Check every gradient for NaN/Inf before each step and skip a step that holds one, leaving params
    and state bit-identical (see :class:`fastopt.Optimizer`); by default non-finite values propagate
    as in torch.optim.
master_weights : bool, default False
    For float16/bfloat16 params: keep a float32 master copy (state ``master``) that the step updates
    as a float32 run would, writing the param as the master rounded to nearest.
state_dtype : None, "float32" or "bfloat16", default None
    With ``master_weights``: the moments' dtype (float32 by default).
stochastic_rounding : bool, default False
    For bfloat16 params without master weights: round stores stochastically (``seed``); with
    ``optim_bits=8``, the codes of 8-bit states too (unbiased: a value takes the farther of its two
    codes with probability equal to its distance from the nearer one over their spacing). float16
    params are refused.
seed : int, optional
    The stochastic-rounding seed.
optim_bits : {32, 8}, default 32
    8: keep the states of params of ``min_8bit_size`` elements or more in 8 bits, in bitsandbytes'
    blockwise format (a uint8 code per element, ``<state>_absmax``: a float32 per block of 256
    elements; dynamic maps, signed for first moments and unsigned for second ones); each step
    dequantizes, updates and requantizes them block by block, in one pass over memory. For float32,
    bfloat16 and float16 params.
min_8bit_size : int, default 4096
    With ``optim_bits=8``: params with fewer elements keep their states as without it."""


def options_doc(algorithm):
    """:data:`OPTIONS_DOC` with the defaults ``algorithm`` gives them (bitsandbytes' 8-bit classes
    keep states in 8 bits by default)."""
    text = OPTIONS_DOC
    if algorithm.option_defaults.get("optim_bits", 32) == 8:
        text = text.replace("optim_bits : {32, 8}, default 32", "optim_bits : {8, 32}, default 8")
    return text


def parameters_doc(algorithm, names):
    """The ``Parameters`` entries of ``names`` (hyperparameters of ``algorithm``), NumPy style."""
    by_name = algorithm.hyper_by_name
    out = []
    for name in names:
        h = by_name.get(name)
        if h is None:
            continue
        c = h.constraint
        kind = {"flag": "bool", "pair": "(float, float)", "integer": "int",
                "tuple": "(" + ", ".join("float or None" if i.optional else "float"
                                         for i in c.items) + ")",
                "choice": " or ".join(sorted({type(v).__name__.replace("NoneType", "None")
                                              for v in c.values}))}.get(c.kind, "float")
        if c.optional:
            kind += " or None"
        doc = h.doc if h.name != "maximize" else MAXIMIZE_DOC
        if c.kind not in ("flag",):
            doc += f" Must be {c.describe()}."
        default = "" if h.default is REQUIRED else f", default {h.default!r}"
        out.append(f"{name} : {kind}{default}\n"
                   + textwrap.indent(textwrap.fill(doc, 92), "    "))
    return "\n".join(out)


def state_doc(algorithm):
    parts = ["``step``"] if algorithm.has_step else []
    for s in algorithm.state:
        text = f"``{s.name}`` ({s.doc}"
        if s.when:
            text += f"; when ``{s.when}``"
        if s.shape == "scalar":
            text += "; a float32 scalar, as torch keeps it"
        elif s.shaped:
            text += f"; {s.shape_doc}"
        parts.append(text + ")")
    return "State per param: " + ", ".join(parts) + "." if parts else "No state per param."


#: The learning rate of the generated examples (the declared defaults, 1e-4 for Lion, barely move
#: the small quadratic in a few steps).
EXAMPLE_LR = 0.1

#: Values an example tries, in order, for a hyperparameter whose default its constraint refuses
#: (LARS's momentum): the first one the constraint accepts is used.
EXAMPLE_CANDIDATES = {"real": (0.9, 0.5, 1.0), "integer": (1, 5), "flag": (True,)}


def example_arguments(algorithm):
    """The constructor arguments of the generated example: ``lr`` (:data:`EXAMPLE_LR`), and a
    valid value for every hyperparameter without a usable default (required, or refused by its
    own constraint, as LARS's ``momentum``), taken from :data:`EXAMPLE_CANDIDATES`."""
    arguments = {"lr": EXAMPLE_LR}
    pos, kw = algorithm.signature()
    by_name = algorithm.hyper_by_name
    for name in pos + kw:
        h = by_name.get(name)
        if h is None or name in arguments or name in algorithm.fixed:
            continue
        try:
            _validation.check_constraint(name, h.default, h.constraint)
            continue
        except (TypeError, ValueError):
            pass
        for value in EXAMPLE_CANDIDATES.get(h.constraint.kind, ()):
            try:
                _validation.check_constraint(name, value, h.constraint)
            except (TypeError, ValueError):
                continue
            arguments[name] = value
            break
        else:
            raise ValueError(f"{algorithm.name}.{name}: no example value fits {h.constraint.describe()}; "
                             "add one to EXAMPLE_CANDIDATES")
    return arguments


def examples_doc(algorithm, torch=False):
    """The ``Examples`` section: a few steps on :math:`\\tfrac12 \\lVert p \\rVert^2` from the
    same start with every algorithm, showing the loss going down (a doctest:
    tests/tooling/test_docstring_examples.py runs it). ``torch``: ``fastopt.torch``'s class, with
    autograd."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in example_arguments(algorithm).items())
    intro = textwrap.fill("A few steps on :math:`f(p) = \\tfrac12 \\lVert p \\rVert^2`, whose gradient "
                          "is :math:`p`, from :math:`f = 7.125` (a matrix: every algorithm takes one):", 96)
    if torch:
        code = f"""\
>>> import torch
>>> import fastopt.torch
>>> p = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
>>> opt = fastopt.torch.{algorithm.name}([p], {arguments})
>>> losses = []
>>> for _ in range(5):
...     opt.zero_grad()
...     loss = 0.5 * (p * p).sum()
...     loss.backward()
...     opt.step()
...     losses.append(loss.item())
>>> print(losses[0], losses[-1] < losses[0])
7.125 True"""
    else:
        code = f"""\
>>> import numpy as np
>>> import fastopt
>>> p = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
>>> opt = fastopt.{algorithm.name}([p], {arguments})
>>> loss = lambda p: 0.5 * float((p * p).sum())
>>> before = loss(p)
>>> for _ in range(5):
...     _ = opt.step([p.copy()])        # the gradient of f at p; p is updated in place
>>> print(before, loss(p) < before)
7.125 True"""
    return "Examples\n--------\n" + intro + "\n\n" + code


def class_doc(algorithm, torch=False):
    """The class docstring: summary, update formula, parameters, state, reference, examples
    (``torch``: of ``fastopt.torch``'s class)."""
    pos, kw = algorithm.signature()
    formula = textwrap.indent(textwrap.dedent(algorithm.formula).strip("\n"), "    ")
    maximize = r"    g &\leftarrow -g \qquad \text{(if maximize)} \\" + "\n"
    sections = [
        algorithm.title,
        "For each param :math:`p` with gradient :math:`g`, at step :math:`t` (elementwise, in the "
        "param's dtype, in torch's order of operations):",
        ".. math::\n\n" + maximize + formula,
        "Parameters\n----------\n" + PARAMS_DOC + "\n" + parameters_doc(algorithm, pos + kw)
        + "\n" + options_doc(algorithm),
        textwrap.fill(state_doc(algorithm), 96),
    ]
    if algorithm.reference:
        sections.append("References\n----------\n" + algorithm.reference)
    sections.append(examples_doc(algorithm, torch))
    return "\n\n".join(sections) + "\n"


def make_init(algorithm, root, torch=False):
    """``__init__`` with the declared signature of ``algorithm`` for ``root``'s front end (NumPy,
    or ``torch=True``: torch's signature, with its extra keys such as ``foreach``), built as source
    as dataclasses does, so ``help()`` and ``inspect`` show the real arguments. It calls
    ``root.__init__(self, params, defaults, **options)`` with the group defaults by name (the
    fixed ones of a variant added) and fastopt's :data:`OPTIONS`."""
    pos, kw = algorithm.signature(torch=torch)
    defaults = {h.name: h.default for h in algorithm.hyperparameters}
    if torch:
        defaults.update(algorithm.torch_extras)
        group_names = [n for n in pos + kw if n not in OPTIONS and n not in TORCH_OPTIONS]
    else:
        group_names = [h.name for h in algorithm.hyperparameters if h.name not in algorithm.fixed]
    options = dict(OPTIONS, **TORCH_OPTIONS) if torch else dict(OPTIONS)
    options.update((k, v) for k, v in algorithm.option_defaults.items() if k in options)
    defaults.update(options)
    args = ["self", "params"] + [f"{n}=_d_{n}" for n in pos]
    args += ["*"] + [f"{n}=_d_{n}" for n in kw + list(options)]
    group = ", ".join(f"{n!r}: {n}" for n in group_names)
    options = ", ".join(f"{n}={n}" for n in options)
    source = (f"def __init__({', '.join(args)}):\n"
              f"    _root.__init__(self, params, {{{group}, **_fixed}}, {options})\n")
    namespace = {f"_d_{n}": v for n, v in defaults.items()}
    namespace.update(_root=root, _fixed=dict(algorithm.fixed))
    exec(source, namespace)   # our own declarations, not user input
    init = namespace["__init__"]
    init.__qualname__ = f"{algorithm.name}.__init__"
    return init


def build_classes(make_class, root, algorithm_of):
    """``{name: class}`` for every declared algorithm, made by ``make_class(algorithm, parent)``.

    A variant (AdamW) subclasses the class of the algorithm whose kernel it shares, as in torch;
    the others subclass ``root``. ``algorithm_of(cls)`` reads a made class's declaration.
    """
    classes = {}
    for algorithm in ALGORITHMS:
        parent = next((c for c in classes.values() if algorithm_of(c).kernel == algorithm.kernel), root)
        classes[algorithm.name] = make_class(algorithm, parent)
    return classes


def make_numpy_class(algorithm, base=Optimizer):
    """The NumPy-API optimizer class of ``algorithm``."""
    return type(algorithm.name, (base,), {
        "__init__": make_init(algorithm, Optimizer),
        "__doc__": class_doc(algorithm),
        "__module__": "fastopt",
        "__qualname__": algorithm.name,
        "algorithm": algorithm,
    })


#: ``{name: class}`` for every declared algorithm: the NumPy front end.
CLASSES = build_classes(make_numpy_class, Optimizer, lambda cls: cls.algorithm)
