"""Generate the compiled code of every declared algorithm (run by the build, build_tools/build_ext.py).

The declarations in ``fastopt/algorithms`` are loaded by path (nothing of fastopt needs to be built
for that), and for each distinct kernel this module works out what ``templates/_algorithms.pxi.tp``
lays out: the struct fields, the prologue's locals, the switches, and for each dtype the element
loop of every combination of switch values. Each combination's update body is rendered (Tempita,
with the switch values and ``T``); combinations that render to the same loop share one function, so
a switch that only matters when another is on (SGD's ``nesterov`` without momentum, say) costs no
extra code.

Only the storage configurations the Python layer can select for a kernel get loops
(:func:`reachable`): the kernel table's entry of any other is NULL, and ``KERNEL_CONFIGS`` says
which ones each kernel has (``fastopt._backend.config_index``).

It writes, into ``fastopt/_core`` (untracked; each file only when its text changed, so nothing
is recompiled when nothing changed):

* ``_storage.h``: the storage codes of ``fastopt/_core/_storage.py`` as C constants;
* ``_q8_tables.h``: the 8-bit format's maps and code lookup tables (``fastopt/_core/_dynamic_map.py``);
* ``_algorithm_structs.h`` and ``_algorithm_structs.pxi``: each kernel's hyperparameter and
  per-array structs, laid out once in C and declared to Cython from that header;
* ``_algorithm_loops.h`` (the C loops) and ``_algorithms.pxi`` (packers, prologues, kernel table),
  included by ``_kernels.pyx``;
* ``_drivers.pxi``, included by ``_bucket.pyx``: for algorithms with a compiled driver
  (``Algorithm.driver``) the index of each of their phases and an ``include`` of each driver's own
  file, ``_driver_<kernel>.pxi``.

Usage: ``python build_tools/codegen.py`` or :func:`render` (the build).
"""
import importlib.util
import itertools
import os
import re
import sys
import textwrap

from Cython import Tempita

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORE = os.path.join(ROOT, "fastopt", "_core")
ALGORITHMS_DIR = os.path.join(ROOT, "fastopt", "algorithms")
TEMPLATES = os.path.join(HERE, "templates")


def _load(name, path):
    """A module of the source tree loaded by path, without importing fastopt (nothing is built)."""
    if name in sys.modules:
        return sys.modules[name]
    is_package = os.path.basename(path) == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[os.path.dirname(path)] if is_package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


storage = _load("_fastopt_storage_for_build", os.path.join(CORE, "_storage.py"))
dynamic_map = _load("_fastopt_dynamic_map_for_build", os.path.join(CORE, "_dynamic_map.py"))

#: (suffix, C type) of the compute dtypes: a prologue is generated for each.
DTYPES = (("f32", "float"), ("f64", "double"))

#: The C type each storage reads and writes, how a value is loaded into the compute type, and how it
#: is rounded back (nearest, ties to even; bfloat16 may also be rounded stochastically).
STORAGE_TYPE = {short: ctype for _, short, _, ctype in storage.STORAGES}
CODE = {short: code for code, short, _, _ in storage.STORAGES}
HALF = tuple(storage.SHORT_NAMES[code] for code in storage.HALF)
LOAD = {"f32": "{x}", "f64": "{x}", "bf16": "fo_bf16_load({x})", "f16": "fo_f16_load({x})"}
ROUND = {"f32": "{x}", "f64": "{x}", "bf16": "fo_bf16_rne({x})", "f16": "fo_f16_round({x})"}
ROUND_STOCHASTIC = {"bf16": "fo_bf16_sr({x}, fo_random_bits(sr_key + {salt}, index0 + i))"}

#: Storage a loop reaches through float32 blocks (simd.h's fo_f16_load_block/fo_f16_store_block,
#: q8.h's fo_q8_load_block/fo_q8_store_block): the element loop then sees float32 there, and the
#: loop's wrapper converts block by block.
BLOCKED = {"f16": "f32", "q8": "f32"}
#: Elements per block of the wrapper: float16's (small blocks keep the streams moving together),
#: or the 8-bit format's block of one absmax when a state is stored in 8 bits.
BLOCK_SIZE = {"f16": "FO_F16_BLOCK", "q8": "FO_Q8_BLOCK"}


def _seen(storage):
    """The storage the element loop sees for ``storage``."""
    return BLOCKED.get(storage, storage)


