"""The parts an algorithm declaration is made of.

An optimizer in fastopt is *declared*, not hand-wired: one :class:`Algorithm` per file in this
package names its hyperparameters (with defaults and constraints), its state, the scalars it
computes once per array and step, and its per-element update as a few lines of Cython. From that
one declaration

* the build (``build_tools/codegen.py``) generates the compiled code: a typed struct of the
  hyperparameters (filled from a dict *by field name*), a per-array prologue, and one straight-line
  element loop per combination of the algorithm's switches and per dtype;
* fastopt builds the NumPy class (``fastopt.Adam``), its docstring, its group checks and its
  ``state_dict`` layout, and the ``torch.optim.Optimizer`` subclass of ``fastopt.torch``
  (both classes made by ``fastopt/_factory.py``).

This module must stay importable on its own (the build loads this package by path, before
anything is compiled): it imports nothing from fastopt outside ``fastopt.algorithms``.

Code fragments
--------------
``Algorithm.per_array`` runs once per array and step, in double precision, before the element loop.
It sees every hyperparameter field by name (``lr``, ``beta1``, ...), ``step`` (this step's count,
1 on the first step, as a double) and ``first_use`` (1 while the algorithm's lazily created state
has not been written for this array), and reads and assigns the algorithm's scalar states (float32,
as torch keeps them). Every name it assigns is a double local; those listed in ``scalars`` are handed
to the element loop. It may call C's ``sqrt``, ``pow``, ``exp``, ``log`` and ``fabs`` and Cython's
``min``/``max``.

``Algorithm.update`` is the body of the element loop. ``p`` and ``g`` are the param element and the
gradient element (already negated when maximizing and scaled by a clipping coefficient, if any),
each state it names is a local of its own name, and the loop stores ``p`` and every state the body
assigns back after the body. Hyperparameter fields and ``scalars`` it names are cast once to the
loop's compute dtype before the loop, so arithmetic rounds as torch's does for a tensor of that
dtype. The body is a Tempita template: switch values are its variables (``{{if decay == "l2"}}``),
and ``{{T}}`` is the loop's C type; once rendered, each line is ``name = expression`` in arithmetic
that C reads alike (the loops are generated as C: see ``build_tools/codegen.py``'s ``c_statements``).
``per_array`` is a Tempita template as well (``{{T}}`` is the C type of the dtype it prepares).
Helpers available in the body: ``_sqrt``, ``_lerp_low``/``_lerp_high`` (torch.lerp's two forms),
``_max_nan`` (torch.maximum: NaN wins), ``_abs``, ``_sign`` (-1, 0 or 1, NaN for NaN),
``_sign0`` (torch.sign on CPU: -1, 0 or 1, 0 for NaN), ``_where(cond, a, b)`` (torch.where; a
clamp as torch's is two of them, NaN passing through), ``_bf16`` (the nearest bfloat16, ties to
even, as torch's ``.bfloat16()``; a double goes through float first, as in torch).

Algorithms that are not elementwise
-----------------------------------
Most algorithms are one element loop. Some also need work across elements (Adafactor's row and
column statistics and its update norm, Muon's matrix products); they declare

* ``driver``: the name of a compiled bucket class (a subclass of the generic
  ``fastopt._core._bucket.ParamBucket`` in ``fastopt/_core/_driver_<kernel>.pxi``) that runs the
  step: it gathers and validates the gradients and runs the prologue like the generic bucket, does
  the non-elementwise work itself, and runs the elementwise work through the generated loops;
* ``phases``: the names of the element loops it runs. The update body is rendered once per phase
  (the Tempita variable ``phase``); the prologue's variant selects the first phase's loop and the
  driver adds a phase's index (``<KERNEL>_PHASE_<NAME>`` in the generated ``_drivers.pxi``). The
  driver decides what each pointer of a loop points to (a phase may write a scratch buffer through
  ``p``, say); a loop loads only the states its body names and stores only those it assigns;
* ``driver_scalars``: per-array scalars the driver fills in (they depend on its reductions) before
  it runs a loop that uses them; ``per_array`` computes the others;
* states whose ``shape`` is a function of the param's shape (``State(shape=...)``), which the
  driver lays out.
"""
import keyword
import re

