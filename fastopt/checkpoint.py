"""Save and load an optimizer's state as a ``.npz`` file, without pickle.

File layout (format version 1): an uncompressed ``.npz`` (a zip of ``.npy`` arrays, every member
CRC-checked on reading) holding

* ``__fastopt__`` -- a uint8 array of UTF-8 JSON metadata::

      {"format": "fastopt-checkpoint", "version": 1, "optimizer": "Adam",
       "params": [{"shape": [3, 4], "dtype": "float32"}, ...],
       "param_groups": [{"params": [0, 1], "lr": 0.001, "betas": [0.9, 0.999], ...}, ...],
       "state": [{"index": 0, "step": 10, "arrays": {"exp_avg": "state.0.exp_avg", ...}}, ...],
       "skipped_steps": 0, "found_inf": false, "has_params": false}

  (with ``stochastic_rounding``, also ``"stochastic_rounding_seed"``: the seed as a decimal string)

* one array per state buffer (``state.<param index>.<buffer name>``), and with ``params=True`` one
  per param (``param.<index>``).

bfloat16 arrays (params, moments kept in bfloat16) are stored as their uint16 bit patterns, since
``.npy`` files without pickle cannot name the dtype: ``params[i]["dtype"]`` is ``"bfloat16"`` and a
state entry lists its bfloat16 buffers in ``"bfloat16"``; :func:`load` views the bits as the
optimizer's bfloat16 arrays (``ml_dtypes.bfloat16``, or fastopt's own view of a torch tensor).

:func:`save` writes through ``fastopt/_atomic_file.py``: a temporary file in the target's
directory, flushed and fsynced, then renamed over ``path`` (``os.replace``), so ``path`` always
holds either the old or the new checkpoint. The final file has the permissions a plain
``open(path, "w")`` would leave: the existing file's, or ``0o666`` less the umask for a new one. The
temporary is created with them (the umask applies), so the state it holds is never readable by
anyone who cannot read ``path``, even when a killed save leaves it behind.

A save killed mid-write (a preempted job) leaves its temporary file behind. The temporaries of a
target are named ``.<name>.<crc32 of name>.<16 random hex digits>.fastopt.tmp``, and each save holds
an exclusive ``flock`` on its own until it is renamed; every save first removes the temporaries of
the same target whose lock it can take, i.e. those no live save holds. Where ``fcntl`` is missing
(Windows) it removes those untouched for 10 minutes, which Windows refuses anyway while a save still
has the file open.
:func:`load` reads and checks everything (format, version, optimizer class, param count, shapes and
dtypes, every array) before it changes the optimizer; any problem raises ValueError naming it and
leaves the optimizer exactly as it was.
"""
import json
import math
import numbers
import os

import numpy as np

from . import _atomic_file, _dtypes
# what save calls first (a name of this module, so that tests can watch it)
from ._atomic_file import remove_stale_temporaries

FORMAT = "fastopt-checkpoint"
VERSION = 1
META_KEY = "__fastopt__"

__all__ = ["save", "load"]


