"""torch's private names: read in fastopt/torch/_compat.py only, each with a fallback that works.

(a) No module of fastopt other than ``torch/_compat.py`` names a private attribute of torch
    (a component starting with ``_`` in an attribute path under ``torch``, a private name imported
    from torch, or one read with ``getattr(torch..., "_name")``).
(b) With each private name removed from torch while ``import fastopt.torch`` runs, the fallback is in
    effect and ``fastopt.torch.Adam`` steps to the same bits as with it, close to
    ``torch.optim.Adam``, runs step hooks once, bumps version counters and saves ``"step"`` in
    torch's dtype. Each case runs in a fresh interpreter (the names are read at import).
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fastopt"
COMPAT = PACKAGE / "torch" / "_compat.py"


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _torch_aliases(tree):
    """{local name: dotted torch module path} for the names a module binds to torch modules."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch" or alias.name.startswith("torch."):
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases["torch"] = "torch"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and (node.module == "torch" or node.module.startswith("torch.")):
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _attribute_path(node):
    """The dotted names of an attribute chain ending in a plain name (``a.b.c``), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def private_torch_references(source, filename="<source>"):
    """Each private torch name ``source`` references, as (line, dotted path)."""
    tree = ast.parse(source, filename)
    aliases = _torch_aliases(tree)
    # an attribute chain is reported once, at its longest: not again at each of its prefixes
    prefixes = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and (node.module == "torch" or node.module.startswith("torch.")):
            for alias in node.names:
                path = f"{node.module}.{alias.name}"
                if any(_is_private(part) for part in path.split(".")):
                    found.append((node.lineno, path))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torch.") and any(_is_private(p) for p in alias.name.split(".")):
                    found.append((node.lineno, alias.name))
        elif isinstance(node, ast.Attribute) and id(node) not in prefixes:
            path = _attribute_path(node)
            if path and path[0] in aliases:
                full = aliases[path[0]].split(".") + path[1:]
                if any(_is_private(part) for part in full):
                    found.append((node.lineno, ".".join(full)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2:
            target = _attribute_path(node.args[0])
            name = node.args[1]
            if target and target[0] in aliases and isinstance(name, ast.Constant) \
                    and isinstance(name.value, str) and _is_private(name.value):
                full = aliases[target[0]].split(".") + target[1:] + [name.value]
                found.append((node.lineno, ".".join(full)))
    return sorted(set(found))


def _python_sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if p != COMPAT)


def test_the_scan_sees_private_torch_names():
    source = ("import torch\nimport torch.optim.optimizer as opt_mod\nfrom torch import _C\n"
              "from torch.optim.optimizer import _get_scalar_dtype\n"
              "a = torch._C.TensorBase.data_ptr\nb = getattr(opt_mod, '_global_optimizer_pre_hooks', None)\n"
              "c = torch.optim.optimizer._x\nd = torch.__version__\ne = torch.Tensor.__len__\n"
              "f = torch.autograd.graph.increment_version\n")
    paths = {path for _, path in private_torch_references(source)}
    assert {"torch._C", "torch.optim.optimizer._get_scalar_dtype", "torch._C.TensorBase.data_ptr",
            "torch.optim.optimizer._global_optimizer_pre_hooks", "torch.optim.optimizer._x"} <= paths
    assert not any(p.startswith(("torch.__version__", "torch.Tensor.__len__", "torch.autograd.graph"))
                   for p in paths)


def test_only_the_compat_module_names_private_torch_attributes():
    offenders = []
    for path in _python_sources():
        for line, name in private_torch_references(path.read_text(), str(path)):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, ("private torch names outside fastopt/torch/_compat.py (read them there, "
                           "with a fallback):\n" + "\n".join(offenders))


def test_the_compat_module_documents_each_name_it_reads():
    documented = ast.get_docstring(ast.parse(COMPAT.read_text()))
    for _, name in private_torch_references(COMPAT.read_text()):
        leaf = name.split(".")[-1]
        if leaf == "_C":
            continue
        assert leaf in documented, f"{name} is read in torch/_compat.py but not described there"
    assert "2.13" in documented


# -- fallbacks ------------------------------------------------------------------------------------

_SCRIPT = r"""
import contextlib, json, sys
import torch
import torch.optim.optimizer
owner, name = sys.argv[1], sys.argv[2]
owner = sys.modules.get(owner) or eval(owner) if owner else None   # a module, or a class
if owner:
    # the private name is missing while fastopt reads them (at import), then put back for torch's
    # own code: what is tested is fastopt's fallback, not a torch broken by the removal
    saved = getattr(owner, name)
    delattr(owner, name)
    assert not hasattr(owner, name)
import fastopt.torch as ft
from fastopt.torch import _compat as compat
if owner:
    setattr(owner, name, saved)