__all__ = ["Constraint", "Hyper", "State", "Switch", "Rule", "Algorithm", "REQUIRED",
           "real", "flag", "pair", "integer", "choice", "tuple_of"]


class _Required:
    """The default of a hyperparameter that has none (bitsandbytes' LARS ``lr``), as torch.optim's
    ``required``: every param group must give a value (the constructor's argument, or the group's
    own), else the group's check raises TypeError naming it."""

    __slots__ = ()

    def __repr__(self):
        return "REQUIRED"


#: A ``Hyper`` default meaning "no default": every param group must be given a value.
REQUIRED = _Required()


# --------------------------------------------------------------------------------------------
# Constraints: data that fastopt._validation.check_constraint interprets.
# --------------------------------------------------------------------------------------------

class Constraint:
    """What values a hyperparameter takes. Pure data; ``fastopt._validation`` applies it.

    ``kind`` is ``"real"`` (a finite float within ``low``/``high``), ``"flag"`` (True/False),
    ``"pair"`` (two reals, each checked by ``item``), ``"integer"``, ``"tuple"`` (one value per
    constraint in ``items``) or ``"choice"`` (one of ``values``; its struct field holds the index).
    ``optional`` also accepts None (packed into the struct as NaN).
    """

    __slots__ = ("kind", "low", "high", "low_inclusive", "high_inclusive", "item", "optional",
                 "items", "values")

    def __init__(self, kind, low=None, high=None, low_inclusive=True, high_inclusive=True,
                 item=None, optional=False, items=(), values=()):
        self.kind = kind
        self.low = low
        self.high = high
        self.low_inclusive = low_inclusive
        self.high_inclusive = high_inclusive
        self.item = item
        self.optional = optional
        self.items = tuple(items)
        self.values = tuple(values)

    def describe(self):
        """A short description for docs: ``">= 0"``, ``"in [0, 1)"``, ..."""
        text = self._describe()
        return text + " or None" if self.optional else text

    def _describe(self):
        if self.kind == "flag":
            return "bool"
        if self.kind == "pair":
            return f"pair, each {self.item.describe()}"
        if self.kind == "tuple":
            return "(" + ", ".join(item.describe() for item in self.items) + ")"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(v) for v in self.values)
        lo = None if self.low is None else ("[" if self.low_inclusive else "(") + f"{self.low:g}"
        hi = None if self.high is None else f"{self.high:g}" + ("]" if self.high_inclusive else ")")
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return (">= " if self.low_inclusive else "> ") + f"{self.low:g}"
        if hi:
            return ("<= " if self.high_inclusive else "< ") + f"{self.high:g}"
        return "any finite number"


def real(low=None, high=None, *, low_inclusive=True, high_inclusive=True, optional=False):
    """A finite real number within the given bounds (or None, if ``optional``)."""
    return Constraint("real", low, high, low_inclusive, high_inclusive, optional=optional)


def integer(low=None, high=None):
    """An integer within the given bounds (inclusive)."""
    return Constraint("integer", low, high)


def tuple_of(*items):
    """A tuple with one value per constraint (Adafactor's ``eps``, Muon's ``ns_coefficients``)."""
    return Constraint("tuple", items=items)


def choice(*values):
    """One of ``values`` (compared with ``==``; None may be one); the struct field holds its index."""
    return Constraint("choice", values=values)


def flag():
    """True or False."""
    return Constraint("flag")


def pair(item):
    """Two values, each satisfying ``item`` (torch's ``betas``, ``etas``, ...)."""
    return Constraint("pair", item=item)


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------

