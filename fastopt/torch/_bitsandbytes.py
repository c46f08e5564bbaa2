"""Checkpoints in bitsandbytes' format, for the fastopt.torch classes that follow bitsandbytes'
optimizers (``AdamW8bit``, ``Lion8bit``, ...: declarations with ``bitsandbytes_states``).

bitsandbytes keeps a param's state as ``step`` (an int), ``state1`` and ``state2`` (uint8 codes, or
float32 below ``min_8bit_size`` elements or with ``optim_bits=32``), ``absmax1``/``absmax2`` (one
float32 per block of 256 elements) and ``qmap1``/``qmap2`` (the dynamic maps, signed and unsigned);
AdEMAMix's ``state1`` stacks its two momenta (``(2, *shape)``, ``absmax1`` ``(2, blocks)``). fastopt
keeps the same values under its state names (``exp_avg``, ``exp_avg_absmax``, ...), so
:func:`to_bitsandbytes` and :func:`from_bitsandbytes` only rename, stack and check: the codes,
maxima and maps are bitsandbytes' bit for bit, and a run continues either way.
"""
import torch

from .._core._dynamic_map import MAPS

#: State keys bitsandbytes may keep that fastopt recomputes (the update norm of max_unorm).
_RECOMPUTED = ("unorm_vec",)
#: bitsandbytes' ``state_dict()`` moves its quantization tensors (``state1``, ``absmax1``, ``qmap1``,
#: ...) into a dict under this key of each param's state, so that FSDP's gather skips them; its
#: ``load_state_dict`` takes them back out (and takes them unwrapped too).
WRAPPED = "__bnb_optimizer_quant_state__"
_WRAPPED_KEYS = ("state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2")


def _code_maps(algorithm):
    return {s.name: s.code_map for s in algorithm.state}


#: bitsandbytes' block of elements sharing one absmax: the only blocksize fastopt keeps.
_BLOCK = 256