def run(cls, default_dtype):
    torch.set_default_dtype(default_dtype)
    torch.manual_seed(0)
    params = [torch.randn(7, 5), torch.randn(5), torch.randn(()), torch.randn(3, 1, 2)]
    params = [torch.nn.Parameter(p) for p in params]
    extra = {} if cls is ft.Adam else dict(foreach=False)
    opt = cls(params, lr=1e-2, weight_decay=0.01, **extra)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    versions = [p._version for p in params]
    for step in range(5):
        opt.zero_grad()
        loss = sum((p * p).sum() * (i + 1) for i, p in enumerate(params)) + params[0].sum()
        loss.backward()
        opt.step()
    bumped = all(p._version > v for p, v in zip(params, versions))
    step_dtype = str(opt.state_dict()["state"][0]["step"].dtype)
    values = [float(x).hex() for p in params for x in p.detach().reshape(-1).tolist()]
    return dict(values=values, hooks=calls, bumped=bumped, step_dtype=step_dtype)

out = {dtype: dict(fastopt=run(ft.Adam, getattr(torch, dtype)), torch=run(torch.optim.Adam, getattr(torch, dtype)))
       for dtype in ("float32", "float64")}
torch.set_default_dtype(torch.float32)
out["compat"] = dict(
    light_step=compat.LIGHT_STEP,
    public_tensor_api=all(compat.TENSOR_API[n] is getattr(torch.Tensor, n) for n in compat._TENSOR_SLOTS),
    public_increment_version=compat.increment_version is torch.autograd.graph.increment_version,
    written_scalar_dtype=compat.scalar_dtype is compat._default_scalar_dtype,
    dynamo_callback_read=compat._get_eval_frame_callback is not None,
    subclass_dispatch_off=compat.no_torch_function is not contextlib.nullcontext,
    public_dynamo_disable=compat.disable_dynamo is torch.compiler.disable)
print(json.dumps(out))
"""

# (owner expression, private name, what the fallback changes in _torch_compat)
FALLBACKS = [
    ("torch.autograd", "_profiler_enabled", dict(light_step=False)),
    ("torch.optim.optimizer", "_global_optimizer_pre_hooks", dict(light_step=False)),
    ("torch.optim.optimizer", "_global_optimizer_post_hooks", dict(light_step=False)),
    ("torch.optim.Optimizer", "_patch_step_function", dict(light_step=False)),
    ("torch._C", "TensorBase", dict(public_tensor_api=True)),
    ("torch._C", "_increment_version", dict(public_increment_version=True)),
    ("torch.optim.optimizer", "_get_scalar_dtype", dict(written_scalar_dtype=True)),
    ("torch._C._dynamo.eval_frame", "get_eval_frame_callback", dict(dynamo_callback_read=False)),
    ("torch._C", "DisableTorchFunctionSubclass", dict(subclass_dispatch_off=False)),
]
NORMAL = dict(light_step=True, public_tensor_api=False, public_increment_version=False,
              written_scalar_dtype=False, dynamo_callback_read=True, subclass_dispatch_off=True,
              public_dynamo_disable=False)


def _run(owner="", name=""):
    # The child imports the fastopt under test: `python -c` puts its working directory first on
    # sys.path, so it runs in the folder holding that package (at a repository root that is the
    # source folder, unbuilt when the tests run against an installed copy).
    import fastopt
    here = str(pathlib.Path(fastopt.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _SCRIPT, owner, name], capture_output=True, text=True,
                          env=env, timeout=120, cwd=here)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def with_every_name():
    return _run()


def test_with_every_private_name_the_fast_paths_are_taken(with_every_name):
    assert with_every_name["compat"] == NORMAL


@pytest.mark.parametrize("owner, name, changed", FALLBACKS, ids=[name for _, name, _ in FALLBACKS])
def test_a_missing_private_name_falls_back(owner, name, changed, with_every_name):
    result = _run(owner, name)
    assert result["compat"] == {**NORMAL, **changed}
    for dtype in ("float32", "float64"):
        ours, normal, reference = result[dtype]["fastopt"], with_every_name[dtype]["fastopt"], result[dtype]["torch"]
        assert ours["values"] == normal["values"]          # the same bits as with the private name
        ours_values = torch.tensor([float.fromhex(v) for v in ours["values"]], dtype=torch.float64)
        torch_values = torch.tensor([float.fromhex(v) for v in reference["values"]], dtype=torch.float64)
        torch.testing.assert_close(ours_values, torch_values, rtol=1e-5, atol=1e-6)
        assert ours["hooks"] == reference["hooks"] == ["pre", "post"] * 5   # each hook once a step
        assert ours["bumped"] and reference["bumped"]
        assert ours["step_dtype"] == reference["step_dtype"] == f"torch.{dtype}"


def test_an_optimizer_without_torch_step_hook_attributes_takes_torch_wrapper():
    import fastopt.torch as ft
    from fastopt.torch import _compat as _torch_compat
    opt = ft.Adam([torch.nn.Parameter(torch.ones(3))])
    assert not _torch_compat.needs_hooked_step(opt)
    for attribute in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks"):
        saved = opt.__dict__.pop(attribute)
        try:
            assert _torch_compat.needs_hooked_step(opt)
        finally:
            setattr(opt, attribute, saved)
    assert not _torch_compat.needs_hooked_step(opt)