class Hyper:
    """A hyperparameter: a key of every param group.

    Parameters
    ----------
    name : str
        The group key and keyword argument (torch's name).
    default
        The constructor's default, or :data:`REQUIRED` for an argument without one (every param
        group must then be given a value, as for torch.optim's ``required``).
    constraint : Constraint
    doc : str
        One sentence for the class docstring (NumPy style, may hold ``:math:``).
    fields : tuple of str, optional
        The C struct fields the checked value fills (default ``(name,)``); a pair fills two, e.g.
        ``betas`` fills ``("beta1", "beta2")``; a tuple fills one per item. Flags become ``bint``
        fields, choices ``int`` fields (the index of the value), the rest ``double``.
    """

    __slots__ = ("name", "default", "constraint", "doc", "fields")

    def __init__(self, name, default, constraint, doc, fields=None):
        self.name = name
        self.default = default
        self.constraint = constraint
        self.doc = doc
        self.fields = tuple(fields) if fields is not None else (name,)
        expected = {"pair": 2, "tuple": len(constraint.items)}.get(constraint.kind, 1)
        if len(self.fields) != expected:
            raise ValueError(f"hyperparameter {name!r} needs {expected} field name(s)")

    @property
    def c_type(self):
        return {"flag": "bint", "choice": "int"}.get(self.constraint.kind, "double")


class State:
    """A state buffer kept per param.

    Parameters
    ----------
    name : str
        Its key in ``opt.state[i]`` and in ``state_dict()`` (torch's name).
    doc : str
        What it holds (for the docstring).
    when : str, optional
        A boolean expression over hyperparameter fields (e.g. ``"amsgrad"``, ``"momentum != 0"``),
        valid in Python and in Cython: the state exists only when it holds. The element loop is
        specialized on it like a switch of the same name (``{{if has_max_exp_avg_sq}}``).
    init : float or str
        Initial value, or the name of the hyperparameter field holding it.
    shape : {"param", "scalar"} or callable
        Elementwise state (the param's shape, one arena element per param element), a scalar
        per param (float32, as torch's scalar tensors; read and written by ``per_array``), or a
        function of the param's shape giving the state's shape, or None where the param has no
        such state (Adafactor's ``row_var``: ``shape[:-1] + (1,)`` for params of 2 or more dims).
        Only an algorithm with a ``driver`` keeps such states (its bucket lays them out).
    shape_doc : str
        For a callable ``shape``: what it is, in words (for the docs).
    eager : bool
        Created at construction, so it is part of the state before the first step (Adagrad).
    lazy : bool
        Its first write replaces instead of updating (SGD's momentum buffer): ``first_use`` is 1 in
        ``per_array`` until a step in which it was active has run on the array.
    code_map : {"signed", "unsigned"}
        The dynamic map of its 8-bit codes when the optimizer keeps states in 8 bits
        (``optim_bits=8``): ``"unsigned"`` for a state that is never negative and whose values
        bitsandbytes keeps in its second state (Adam's ``exp_avg_sq``), else ``"signed"`` (its first
        state, even where the values are >= 0: RMSprop's ``square_avg``), so checkpoints
        interchange with bitsandbytes.
    """

    __slots__ = ("name", "doc", "when", "init", "shape", "eager", "lazy", "shape_doc", "code_map")

    def __init__(self, name, doc, when=None, init=0.0, shape="param", eager=False, lazy=False,
                 shape_doc="", code_map="signed"):
        if shape not in ("param", "scalar") and not callable(shape):
            raise ValueError(f"state {name!r}: shape must be 'param', 'scalar' or a function")
        if code_map not in ("signed", "unsigned"):
            raise ValueError(f"state {name!r}: code_map must be 'signed' or 'unsigned'")
        self.code_map = code_map
        self.name = name
        self.doc = doc
        self.when = when
        self.init = init
        self.shape = shape
        self.eager = eager
        self.lazy = lazy
        self.shape_doc = shape_doc

    @property
    def switch_name(self):
        return "has_" + self.name

    @property
    def shaped(self):
        """Whether the state's shape is a function of the param's shape."""
        return callable(self.shape)

    def shape_for(self, param_shape):
        """This state's shape for a param of ``param_shape`` (None: the param has no such state)."""
        if self.shape == "param":
            return tuple(param_shape)
        if self.shape == "scalar":
            return ()
        shape = self.shape(tuple(param_shape))
        return None if shape is None else tuple(shape)