class StorageConfig:
    """How one loop reads and writes memory: the param's, the gradient's and the states' storage,
    whether the param has a float32 master copy (the loop then updates the master and writes the
    rounded param), and whether bfloat16 stores round stochastically."""

    def __init__(self, name, param, grad, state, master=False, stochastic=False):
        self.name = name
        self.param, self.grad, self.state = param, grad, state
        self.master = master
        self.stochastic = stochastic
        self.compute = "f64" if param == "f64" else "f32"

    def key(self):
        """(param, grad, state, master, stochastic) with the storages as their codes."""
        return (CODE[self.param], CODE[self.grad], CODE[self.state], self.master, self.stochastic)


def _storage_configs():
    """The storage configurations fastopt.optimizer can select (``Optimizer._new_bucket``): a
    param's own storage; for a half-precision param a float32 gradient too, and either no master
    copy (the states in the param's storage, as torch keeps them; bfloat16 params may round
    stochastically) or a float32 master copy with float32 or bfloat16 states (rounded to nearest:
    stochastic rounding is refused with master weights)."""
    out = [StorageConfig("f32", "f32", "f32", "f32"), StorageConfig("f64", "f64", "f64", "f64")]
    for half in HALF:
        for grad in (half, "f32"):
            g = "" if grad == half else "_g32"
            # no master copy: the states in the param's dtype, as torch keeps them
            out.append(StorageConfig(f"{half}{g}", half, grad, half))
            if half == "bf16":
                out.append(StorageConfig(f"{half}{g}_sr", half, grad, half, stochastic=True))
            # a float32 master copy, with float32 or bfloat16 states
            out.append(StorageConfig(f"{half}{g}_master", half, grad, "f32", master=True))
            out.append(StorageConfig(f"{half}{g}_master_sbf16", half, grad, "bf16", master=True))
    # 8-bit states (blockwise, bitsandbytes' format): float32 params, and half-precision ones with
    # or without a float32 master copy; codes rounded stochastically for float32 and bfloat16
    # params without a master copy (a bfloat16 param then rounds stochastically too)
    out.append(StorageConfig("f32_q8", "f32", "f32", "q8"))
    out.append(StorageConfig("f32_q8_sr", "f32", "f32", "q8", stochastic=True))
    for half in HALF:
        for grad in (half, "f32"):
            g = "" if grad == half else "_g32"
            out.append(StorageConfig(f"{half}{g}_q8", half, grad, "q8"))
            if half == "bf16":
                out.append(StorageConfig(f"{half}{g}_q8_sr", half, grad, "q8", stochastic=True))
            out.append(StorageConfig(f"{half}{g}_master_q8", half, grad, "q8", master=True))
    return out


#: Every storage configuration a loop is generated for (the kernel table's order).
CONFIGS = _storage_configs()


def reachable(algorithm, config):
    """Whether the Python layer can select ``config`` for ``algorithm``: an algorithm with a
    compiled driver takes float32 and float64 params only (its reductions and matrix products run in
    the param's own dtype; fastopt.optimizer refuses half-precision params for it), and keeps its
    states in the param's dtype (no 8-bit states: its loops' states are not elementwise only)."""
    return algorithm.driver is None or (config.param not in HALF and config.state != "q8")


def load_algorithms():
    """``fastopt.algorithms`` loaded from its folder as a stand-alone package."""
    return _load("_fastopt_algorithms_for_build", os.path.join(ALGORITHMS_DIR, "__init__.py"))


def _indent(code, spaces):
    return textwrap.indent(textwrap.dedent(code).strip("\n"), " " * spaces)


_CAST = re.compile(r"<\s*(float|double)\s*>")
_NOT_C = re.compile(r"\b(if|else|and|or|not|for|while|in|is|lambda)\b|\*\*|//")