def _json_value(value, where):
    """A hyperparameter as a JSON value (numbers, bools, strings, None, lists of them)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; a checkpoint stores finite numbers only")
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf":
        return _json_value(value.item(), where)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(
        f"{where} is a {type(value).__name__}, which a checkpoint cannot store without pickle "
        "(allowed: numbers, bools, strings, None, and lists/tuples of them)")


def _from_json(value):
    """JSON lists back to tuples (param groups keep list-valued hyperparameters as tuples)."""
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def save(optimizer, path, *, params=False):
    """Write ``optimizer``'s state (and, with ``params=True``, its params) to ``path`` atomically.

    Parameters
    ----------
    optimizer : fastopt.Optimizer
    path : str or os.PathLike
        The file to write, used as given (no ``.npz`` suffix is added). Its directory must exist.
    params : bool, default False
        Also store the params' values, which :func:`load` then copies back into the optimizer's
        params: a full resume from the file alone. Without it, restore the params yourself.

    The file is written to a temporary file beside ``path`` and renamed over it, so ``path`` holds
    the old or the new checkpoint whenever the process dies; the temporary files that killed saves
    of the same ``path`` left behind are removed first (see the module docstring).

    Raises
    ------
    ValueError
        A param group holds a value that cannot be stored without pickle (an arbitrary object);
        nothing is written then.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import fastopt
    >>> p = np.ones(3)
    >>> opt = fastopt.Adam([p], lr=0.1)
    >>> _ = opt.step([np.ones(3)])
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "checkpoint.npz")
    >>> fastopt.save(opt, path, params=True)
    >>> q = np.zeros(3)                               # a fresh run resumes from the file
    >>> resumed = fastopt.Adam([q], lr=0.1)
    >>> fastopt.load(resumed, path)
    >>> bool(np.array_equal(q, p)), resumed.state[0]["step"]
    (True, 1)
    >>> folder.cleanup()
    """
    from .optimizer import Optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    if not isinstance(params, (bool, np.bool_)):
        raise TypeError(f"params must be True or False, got {params!r}")
    path = os.fspath(path)
    sd = optimizer.state_dict()          # copies, taken under the optimizer's lock
    plist = optimizer.params
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": type(optimizer).__name__,
        "params": [{"shape": list(p.shape), "dtype": _dtype_name(p)} for p in plist],
        "param_groups": [],
        "state": [],
        "skipped_steps": int(optimizer.skipped_steps),
        "found_inf": bool(optimizer.found_inf),
        "has_params": bool(params),
    }
    if "stochastic_rounding_seed" in sd:
        meta["stochastic_rounding_seed"] = str(sd["stochastic_rounding_seed"])   # 64 bits: exact in JSON as text
    for g, group in enumerate(sd["param_groups"]):
        meta["param_groups"].append(
            {key: _json_value(value, f"param_groups[{g}][{key!r}]") for key, value in group.items()})
    arrays = {}
    for index, entry in sorted(sd["state"].items()):
        item = {"index": int(index), "arrays": {}}
        for name, value in entry.items():
            if name == "step":
                item["step"] = int(value)
            else:
                key = f"state.{index}.{name}"
                arrays[key] = _storable(value)
                item["arrays"][name] = key
                if _dtypes.storage_of(value) == _dtypes.BF16:
                    item.setdefault("bfloat16", []).append(name)
        meta["state"].append(item)
    if params:
        for i, p in enumerate(plist):
            arrays[f"param.{i}"] = _storable(p).copy()
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    remove_stale_temporaries(path)
    _atomic_file.replace_atomically(path, lambda f: np.savez(f, **arrays))


def _dtype_name(array):
    """The dtype's name as a checkpoint records it (``bfloat16`` for either kind of bf16 array)."""
    return "bfloat16" if _dtypes.storage_of(array) == _dtypes.BF16 else array.dtype.name


def _storable(array):
    """``array`` as NumPy can write it without pickle: bfloat16 as its uint16 bits."""
    if _dtypes.storage_of(array) == _dtypes.BF16:
        return np.asarray(array).view(np.uint16).view(np.ndarray)
    return array


def _bf16_like(bits, like):
    """uint16 ``bits`` viewed as bfloat16 of the kind ``like`` holds (ml_dtypes, or BF16Array)."""
    if bits.dtype != np.uint16:
        return bits            # not bfloat16 bits: the checks below name the mismatch
    if type(like) is _dtypes.BF16Array or _dtypes.bf16_dtype() is None:
        return bits.view(_dtypes.BF16Array)
    return bits.view(_dtypes.bf16_dtype())


