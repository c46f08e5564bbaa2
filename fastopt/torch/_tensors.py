"""Tensors as fastopt sees them: zero-copy NumPy views of CPU tensors and back, the local shard of
a DTensor (FSDP2, tensor parallel), and the checks that say why a tensor cannot be stepped."""
import sys

import numpy as np
import torch

from .. import _dtypes

SUPPORTED = ("dense (strided), contiguous CPU tensors of dtype float32, float64, float16 or "
             "bfloat16 (gradients: their param's dtype, or float32 for a float16/bfloat16 param)")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF = (torch.float16, torch.bfloat16)


def torch_dtype(dtype):
    """The torch dtype of a NumPy dtype fastopt keeps state in (bfloat16: ml_dtypes' or the uint16
    bits of a BF16Array)."""
    if dtype.name == "bfloat16" or dtype == np.uint16:
        return torch.bfloat16
    return {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}[dtype.name]


def as_numpy(t):
    """A zero-copy NumPy view of a CPU tensor; bfloat16 as a BF16Array (its bits as uint16), as
    NumPy has no bfloat16 of its own."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).view(_dtypes.BF16Array)
    return t.numpy()


def as_tensor(a):
    """A tensor sharing ``a``'s memory (the inverse of as_numpy)."""
    if type(a) is _dtypes.BF16Array or a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def is_dtensor(t):
    """Whether ``t`` is a DTensor. Reads ``torch.distributed.tensor`` only if something imported
    it already (a DTensor cannot exist otherwise), so fastopt.torch never pays for importing it."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t):
    """The tensor whose memory a step updates: a DTensor's local shard (as torch.optim steps a
    DTensor: its ops run on the shards), else ``t`` itself."""
    if is_dtensor(t):
        with torch.no_grad():     # to_local() is then the shard itself, not an autograd view
            return t.to_local()
    return t


def like_param(t, param):
    """``t`` (a tensor shaped like ``param``'s local shard) as ``param`` holds it: a DTensor with
    ``param``'s mesh and placements if ``param`` is one (torch.optim's state of a DTensor param is
    a DTensor: torch.distributed.checkpoint saves it sharded), else ``t`` (also a tensor of another
    shape: the absmax of 8-bit states, one per block)."""
    if is_dtensor(param) and t.shape == param.to_local().shape:
        module = sys.modules["torch.distributed.tensor"]
        return module.DTensor.from_local(t, param.device_mesh, param.placements, run_check=False,
                                         shape=param.shape, stride=param.stride())
    return t


def tensor_problem(t, what, like=None, shape_error=ValueError):
    """Why ``t`` (a param or gradient, or its local shard) cannot be used (an exception instance),
    or None; a shape unlike ``like``'s is a ``shape_error``."""
    if not isinstance(t, torch.Tensor):
        return TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        return TypeError(f"{what} is on device {t.device}; fastopt.torch supports {SUPPORTED}")
    if t.layout != torch.strided:
        return TypeError(
            f"{what} has layout {t.layout} (sparse tensors, e.g. from nn.Embedding(sparse=True), "
            f"are not supported); fastopt.torch supports {SUPPORTED}")
    if t.dtype not in DTYPES:
        return TypeError(f"{what} has dtype {t.dtype}; fastopt.torch supports {SUPPORTED}")
    if like is not None:
        if t.dtype != like.dtype and not (like.dtype in HALF and t.dtype == torch.float32):
            return TypeError(f"{what} has dtype {t.dtype}, but its param has dtype {like.dtype}")
        if t.shape != like.shape:
            return shape_error(f"{what} has shape {tuple(t.shape)}, but its param has shape {tuple(like.shape)}")
    if not t.is_contiguous():
        return ValueError(
            f"{what} is not contiguous (strides {t.stride()}); fastopt.torch updates memory in place "
            f"and never copies: it supports {SUPPORTED}")
    if t.is_conj() or t.is_neg():
        return ValueError(f"{what} has a lazy conj/neg bit; call .resolve_conj()/.resolve_neg() first")
    return None