def c_statements(body, where):
    """An update body (Cython statements: ``name = expression`` lines) as C statements.

    Update bodies are plain assignments of arithmetic on locals and the point helpers, so the
    translation is small: ``<float>x`` casts become ``(float)x`` and each line ends with ``;``.
    Anything else (a Python conditional, ``**``) is refused rather than mistranslated."""
    out = []
    for line in textwrap.dedent(body).strip("\n").splitlines():
        code = line.split("#", 1)[0].rstrip()
        if not code.strip():
            continue
        if _NOT_C.search(code) or not re.match(r"\s*[A-Za-z_]\w*\s*=[^=]", code):
            raise ValueError(f"{where}: an update line must be 'name = expression' in C-compatible "
                             f"arithmetic, got {code.strip()!r}")
        out.append(_CAST.sub(r"(\1)", code) + ";")
    return "\n".join(out)


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
        self.driver = a.driver
        self.phases = list(a.phases)
        self.scalar_states = [s.name for s in a.scalar_state]
        self.elem_states = [s.name for s in a.loop_state]
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
            choices = [(sw.name, len(sw.values), Tempita.Template(sw.choose).substitute(T=ctype))
                       for sw in switches]
            per_array = Tempita.Template(a.per_array, name=f"{a.name}.per_array").substitute(T=ctype)
            self.dtypes.append(_Namespace(suffix=suffix, ctype=ctype, choices=choices,
                                          per_array=_indent(per_array, 4)))

        code_maps = {s.name: s.code_map for s in a.loop_state}
        self.configs = []
        elements = {}   # element loop -> the name of its one function
        for config in CONFIGS:
            if not reachable(a, config):
                self.configs.append(_Namespace(name=config.name, built=False))
                continue
            ctype = STORAGE_TYPE[config.compute]
            loops, variant_loops, by_code = [], [], {}
            for combo in itertools.product(*(range(len(sw.values)) for sw in switches)):
                env = {sw.name: sw.values[i] for sw, i in zip(switches, combo)}
                env["T"] = ctype
                body = Tempita.Template(a.update, name=f"{a.name}.update").substitute(env)
                names = spec.identifiers(body)
                # a loop loads the states its body names and stores those it assigns
                active = [(j, s.name) for j, s in enumerate(a.loop_state)
                          if (s.when is None or env[s.switch_name]) and s.name in names]
                assigned = spec.assigned_names(body)
                loop_fields = [f for f in field_names if f in names]
                loop_scalars = [s for s in self.scalars if s in names]
                locals_ = [t for t in a.temporaries if t in names]
                key = (body, tuple(active))
                if key not in by_code:
                    states = [_state_access(config, j, s, s in assigned, code_maps[s])
                              for j, s in active]
                    loop = _Namespace(
                        name=f"{self.name}_loop_{config.name}_{len(loops)}", fields=loop_fields,
                        scalars=loop_scalars, temporaries=locals_,
                        body=_indent(c_statements(body, f"{a.name}.update"), 8), variants=[],
                        states=states,
                        stored=[st for st in states if st.name in assigned],
                        load_p=("m_[i]" if config.master
                                else LOAD[_seen(config.param)].format(x="p_[i]")),
                        load_g=LOAD[_seen(config.grad)].format(x="g_[i]"),
                        store_p=_store(config, _seen(config.param), "p", 0),
                        blocks=_blocks(config, states, assigned))
                    # the element loop proper: configurations that differ only in what the
                    # wrapper converts block by block (float16 through float32) share it
                    # (stochastic rounding changes an element loop only where it stores bfloat16)
                    rounds = config.stochastic and "bf16" in (_seen(config.param), _seen(config.state))
                    element_key = (ctype, _seen(config.param), _seen(config.grad),
                                   _seen(config.state), config.master, rounds,
                                   key, tuple(st.name in assigned for st in states))
                    loop.defines_element = element_key not in elements
                    loop.element = elements.setdefault(element_key, f"{loop.name}_loop")
                    by_code[key] = loop
                    loops.append(loop)
                loop = by_code[key]
                loop.variants.append(len(variant_loops))
                variant_loops.append(loop.name)
            self.configs.append(_Namespace(
                name=config.name, built=True, ctype=ctype, param=STORAGE_TYPE[_seen(config.param)],
                grad=STORAGE_TYPE[_seen(config.grad)], state=STORAGE_TYPE[_seen(config.state)],
                master=config.master, loops=loops, variant_loops=variant_loops))
        #: the kernel table indices of the configurations this kernel has loops for
        self.built_configs = tuple(i for i, c in enumerate(self.configs) if c.built)


def _store(config, storage, name, salt):
    if config.stochastic and storage in ROUND_STOCHASTIC:
        return ROUND_STOCHASTIC[storage].format(x=name, salt=salt)
    return ROUND[storage].format(x=name)


def _state_access(config, j, name, stored, code_map):
    """(index, name, load expression, store expression, const qualifier of its pointer: a state
    the loop only reads is const, the dynamic map of its 8-bit codes) of one state in one
    configuration."""
    seen = _seen(config.state)
    return _Namespace(index=j, name=name, load=LOAD[seen].format(x=f"{name}_[i]"),
                      store=_store(config, seen, name, 0x9E37 * (j + 1)),
                      const="" if stored else "const ", code_map=code_map)