def _read(path):
    """All arrays of the file at ``path`` and its metadata; ValueError if it is not readable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ValueError("it holds a single array, not an .npz archive")
            if META_KEY not in npz.files:
                raise ValueError(f"it has no {META_KEY!r} entry (not written by fastopt.save)")
            arrays = {key: npz[key] for key in npz.files}   # reads (and CRC-checks) every member
        raw = arrays.pop(META_KEY)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"its {META_KEY!r} entry is not a uint8 vector")
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a readable fastopt checkpoint: {exc}") from exc
    except Exception as exc:   # zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, ...
        raise ValueError(
            f"{path!r} is not a readable fastopt checkpoint (truncated or corrupted?): "
            f"{type(exc).__name__}: {exc}") from exc
    return meta, arrays


def _require(cond, message):
    if not cond:
        raise ValueError(message)


def load(optimizer, path):
    """Restore ``optimizer`` from a file written by :func:`save`.

    The optimizer must be of the same class, with the same number of params in the same groups and
    the same shapes and dtypes. Everything is read and checked before anything is written; a
    truncated, corrupted, wrong-class or mismatched file raises ValueError naming the problem and
    leaves the optimizer (and its params) unchanged. When the file holds params (``save(...,
    params=True)``) they are copied into the optimizer's params.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import fastopt
    >>> p = np.ones(3)
    >>> opt = fastopt.Adam([p], lr=0.1)
    >>> _ = opt.step([np.ones(3)])
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "checkpoint.npz")
    >>> fastopt.save(opt, path)                       # the state only: restore the params yourself
    >>> q = p.copy()
    >>> resumed = fastopt.Adam([q], lr=0.1)
    >>> fastopt.load(resumed, path)
    >>> _ = opt.step([np.ones(3)]), resumed.step([np.ones(3)])
    >>> bool(np.array_equal(q, p))                    # the resumed run goes on identically
    True
    >>> fastopt.load(fastopt.SGD([q]), path)
    Traceback (most recent call last):
        ...
    ValueError: checkpoint '...checkpoint.npz' holds the state of a 'Adam' optimizer, not of a 'SGD'
    >>> folder.cleanup()
    """
    from .optimizer import Optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    path = os.fspath(path)
    meta, arrays = _read(path)
    where = f"checkpoint {path!r}"
    _require(isinstance(meta, dict) and meta.get("format") == FORMAT,
             f"{where} is not a fastopt checkpoint (no format marker)")
    version = meta.get("version")
    _require(isinstance(version, int) and not isinstance(version, bool),
             f"{where} has no valid format version")
    _require(1 <= version <= VERSION,
             f"{where} has format version {version}; this fastopt reads versions <= {VERSION}")
    cls = type(optimizer).__name__
    _require(meta.get("optimizer") == cls,
             f"{where} holds the state of a {meta.get('optimizer')!r} optimizer, not of a {cls!r}")

    plist = optimizer.params
    saved_params = meta.get("params")
    _require(isinstance(saved_params, list) and len(saved_params) == len(plist),
             f"{where} has {len(saved_params) if isinstance(saved_params, list) else '?'} params, "
             f"the optimizer has {len(plist)}")
    for i, (info, p) in enumerate(zip(saved_params, plist)):
        _require(isinstance(info, dict), f"{where}: params[{i}] entry is malformed")
        shape, dtype = info.get("shape"), info.get("dtype")
        _require(isinstance(shape, list) and tuple(shape) == p.shape,
                 f"{where}: params[{i}] has shape {shape}, the optimizer's has {list(p.shape)}")
        _require(dtype == _dtype_name(p),
                 f"{where}: params[{i}] has dtype {dtype}, the optimizer's has {_dtype_name(p)}")

    groups = meta.get("param_groups")
    _require(isinstance(groups, list) and all(isinstance(g, dict) for g in groups),
             f"{where}: param_groups is malformed")
    state = {}
    entries = meta.get("state")
    _require(isinstance(entries, list), f"{where}: state is malformed")
    for item in entries:
        _require(isinstance(item, dict) and isinstance(item.get("index"), int)
                 and isinstance(item.get("arrays"), dict),
                 f"{where}: a state entry is malformed")
        index = item["index"]
        _require(0 <= index < len(plist), f"{where}: state entry for param {index}, which does not exist")
        entry = {}
        if "step" in item:
            entry["step"] = item["step"]
        bfloat16 = item.get("bfloat16", [])
        _require(isinstance(bfloat16, list), f"{where}: state[{index}]['bfloat16'] is malformed")
        for name, key in item["arrays"].items():
            _require(isinstance(key, str) and key in arrays,
                     f"{where}: state[{index}][{name!r}] refers to a missing array {key!r}")
            value = arrays[key]
            if name in bfloat16:
                value = _bf16_like(value, plist[index])
            # shapes and dtypes (a param's, float32 for a master copy, the state dtype chosen,
            # a scalar's) are checked by load_state_dict, before anything is written
            entry[name] = value
        state[index] = entry

    new_params = None
    if meta.get("has_params"):
        new_params = []
        for i, p in enumerate(plist):
            value = arrays.get(f"param.{i}")
            _require(value is not None, f"{where}: param {i}'s values are missing")
            if saved_params[i].get("dtype") == "bfloat16":
                value = _bf16_like(value, p)
            _require(value.shape == p.shape and value.dtype == p.dtype,
                     f"{where}: param {i}'s values have shape {value.shape} and dtype {value.dtype}, "
                     f"the param has {p.shape} and {p.dtype}")
            _require(p.flags.writeable, f"params[{i}] of the optimizer is read-only now; cannot restore it")
            new_params.append(value)
    skipped = meta.get("skipped_steps", 0)
    _require(isinstance(skipped, int) and skipped >= 0, f"{where}: skipped_steps is malformed")

    seed = meta.get("stochastic_rounding_seed")
    _require(seed is None or (isinstance(seed, str) and seed.isdigit()),
             f"{where}: stochastic_rounding_seed is malformed")
    sd = {
        "state": state,
        "param_groups": [{key: _from_json(value) if key != "params" else value
                          for key, value in group.items()} for group in groups],
    }
    if seed is not None:
        sd["stochastic_rounding_seed"] = int(seed)
    try:
        optimizer.load_state_dict(sd)     # checks everything again, then writes
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} does not fit this optimizer: {exc}") from exc
    if new_params is not None:
        for p, value in zip(plist, new_params):
            np.copyto(p, value, casting="no")
    optimizer.skipped_steps = skipped
    optimizer.found_inf = bool(meta.get("found_inf", False))