class Switch:
    """A choice the element loop is specialized on (one straight-line loop per value).

    Parameters
    ----------
    name : str
        The Tempita variable the update code tests.
    choose : str
        A Cython expression evaluated per array in the prologue (it sees what ``per_array`` sees,
        after ``per_array`` has run, and ``{{T}}``): the index of the value to use (a bool for
        two-valued switches).
    values : tuple
        The switch's values as the update code sees them (default ``(False, True)``).
    """

    __slots__ = ("name", "choose", "values")

    def __init__(self, name, choose, values=(False, True)):
        self.name = name
        self.choose = choose
        self.values = tuple(values)


class Rule:
    """A check across hyperparameters: ``test(values)`` must hold, else ``error(message)``.

    ``values`` maps field names to checked values.
    """

    __slots__ = ("test", "message", "error")

    def __init__(self, test, message, error=ValueError):
        self.test = test
        self.message = message
        self.error = error


_IDENT = re.compile(r"[A-Za-z_]\w*")


def identifiers(code):
    """The identifiers a code fragment names (to declare only the locals it uses)."""
    return set(_IDENT.findall(re.sub(r"#.*", "", code)))


def assigned_names(code):
    """Names assigned at the start of a line (``name = ...``) in a code fragment, in order."""
    names = []
    for line in code.splitlines():
        m = re.match(r"\s*([A-Za-z_]\w*)\s*=[^=]", line)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def _signature_names(spec):
    """``"a, b, *, c"`` -> (["a", "b"], ["c"])."""
    positional, keyword_only, star = [], [], False
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            continue
        if part == "*":
            star = True
        elif star:
            keyword_only.append(part)
        else:
            positional.append(part)
    return positional, keyword_only


