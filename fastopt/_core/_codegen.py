"""Generate the compiled code of every declared algorithm (run by setup.py when it builds).

The declarations in ``fastopt/algorithms`` are loaded by path (nothing of fastopt needs to be built
for that), and for each distinct kernel this module works out what ``_algorithms.pxi.tp`` lays out:
the struct fields, the prologue's locals, the switches, and for each dtype the element loop of every
combination of switch values. Each combination's update body is rendered (Tempita, with the switch
values and ``T``); combinations that render to the same loop share one function, so a switch that
only matters when another is on (SGD's ``nesterov`` without momentum, say) costs no extra code.

For algorithms with a compiled driver (``Algorithm.driver``), it also writes ``_drivers.pxi``,
which ``_bucket.pyx`` includes: the driver kernels' struct types (the same layout as the kernel
modules'), so a driver fills and reads the per-array scalars by name, the index of each of their
phases, and an ``include`` of each driver's own file, ``_driver_<kernel>.pxi``.

Usage: ``python -m fastopt._core._codegen OUT`` or ``render(out_path)`` (setup.py).
"""
import importlib.util
import itertools
import os
import sys
import textwrap

from Cython import Tempita

HERE = os.path.dirname(os.path.abspath(__file__))
ALGORITHMS_DIR = os.path.join(os.path.dirname(HERE), "algorithms")
TEMPLATE = os.path.join(HERE, "_algorithms.pxi.tp")
OUTPUT = os.path.join(HERE, "_algorithms.pxi")
DRIVERS_OUTPUT = os.path.join(HERE, "_drivers.pxi")

#: (suffix, C type) of the dtypes every element loop is generated for.
DTYPES = (("f32", "float"), ("f64", "double"))


def load_algorithms():
    """``fastopt.algorithms`` loaded from its folder as a stand-alone package."""
    name = "_fastopt_algorithms_for_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ALGORITHMS_DIR, "__init__.py"),
        submodule_search_locations=[ALGORITHMS_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _indent(code, spaces):
    return textwrap.indent(textwrap.dedent(code).strip("\n"), " " * spaces)


class _Namespace:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class KernelCode:
    """What the template needs to lay out one kernel."""

    def __init__(self, algorithm, spec):
        a = algorithm
        self.name = a.kernel
        self.weight = a.weight
        self.fields = a.fields
        field_names = [f for f, _ in self.fields]
        self.scalars = list(a.scalars)
        self.prologue_scalars = [s for s in a.scalars if s not in a.driver_scalars]
        self.scalar_states = [s.name for s in a.scalar_state]
        self.elem_states = [s.name for s in a.loop_state]
        self.driver = a.driver
        self.phases = list(a.phases)
        switches = a.all_switches
        self.n_variants = 1
        for sw in switches:
            self.n_variants *= len(sw.values)

        prologue_text = a.per_array + "\n" + "\n".join(sw.choose for sw in switches)
        used = spec.identifiers(prologue_text)
        self.prologue_fields = [(f, t) for f, t in self.fields if f in used]
        self.prologue_locals = [n for n in spec.assigned_names(a.per_array)
                                if n not in self.scalar_states]
        clash = set(self.prologue_locals) & set(field_names)
        if clash:
            raise ValueError(f"{a.name}: per_array assigns hyperparameter fields {sorted(clash)}")
        self.dtypes = []
        for suffix, ctype in DTYPES:
            per_array = Tempita.Template(a.per_array, name=f"{a.name}.per_array").substitute(T=ctype)
            choices = [(sw.name, len(sw.values), Tempita.Template(sw.choose).substitute(T=ctype))
                       for sw in switches]
            loops, variant_loops, by_code = [], [], {}
            for combo in itertools.product(*(range(len(sw.values)) for sw in switches)):
                env = {sw.name: sw.values[i] for sw, i in zip(switches, combo)}
                env["T"] = ctype
                body = Tempita.Template(a.update, name=f"{a.name}.update").substitute(env)
                names = spec.identifiers(body)
                assigned = spec.assigned_names(body)
                # a loop loads the states its body names and stores those it assigns
                active = [(j, s.name) for j, s in enumerate(a.loop_state)
                          if (s.when is None or env[s.switch_name]) and s.name in names]
                stored = [(j, name) for j, name in active if name in assigned]
                loop_fields = [f for f in field_names if f in names]
                loop_scalars = [s for s in self.scalars if s in names]
                locals_ = [t for t in a.temporaries if t in names]
                key = (body, tuple(active))
                if key not in by_code:
                    loop = _Namespace(
                        name=f"{self.name}_loop_{suffix}_{len(loops)}", fields=loop_fields,
                        scalars=loop_scalars, states=active, stored=stored,
                        locals=[s for _, s in active] + locals_,
                        body=_indent(body, 8), variants=[])
                    by_code[key] = loop
                    loops.append(loop)
                loop = by_code[key]
                loop.variants.append(len(variant_loops))
                variant_loops.append(loop.name)
            self.dtypes.append(_Namespace(suffix=suffix, ctype=ctype, choices=choices,
                                          loops=loops, variant_loops=variant_loops,
                                          per_array=_indent(per_array, 4)))


_DRIVERS_TEMPLATE = """\
# Generated by _codegen.py from fastopt/algorithms: do not edit. Included by _bucket.pyx.
# The kernels whose algorithm has a compiled driver: their struct types (laid out as in the kernel
# modules), their phases' indices, and the drivers themselves.

include "_driver_common.pxi"
{{for k in kernels}}

cdef struct {{k.name}}_hyper:
{{for field, ctype in k.fields}}
    {{ctype}} {{field}}
{{endfor}}

cdef struct {{k.name}}_array:
{{for s in k.scalars}}
    double {{s}}
{{endfor}}
{{if not k.scalars}}
    char unused
{{endif}}
{{if k.phases}}

cdef enum:
{{for i, phase in enumerate(k.phases)}}
    {{k.name.upper()}}_PHASE_{{phase.upper()}} = {{i}}
{{endfor}}
{{endif}}

include "_driver_{{k.name}}.pxi"
{{endfor}}
"""


def _kernels():
    algorithms = load_algorithms()
    spec = sys.modules[algorithms.__name__ + "._spec"]
    return [KernelCode(a, spec) for a in algorithms.KERNELS]


def render_text(kernels=None):
    kernels = _kernels() if kernels is None else kernels
    with open(TEMPLATE) as f:
        template = Tempita.Template(f.read(), name=TEMPLATE)
    return template.substitute(kernels=kernels, enumerate=enumerate, len=len)


def render_drivers_text(kernels=None):
    kernels = _kernels() if kernels is None else kernels
    template = Tempita.Template(_DRIVERS_TEMPLATE, name="_drivers.pxi")
    return template.substitute(kernels=[k for k in kernels if k.driver], enumerate=enumerate)


def _write(path, text):
    """Write ``text`` to ``path`` only if it changed (no needless rebuilds)."""
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)
    return path


def render(out_path=OUTPUT, drivers_path=DRIVERS_OUTPUT):
    """Write the generated element loops to ``out_path`` and the drivers' part to ``drivers_path``."""
    kernels = _kernels()
    _write(drivers_path, render_drivers_text(kernels))
    return _write(out_path, render_text(kernels))


if __name__ == "__main__":
    print(render(sys.argv[1] if len(sys.argv) > 1 else OUTPUT))