def _blocks(config, states, assigned):
    """How a loop's wrapper reaches memory block by block, or None when nothing is blocked.

    ``arguments`` are the element loop's array arguments for the block at ``start``, ``loads`` and
    ``stores`` the conversions into and out of the float32 scratch arrays ``buffers``."""
    if not any(s in BLOCKED for s in (config.param, config.grad, config.state)):
        return None
    buffers, loads, stores, arguments = [], [], [], []

    def array(name, storage, data, loaded, stored, code_map=None, index=None):
        if storage not in BLOCKED:
            const = "const " if not stored else ""
            arguments.append(f"({const}{STORAGE_TYPE[storage]}*){data} + start")
            return
        buffers.append(f"{name}_block")
        arguments.append(f"{name}_block")
        if storage == "q8":
            # the codes of an 8-bit state, and its blocks' absmax after the states' pointers
            absmax = f"(float*)state_[FO_Q8_ABSMAX + {index}] + start / FO_Q8_BLOCK"
            if loaded:
                loads.append(f"fo_q8_load_block({name}_block, (const uint8_t*){data} + start, "
                             f"({absmax})[0], fo_q8_map_{code_map}, len);")
            if stored and config.stochastic:
                # each state its own random stream (the param's is sr_key itself)
                stores.append(f"fo_q8_store_block_{code_map}_sr((uint8_t*){data} + start, {absmax}, "
                              f"{name}_block, len, sr_key + {0x51ED27 * (index + 1)}u, index0 + start);")
            elif stored:
                stores.append(f"fo_q8_store_block_{code_map}((uint8_t*){data} + start, {absmax}, "
                              f"{name}_block, len);")
            return
        if loaded:
            loads.append(f"fo_{storage}_load_block({name}_block, "
                         f"(const {STORAGE_TYPE[storage]}*){data} + start, len);")
        if stored:
            stores.append(f"fo_{storage}_store_block(({STORAGE_TYPE[storage]}*){data} + start, "
                          f"{name}_block, len);")

    # with a master copy the param is only written: the loop reads the master
    array("p", config.param, "p_data", loaded=not config.master, stored=True)
    array("g", config.grad, "g_data", loaded=True, stored=False)
    for st in states:
        array(st.name, config.state, f"state_[{st.index}]", loaded=True, stored=st.name in assigned,
              code_map=st.code_map, index=st.index)
    arguments.append("master_ + start" if config.master else "master_")
    size = BLOCK_SIZE["q8" if config.state == "q8" else "f16"]
    return _Namespace(buffers=buffers, loads=loads, stores=stores, arguments=arguments, size=size)


def q8_tables():
    """The 8-bit format's constants for ``_q8_tables.h``: (block size, [(kind, map values,
    mantissa bits of its lookup, lookup entries)], tiny exponent, rows per sign)."""
    d = dynamic_map
    kinds = [(kind, [float.hex(v) + "f" for v in d.MAPS[kind]], d.MANTISSA_BITS[kind], d.code_table(kind))
             for kind in d.KINDS]
    return d.BLOCK, kinds, d.TINY_EXPONENT, d.ROWS


#: The templates (``templates/<output>.tp``); each renders into ``fastopt/_core/<output>``.
OUTPUTS = ("_storage.h", "_q8_tables.h", "_algorithm_structs.h", "_algorithm_structs.pxi",
           "_algorithm_loops.h", "_algorithms.pxi", "_drivers.pxi")


def render_texts():
    """{output file name: text} of every generated file."""
    algorithms = load_algorithms()
    spec = sys.modules[algorithms.__name__ + "._spec"]
    kernels = [KernelCode(a, spec) for a in algorithms.KERNELS]
    out = {}
    for name in OUTPUTS:
        path = os.path.join(TEMPLATES, name + ".tp")
        with open(path) as f:
            template = Tempita.Template(f.read(), name=path)
        out[name] = template.substitute(
            kernels=kernels, driven=[k for k in kernels if k.driver], configs=CONFIGS,
            storages=storage.STORAGES, q8=q8_tables, enumerate=enumerate, len=len, repr=repr,
            range=range)
    return out


def render(folder=CORE):
    """Write the generated files into ``folder``, each only if its text changed (an unchanged file
    keeps its modification time: nothing that depends on it is rebuilt). Returns their paths."""
    paths = []
    for name, text in render_texts().items():
        path = os.path.join(folder, name)
        paths.append(path)
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        with open(path, "w") as f:
            f.write(text)
    return paths


if __name__ == "__main__":
    print("\n".join(render()))