def _check_codes(entry, slot, halves, where):
    """Refuse an 8-bit state ``slot`` of ``entry`` (bitsandbytes' names; it has an absmax or a
    qmap) whose codes are not uint8 or whose absmax does not count bitsandbytes' blocks of 256
    (``halves`` states stacked: AdEMAMix's state1). Shapes against the param, and a stacked state
    without its halves, are checked after."""
    codes, absmax = entry.get(f"state{slot}"), entry.get(f"absmax{slot}")
    if not isinstance(codes, torch.Tensor):
        return
    if codes.dtype != torch.uint8:
        raise TypeError(f"{where}['state{slot}'] has dtype {codes.dtype}; with its absmax{slot} "
                        f"and qmap{slot} it holds 8-bit codes, which are uint8")
    if not isinstance(absmax, torch.Tensor) or absmax.dim() < 1 \
            or (halves > 1 and (codes.dim() < 1 or codes.shape[0] != halves)):
        return
    per_state = codes.numel() // halves
    blocks = -(-per_state // _BLOCK)
    if absmax.shape[-1] != blocks:
        raise ValueError(
            f"{where}['absmax{slot}'] has {absmax.shape[-1]} blocks a state for {per_state} "
            f"elements; bitsandbytes' blocks of {_BLOCK} (the only blocksize fastopt keeps) make "
            f"{blocks}")


def _packs(spec):
    """Whether a ``bitsandbytes_groups`` entry packs this class's keys (else it is a constant)."""
    return isinstance(spec, tuple) and all(isinstance(k, str) for k in spec)


def to_bitsandbytes(algorithm, state_dict):
    """``state_dict`` (a fastopt.torch ``state_dict()``, changed in place) in bitsandbytes' format,
    its quantization tensors wrapped as bitsandbytes' own ``state_dict()`` wraps them."""
    maps = _code_maps(algorithm)
    for key, entry in state_dict["state"].items():
        out = {}
        if "step" in entry:
            step = entry["step"]
            out["step"] = int(step.item() if isinstance(step, torch.Tensor) else step)
        taken = {"step"}
        for slot, names in enumerate(algorithm.bitsandbytes_states, start=1):
            if names[0] not in entry:
                continue
            values = [entry[name] for name in names]
            out[f"state{slot}"] = values[0] if len(values) == 1 else torch.stack(values)
            taken.update(names)
            if names[0] + "_absmax" in entry:
                absmax = [entry[name + "_absmax"] for name in names]
                out[f"absmax{slot}"] = absmax[0] if len(absmax) == 1 else torch.stack(absmax)
                out[f"qmap{slot}"] = torch.tensor(MAPS[maps[names[0]]], dtype=torch.float32)
                taken.update(name + "_absmax" for name in names)
        out.update((name, value) for name, value in entry.items() if name not in taken)
        wrapped = {name: out.pop(name) for name in _WRAPPED_KEYS if name in out}
        if wrapped:
            out[WRAPPED] = wrapped
        state_dict["state"][key] = out
    for group in state_dict["param_groups"]:
        for name, spec in algorithm.bitsandbytes_groups.items():
            if name not in group:      # (a key of this class's that bitsandbytes lacks: kept)
                group[name] = tuple(group[k] for k in spec) if _packs(spec) else spec
    return state_dict


def from_bitsandbytes(algorithm, state_dict, group_keys):
    """A copy of ``state_dict`` (bitsandbytes' format, or this class's own) with fastopt's state
    names, and its groups with this class's keys (``group_keys``) in place of bitsandbytes' (SGD's
    ``betas`` unpacked into ``momentum`` and ``dampening``, say).

    Raises
    ------
    ValueError
        For a ``qmap`` that is not bitsandbytes' dynamic map of that state, an ``absmax`` whose
        length is not the count of blocks of 256 of its state, or a stacked state (AdEMAMix's
        ``state1``, ``absmax1``) without its two halves; the message names ``state_dict``'s entry.
        (Shapes against the params are checked with the rest of the state.)
    TypeError
        For 8-bit codes (a ``state`` with its ``absmax`` or ``qmap``) that are not uint8.
    """
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        return state_dict        # (the load refuses it, with its own words)
    maps = _code_maps(algorithm)
    state = {}
    for key, entry in state_dict["state"].items():
        if not isinstance(entry, dict):
            state[key] = entry
            continue
        entry = dict(entry)
        wrapped = entry.pop(WRAPPED, None)
        if isinstance(wrapped, dict):
            entry.update(wrapped)
        for name in _RECOMPUTED:
            entry.pop(name, None)
        for slot, names in enumerate(algorithm.bitsandbytes_states, start=1):
            where = f"state_dict['state'][{key}]"
            qmap = entry.pop(f"qmap{slot}", None)
            if qmap is not None:
                expected = torch.tensor(MAPS[maps[names[0]]], dtype=torch.float32)
                if not (isinstance(qmap, torch.Tensor) and qmap.shape == expected.shape
                        and torch.equal(qmap.detach().cpu().float(), expected)):
                    raise ValueError(
                        f"{where}['qmap{slot}'] is not bitsandbytes' {maps[names[0]]} dynamic map "
                        "(create_dynamic_map(signed="
                        f"{maps[names[0]] == 'signed'})), the only 8-bit format fastopt keeps")
            if qmap is not None or f"absmax{slot}" in entry:
                _check_codes(entry, slot, len(names), where)
            for prefix, suffix in ((f"state{slot}", ""), (f"absmax{slot}", "_absmax")):
                if prefix not in entry:
                    continue
                value = entry.pop(prefix)
                if len(names) == 1:
                    entry[names[0] + suffix] = value
                    continue
                if not isinstance(value, torch.Tensor) or value.dim() < 1 \
                        or value.shape[0] != len(names):
                    raise ValueError(f"{where}['{prefix}'] must stack {len(names)} states "
                                     f"({', '.join(names)}) along its first dimension, got "
                                     f"{tuple(getattr(value, 'shape', ()))}")
                for name, part in zip(names, value.unbind(0)):
                    entry[name + suffix] = part.contiguous()
        state[key] = entry
    groups = []
    for group in state_dict.get("param_groups", []):
        if isinstance(group, dict):
            group = dict(group)
            for name, spec in algorithm.bitsandbytes_groups.items():
                if name in group_keys:    # bitsandbytes lacks it: the value its rule implies
                    group.setdefault(name, spec)
                    continue
                value = group.pop(name, None)
                if _packs(spec) and isinstance(value, (tuple, list)) and len(value) == len(spec):
                    for k, v in zip(spec, value):
                        group.setdefault(k, v)
        groups.append(group)
    return {**state_dict, "state": state, "param_groups": groups}