class Algorithm:
    """One optimizer algorithm, declared.

    Parameters
    ----------
    name : str
        The class name (``fastopt.<name>``, ``fastopt.torch.<name>``).
    title : str
        One line for the docstring's summary ("Adam, as ``torch.optim.Adam``").
    formula : str
        The update as reStructuredText math (the ``.. math::`` body).
    hyperparameters : list of Hyper
        In the order of the NumPy constructor; ``maximize`` is added to every algorithm.
    state : list of State
        In ``state_dict`` order.
    per_array, update : str
        The code fragments (see the module docstring).
    scalars : tuple of str
        The names ``per_array`` computes that the element loop uses.
    switches : list of Switch
    temporaries : tuple of str
        Extra locals of the element loop (of its dtype).
    weight : int
        Relative cost per element for the thread threshold: 1 for a few additions and
        multiplications, 2 with one division or square root, 3 with more.
    has_step : bool
        ``"step"`` is part of the per-param state (all but SGD).
    numpy_signature, torch_signature : str
        The constructors' arguments after ``params``: ``"lr, betas, *, maximize"``. Names are
        hyperparameters, torch-only flags (``torch_extras``) or, for NumPy, ``skip_nonfinite``.
    torch_extras : dict
        torch's implementation flags and their defaults (``foreach``, ``capturable``, ...): kept in
        the groups of ``fastopt.torch`` classes for checkpoint compatibility; they change nothing
        except ``capturable``/``differentiable``, which must stay False.
    torch_load_defaults : dict
        Where torch fills a key missing from an older checkpoint with another value than the
        constructor's default (its ``__setstate__``; SGD's ``fused`` becomes False).
    fixed : dict
        Group values a variant pins (AdamW: ``decoupled_weight_decay=True``); not constructor
        arguments, but part of every group.
    rules : list of Rule
    torch_name : str or None
        The ``torch.optim`` class this one follows (None for Lion).
    reference : str
        Citation for the docstring.
    kernel : str
        The name of the compiled kernel (a variant like AdamW shares its parent's).
    driver : str or None
        The compiled bucket class that runs the step, for an algorithm that is not elementwise
        only (see the module docstring); None: the generic bucket.
    phases : tuple of str
        The element loops a driver runs (the update body is rendered once per phase).
    driver_scalars : tuple of str
        Those ``scalars`` the driver computes (``per_array`` computes the rest).
    param_rules : list of Rule
        Checks on each param's shape (``test(shape)``), at construction: Muon takes matrices only.
    torch_rejects_complex : bool
        torch's class raises RuntimeError("<name> does not support complex parameters") for complex
        params (fastopt.torch raises that too, at construction; other algorithms raise TypeError,
        as for any other unsupported dtype).
    constants : list of Hyper
        Struct fields of the update rule that are neither arguments nor group keys: their value is
        the Hyper's default, which a variant may pin otherwise (``variant(constants=...)``), as
        bitsandbytes' Adam decays the param after the update rather than before.
    option_defaults : dict
        Defaults of fastopt's options (``fastopt._factory.OPTIONS``) that differ for this class:
        bitsandbytes' 8-bit classes keep their states in 8 bits (``{"optim_bits": 8}``).
    bitsandbytes_states : tuple of tuple of str, optional
        For a class that follows a bitsandbytes optimizer: which states its checkpoints hold as
        bitsandbytes' ``state1`` and ``state2`` (AdEMAMix's ``state1`` stacks two), so that
        ``state_dict()`` and ``load_state_dict`` speak bitsandbytes' format (fastopt.torch).
    bitsandbytes_groups : dict, optional
        The group keys bitsandbytes' checkpoints hold that this class's do not: a tuple of this
        class's keys that it packs (SGD's ``betas`` is ``(momentum, dampening)``), or a constant;
        and this class's keys that bitsandbytes' lack, with the value its rule implies (Adagrad's
        ``lr_decay``: 0).
    """

    def __init__(self, name, title, formula, hyperparameters, state, per_array, update, scalars,
                 switches=(), temporaries=(), weight=1, has_step=True, numpy_signature="",
                 torch_signature="", torch_extras=None, fixed=None, rules=(), torch_name=None,
                 reference="", kernel=None, torch_load_defaults=None, driver=None,
                 phases=(), driver_scalars=(), param_rules=(), torch_rejects_complex=False,
                 constants=(), option_defaults=None, bitsandbytes_states=None,
                 bitsandbytes_groups=None):
        self.name = name
        self.title = title
        self.formula = formula
        maximize = Hyper("maximize", False, flag(),
                         "Maximize the objective instead of minimizing it (the gradient is negated).")
        self.hyperparameters = list(hyperparameters)
        if not any(h.name == "maximize" for h in self.hyperparameters):
            self.hyperparameters.append(maximize)
        self.state = list(state)
        self.per_array = per_array
        self.update = update
        self.scalars = tuple(scalars)
        self.switches = list(switches)
        self.temporaries = tuple(temporaries)
        self.weight = int(weight)
        self.has_step = has_step
        self.numpy_signature = numpy_signature
        self.torch_signature = torch_signature
        self.torch_extras = dict(torch_extras or {})
        self.torch_load_defaults = dict(torch_load_defaults or {})
        self.fixed = dict(fixed or {})
        self.rules = list(rules)
        self.torch_name = torch_name
        self.reference = reference
        self.kernel = kernel or name.lower()
        self.driver = driver
        self.phases = tuple(phases)
        self.driver_scalars = tuple(driver_scalars)
        self.param_rules = list(param_rules)
        self.torch_rejects_complex = torch_rejects_complex
        self.constants = list(constants)
        self.option_defaults = dict(option_defaults or {})
        self.bitsandbytes_states = (tuple(tuple(names) for names in bitsandbytes_states)
                                    if bitsandbytes_states is not None else None)
        self.bitsandbytes_groups = dict(bitsandbytes_groups or {})
        self._validate()

    # -- derived views -----------------------------------------------------------------------

    @property
    def fields(self):
        """``[(field, c_type)]`` of the hyperparameter struct, in declaration order (the
        hyperparameters', then the constants')."""
        return [(f, h.c_type) for h in self.hyperparameters + self.constants for f in h.fields]

    @property
    def constant_values(self):
        """``{field: value}`` of the constants (see ``constants``)."""
        return {h.name: h.default for h in self.constants}

    @property
    def hyper_by_name(self):
        return {h.name: h for h in self.hyperparameters}

    @property
    def elementwise_state(self):
        return [s for s in self.state if s.shape == "param"]

    @property
    def scalar_state(self):
        return [s for s in self.state if s.shape == "scalar"]

    @property
    def shaped_state(self):
        """States whose shape is a function of the param's shape (laid out by a driver)."""
        return [s for s in self.state if s.shaped]

    @property
    def loop_state(self):
        """The states an element loop gets pointers to, in declaration order: every state but the
        scalars (for a driver's shaped state, the driver decides what the pointer points to)."""
        return [s for s in self.state if s.shape != "scalar"]

    @property
    def all_switches(self):
        """Declared switches, then one per conditional loop state (``has_<name>``), then the phase
        (its value is chosen by the driver, so the prologue's variant selects the first phase)."""
        out = list(self.switches)
        for s in self.loop_state:
            if s.when is not None:
                out.append(Switch(s.switch_name, s.when))
        if self.phases:
            out.append(Switch("phase", "0", self.phases))
        return out

    def defaults(self):
        """The group defaults of the NumPy class: every hyperparameter, then ``fixed``."""
        out = {h.name: h.default for h in self.hyperparameters}
        out.update(self.fixed)
        return out

    def signature(self, torch=False):
        """(positional names, keyword-only names) of the constructor after ``params``."""
        return _signature_names(self.torch_signature if torch else self.numpy_signature)

    def state_active(self, state, values):
        """Whether ``state`` exists for a group with checked field ``values``."""
        if state.when is None:
            return True
        return bool(eval(state.when, {"__builtins__": {}}, dict(values)))  # our own declarations

    def field_values(self, group=None):
        """The struct fields' values (``{"beta1": 0.9, ...}``) of a param group's hyperparameters,
        by name (``{"betas": (0.9, 0.999), ...}``; default: the class defaults), unchecked: a pair
        or a tuple spreads over its fields."""
        group = self.defaults() if group is None else group
        out = {}
        for h in self.hyperparameters:
            value = group.get(h.name, self.fixed.get(h.name, h.default))
            if h.constraint.kind in ("pair", "tuple"):
                out.update(zip(h.fields, value))
            else:
                out[h.fields[0]] = value
        return out

    def traffic(self, group=None):
        """(arrays read, arrays written) per element by a step with a param group's hyperparameters
        (default: the class defaults), as the memory-traffic bound of an elementwise step counts them.

        A step reads the param, its gradient and each elementwise state the group keeps, and writes
        back the param and each of those states: ``(2 + states, 1 + states)``. That is a step after
        the first few; SGD's first step writes its momentum buffer without reading it, and ASGD
        before ``t0`` copies the param into ``ax`` without reading it.

        Raises
        ------
        ValueError
            For an algorithm with a ``driver``: its step is not elementwise (Adafactor's row and
            column statistics, Muon's matrix products), so it has no traffic per element.
        """
        if self.driver is not None:
            raise ValueError(f"{self.name} is not elementwise (its step runs {self.driver}): "
                             "it has no memory traffic per element")
        values = self.field_values(group)
        active = [s for s in self.elementwise_state if self.state_active(s, values)]
        return 2 + len(active), 1 + len(active)

    def variant(self, name, title, *, defaults=None, fixed=None, numpy_signature=None,
                torch_signature=None, torch_name=None, formula=None, constants=None,
                reference=None, option_defaults=None, bitsandbytes_states=None,
                torch_extras=None, bitsandbytes_groups=None, has_step=None):
        """A named variant sharing this algorithm's kernel (AdamW from Adam)."""
        hypers = []
        for h in self.hyperparameters:
            default = (defaults or {}).get(h.name, h.default)
            hypers.append(Hyper(h.name, default, h.constraint, h.doc, h.fields))
        pinned = [Hyper(h.name, (constants or {}).get(h.name, h.default), h.constraint, h.doc,
                        h.fields) for h in self.constants]
        unknown = set(constants or {}) - {h.name for h in self.constants}
        if unknown:
            raise ValueError(f"{name}: {sorted(unknown)} are not constants of {self.name}")
        return Algorithm(
            name, title, formula or self.formula, hypers, self.state, self.per_array, self.update,
            self.scalars, self.switches, self.temporaries, self.weight,
            self.has_step if has_step is None else has_step,
            numpy_signature or self.numpy_signature, torch_signature or self.torch_signature,
            self.torch_extras if torch_extras is None else torch_extras,
            {**self.fixed, **(fixed or {})}, self.rules,
            torch_name if torch_name is not None else name,
            reference if reference is not None else self.reference, kernel=self.kernel,
            torch_load_defaults=self.torch_load_defaults,
            driver=self.driver, phases=self.phases, driver_scalars=self.driver_scalars,
            param_rules=self.param_rules, torch_rejects_complex=self.torch_rejects_complex,
            constants=pinned, option_defaults=option_defaults,
            bitsandbytes_states=bitsandbytes_states, bitsandbytes_groups=bitsandbytes_groups)

    # -- consistency ---------------------------------------------------------------------------

    def _validate(self):
        names = [h.name for h in self.hyperparameters]
        if len(set(names + [h.name for h in self.constants])) != len(names) + len(self.constants):
            raise ValueError(f"{self.name}: duplicate hyperparameter")
        fields = [f for f, _ in self.fields]
        reserved = {"p", "g", "i", "n", "step", "first_use", "h", "a", "phase", "variant", "T"}
        for f in fields + list(self.scalars):
            if keyword.iskeyword(f) or f in reserved:
                raise ValueError(f"{self.name}: {f!r} cannot be a field or scalar name")
        assigned = assigned_names(self.per_array)
        for s in self.scalars:
            if s not in assigned and s not in self.driver_scalars:
                raise ValueError(f"{self.name}: scalar {s!r} is never assigned in per_array")
        for s in self.driver_scalars:
            if s not in self.scalars or s in assigned:
                raise ValueError(f"{self.name}: driver scalar {s!r} must be a scalar that "
                                 "per_array does not assign")
        if self.driver is None and (self.phases or self.driver_scalars or self.shaped_state):
            raise ValueError(f"{self.name}: phases, driver scalars and shaped states need a driver")
        state_names = {s.name for s in self.elementwise_state}
        for kept in self.bitsandbytes_states or ():
            if not kept or not set(kept) <= state_names:
                raise ValueError(f"{self.name}: bitsandbytes_states must name elementwise states")
        allowed = set(names) | set(self.torch_extras) | {"skip_nonfinite"}
        for torch in (False, True):
            pos, kw = self.signature(torch)
            for n in pos + kw:
                if n not in allowed:
                    raise ValueError(f"{self.name}: signature names unknown argument {n!r}")
            missing = set(names) - set(self.fixed) - set(pos + kw)
            if missing:
                raise ValueError(f"{self.name}: signature lacks {sorted(missing)}")
