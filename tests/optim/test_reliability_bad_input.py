"""Bad-input matrix: every public entry point rejects bad arguments cleanly and changes nothing.

One table of cases, one parametrized test. Each case builds a context (an optimizer that has
already taken steps, or just arrays), makes one bad call, and must raise the expected exception
type with a message that names the argument. Afterwards the params, the gradients the call got and
the optimizer's ``state_dict()`` must be bit-identical to before, and the optimizer's lock free.
"""
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import numpy as np
import pytest

import fastopt
from fastopt.checkpoint import load, save
from reference import fingerprint


@dataclass
class Ctx:
    opt: Any = None
    params: List[np.ndarray] = field(default_factory=list)
    grads: List[np.ndarray] = field(default_factory=list)   # arrays a call may not modify
    path: Optional[str] = None
    extra: dict = field(default_factory=dict)


@dataclass
class Case:
    id: str
    setup: Callable[[str], Ctx]
    call: Callable[[Ctx], Any]
    exc: type
    match: str
    xfail: Optional[str] = None


# ------------------------------------------------------------------------------------------------
# Contexts
# ------------------------------------------------------------------------------------------------

def _rng():
    return np.random.default_rng(1234)


def _grads_like(params, rng):
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def stepped(cls, groups_kw=({}, {"lr": 0.01}), steps=2, **kw):
    """An optimizer of ``cls`` over 3 params in 2 groups (mixed dtypes) after ``steps`` steps."""
    def make(tmp):
        rng = _rng()
        p0 = rng.standard_normal(5)
        p1 = rng.standard_normal((2, 3)).astype(np.float32)
        p2 = rng.standard_normal(4)
        groups = [dict(groups_kw[0], params=[p0, p1]), dict(groups_kw[1], params=[p2])]
        opt = cls(groups, **kw)
        params = [p0, p1, p2]
        for _ in range(steps):
            opt.step(_grads_like(params, rng))
        return Ctx(opt=opt, params=params, grads=_grads_like(params, rng), path=os.path.join(tmp, "ck.npz"))
    return make


adam2 = stepped(fastopt.Adam, ({}, {"lr": 0.01, "amsgrad": True}), lr=0.1)
sgd2 = stepped(fastopt.SGD, ({}, {"momentum": 0.5}), lr=0.1, momentum=0.9, nesterov=True)
rms2 = stepped(fastopt.RMSprop, ({}, {"centered": True}), momentum=0.5)
adagrad2 = stepped(fastopt.Adagrad, ({}, {"lr_decay": 0.1}), initial_accumulator_value=0.1)
adamw_skip = stepped(fastopt.AdamW, skip_nonfinite=True)


def arrays(*specs):
    """A context with just arrays (for constructors and clipping): specs are (shape, dtype)."""
    def make(tmp):
        rng = _rng()
        made = [rng.standard_normal(shape).astype(dtype) for shape, dtype in specs]
        return Ctx(params=made, grads=made, path=os.path.join(tmp, "ck.npz"))
    return make


def plain(tmp):
    return Ctx(path=os.path.join(tmp, "ck.npz"))


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def unaligned(n, dtype=np.float64):
    itemsize = np.dtype(dtype).itemsize
    buf = bytearray(n * itemsize + 1)
    return np.frombuffer(buf, dtype=dtype, count=n, offset=1)


def overlapping_grad(tmp):
    """An SGD whose param is base[:6], and a grad base[3:9] overlapping it (same shape and dtype)."""
    base = np.arange(12, dtype=np.float64)
    p = base[:6]
    opt = fastopt.SGD([p], lr=0.1, momentum=0.9)
    opt.step([np.ones(6)])
    return Ctx(opt=opt, params=[base], extra={"grad": base[3:9]})


def with_group(ctx, g, **kw):
    for key, value in kw.items():
        ctx.opt.param_groups[g][key] = value
    return ctx


def modified_sd(ctx, fn):
    sd = ctx.opt.state_dict()
    fn(sd)
    return sd


def saved(cls_setup, **save_kw):
    """A context whose optimizer was just saved to ctx.path."""
    def make(tmp):
        ctx = cls_setup(tmp)
        save(ctx.opt, ctx.path, **save_kw)
        return ctx
    return make


def other_opt_ckpt(make_other):
    """The context of adam2, with a checkpoint of another optimizer at ctx.path."""
    def make(tmp):
        ctx = adam2(tmp)
        other = make_other()
        save(other, ctx.path)
        return ctx
    return make


def rewrite_meta(fn):
    """adam2 saved, then its JSON metadata changed by ``fn`` (arrays kept)."""
    def make(tmp):
        ctx = adam2(tmp)
        save(ctx.opt, ctx.path)
        with np.load(ctx.path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(data["__fastopt__"].tobytes())
        fn(meta)
        data["__fastopt__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(ctx.path, "wb") as f:
            np.savez(f, **data)
        return ctx
    return make


def file_with(content):
    def make(tmp):
        ctx = adam2(tmp)
        data = content(ctx)
        with open(ctx.path, "wb") as f:
            f.write(data)
        return ctx
    return make


def truncated(ctx):
    save(ctx.opt, ctx.path)
    with open(ctx.path, "rb") as f:
        data = f.read()
    return data[: len(data) // 2]


def npy_bytes(ctx):
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


def _npz_bytes(**arrays):
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def then(setup, fn):
    def make(tmp):
        ctx = setup(tmp)
        fn(ctx)
        return ctx
    return make


F32, F64 = np.float32, np.float64

CASES = [
    # --- constructors -------------------------------------------------------------------------
    Case("ctor_params_single_array", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params[0]),
         TypeError, r"params must be an iterable"),
    Case("ctor_params_dict_not_list", arrays(((3,), F64)), lambda c: fastopt.SGD({"params": c.params}),
         TypeError, r"params must be an iterable"),
    Case("ctor_params_empty", plain, lambda c: fastopt.Adam([]), ValueError, r"params is empty"),
    Case("ctor_param_int_dtype", plain, lambda c: fastopt.SGD([np.zeros(3, dtype=np.int64)]),
         TypeError, r"params\[0\] must have dtype float32, float64, float16 or bfloat16.*got int64"),
    Case("ctor_param_uint16", plain, lambda c: fastopt.Adam([np.zeros(3), np.zeros(3, np.uint16)]),
         TypeError, r"params\[1\] must have dtype .*uint16"),
    Case("ctor_param_complex", plain, lambda c: fastopt.RMSprop([np.zeros(3, np.complex128)]),
         TypeError, r"params\[0\] must have dtype"),
    Case("ctor_param_noncontiguous", arrays(((4, 4), F64)), lambda c: fastopt.SGD([c.params[0][:, ::2]]),
         ValueError, r"params\[0\] must be C-contiguous"),
    Case("ctor_param_fortran", arrays(((4, 3), F64)), lambda c: fastopt.Adagrad([np.asfortranarray(c.params[0])]),
         ValueError, r"params\[0\] must be C-contiguous"),
    Case("ctor_param_readonly", plain, lambda c: fastopt.Adam([readonly(np.zeros(3))]),
         ValueError, r"params\[0\] is read-only"),
    Case("ctor_param_unaligned", plain, lambda c: fastopt.SGD([unaligned(4)]),
         ValueError, r"params\[0\] must be aligned"),
    Case("ctor_param_python_list", plain, lambda c: fastopt.SGD([[1.0, 2.0]]),
         TypeError, r"params\[0\] must be an array that can be updated in place"),
    Case("ctor_param_none", plain, lambda c: fastopt.SGD([np.zeros(2), None]),
         TypeError, r"params\[1\] must be a float32, float64, float16 or bfloat16 array"),
    Case("ctor_param_twice", arrays(((3,), F64)), lambda c: fastopt.SGD([c.params[0], c.params[0]]),
         ValueError, r"params\[0\] and params\[1\] share memory"),
    Case("ctor_param_overlapping_views", arrays(((8,), F64)),
         lambda c: fastopt.Adam([c.params[0][:5], c.params[0][3:]]),
         ValueError, r"params\[0\] and params\[1\] share memory"),
    Case("ctor_params_set", arrays(((3,), F64)), lambda c: fastopt.SGD([{"params": {1, 2}}]),
         TypeError, r"params must be an ordered collection"),
    Case("ctor_lr_negative", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params, lr=-0.1),
         ValueError, r"lr must be >= 0"),
    Case("ctor_lr_nan", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, lr=float("nan")),
         ValueError, r"lr must be finite"),
    Case("ctor_lr_inf_float32", arrays(((3,), F32)), lambda c: fastopt.Adagrad(c.params, lr=np.float32("inf")),
         ValueError, r"lr must be finite"),
    Case("ctor_lr_huge_int", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params, lr=10 ** 400),
         ValueError, r"lr must be finite"),
    Case("ctor_lr_string", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params, lr="0.1"),
         TypeError, r"lr must be a real number"),
    Case("ctor_lr_vector", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, lr=np.array([0.1, 0.2])),
         TypeError, r"lr must be a real number"),
    Case("ctor_sgd_nesterov_no_momentum", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params, nesterov=True),
         ValueError, r"nesterov=True requires momentum > 0"),
    Case("ctor_sgd_nesterov_int", arrays(((3,), F64)),
         lambda c: fastopt.SGD(c.params, momentum=0.9, nesterov=1),
         TypeError, r"nesterov must be True or False"),
    Case("ctor_sgd_momentum_negative", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params, momentum=-0.5),
         ValueError, r"momentum must be >= 0"),
    Case("ctor_adam_beta1_one", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, betas=(1.0, 0.999)),
         ValueError, r"betas\[0\] must be < 1"),
    Case("ctor_adam_beta2_nan", arrays(((3,), F64)), lambda c: fastopt.AdamW(c.params, betas=(0.9, float("nan"))),
         ValueError, r"betas\[1\] must be finite"),
    Case("ctor_adam_betas_scalar", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, betas=0.9),
         TypeError, r"betas must be a pair"),
    Case("ctor_adam_betas_triple", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, betas=(0.9, 0.99, 0.999)),
         TypeError, r"betas must be a pair"),
    Case("ctor_adam_eps_negative", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, eps=-1e-8),
         ValueError, r"eps must be >= 0"),
    Case("ctor_adamw_weight_decay_inf", arrays(((3,), F64)), lambda c: fastopt.AdamW(c.params, weight_decay=float("inf")),
         ValueError, r"weight_decay must be finite"),
    Case("ctor_adam_amsgrad_str", arrays(((3,), F64)), lambda c: fastopt.Adam(c.params, amsgrad="yes"),
         TypeError, r"amsgrad must be True or False"),
    Case("ctor_rmsprop_alpha_negative", arrays(((3,), F64)), lambda c: fastopt.RMSprop(c.params, alpha=-0.1),
         ValueError, r"alpha must be >= 0"),
    Case("ctor_rmsprop_centered_none", arrays(((3,), F64)), lambda c: fastopt.RMSprop(c.params, centered=None),
         TypeError, r"centered must be True or False"),
    Case("ctor_adagrad_lr_decay_negative", arrays(((3,), F64)), lambda c: fastopt.Adagrad(c.params, lr_decay=-1.0),
         ValueError, r"lr_decay must be >= 0"),
    Case("ctor_adagrad_initial_acc_negative", arrays(((3,), F64)),
         lambda c: fastopt.Adagrad(c.params, initial_accumulator_value=-0.1),
         ValueError, r"initial_accumulator_value must be >= 0"),
    Case("ctor_skip_nonfinite_int", arrays(((3,), F64)), lambda c: fastopt.SGD(c.params, skip_nonfinite=1),
         TypeError, r"skip_nonfinite must be True or False"),
    Case("ctor_second_group_bad_lr", arrays(((3,), F64), ((2,), F64)),
         lambda c: fastopt.SGD([{"params": [c.params[0]]}, {"params": [c.params[1]], "lr": -1}]),
         ValueError, r"lr must be >= 0"),

    # --- step -----------------------------------------------------------------------------------
    Case("step_grads_none", adam2, lambda c: c.opt.step(None), TypeError, r"grads must be a list"),
    Case("step_grads_int", adam2, lambda c: c.opt.step(3), TypeError, r"grads must be a list"),
    Case("step_grads_too_few", adam2, lambda c: c.opt.step(c.grads[:2]),
         ValueError, r"grads has 2 entries, but the optimizer has 3 params"),
    Case("step_grads_too_many", sgd2, lambda c: c.opt.step(c.grads + [c.grads[0]]),
         ValueError, r"grads has 4 entries"),
    Case("step_single_array_many_params", adam2, lambda c: c.opt.step(c.grads[0]),
         TypeError, r"grads must be a list of 3 arrays"),
    Case("step_grad_wrong_dtype", adam2, lambda c: c.opt.step([c.grads[0], c.grads[1].astype(F64), c.grads[2]]),
         TypeError, r"grads\[1\] has dtype float64, but its param has dtype float32"),
    Case("step_grad_int_dtype", rms2, lambda c: c.opt.step([c.grads[0], c.grads[1], np.ones(4, np.int64)]),
         TypeError, r"grads\[2\] has dtype int64"),
    Case("step_grad_wrong_shape", adam2, lambda c: c.opt.step([c.grads[0], c.grads[1].reshape(3, 2), c.grads[2]]),
         ValueError, r"grads\[1\] has shape \(3, 2\), but its param has shape \(2, 3\)"),
    Case("step_grad_wrong_ndim", sgd2, lambda c: c.opt.step([c.grads[0], c.grads[1].ravel(), c.grads[2]]),
         ValueError, r"grads\[1\] has shape \(6,\)"),
    Case("step_grad_fortran", adagrad2,
         lambda c: c.opt.step([c.grads[0], np.asfortranarray(c.grads[1].reshape(3, 2).T), c.grads[2]]),
         ValueError, r"grads\[1\] must be C-contiguous"),
    Case("step_grad_strided", adam2, lambda c: c.opt.step([np.zeros(10)[::2], c.grads[1], c.grads[2]]),
         ValueError, r"grads\[0\] must be C-contiguous"),
    Case("step_grad_unaligned", sgd2, lambda c: c.opt.step([c.grads[0], c.grads[1], unaligned(4)]),
         ValueError, r"grads\[2\] must be aligned"),
    Case("step_grad_is_its_param", adam2, lambda c: c.opt.step([c.grads[0], c.grads[1], c.params[2]]),
         ValueError, r"grads\[2\] shares memory with its param"),
    Case("step_grad_overlaps_its_param", overlapping_grad, lambda c: c.opt.step([c.extra["grad"]]),
         ValueError, r"grads\[0\] shares memory with its param"),
    Case("step_grad_is_its_param_skip_nonfinite", adamw_skip, lambda c: c.opt.step([c.params[0], c.grads[1], c.grads[2]]),
         ValueError, r"grads\[0\] shares memory with its param"),
    Case("step_grad_object_dtype", rms2, lambda c: c.opt.step([c.grads[0], c.grads[1], np.array([None] * 4)]),
         TypeError, r"grads\[2\] has dtype object"),
    Case("step_grad_string", adagrad2, lambda c: c.opt.step(["abcde", c.grads[1], c.grads[2]]),
         TypeError, r"grads\[0\] must be a float32, float64, float16 or bfloat16 array"),
    Case("step_grad_nested_list_wrong_len", adam2, lambda c: c.opt.step([[1.0, 2.0], c.grads[1], c.grads[2]]),
         ValueError, r"grads\[0\] has shape \(2,\)"),
    Case("step_last_grad_bad_other_groups_untouched", sgd2,
         lambda c: c.opt.step([c.grads[0], c.grads[1], c.grads[2].astype(F32)]),
         TypeError, r"grads\[2\] has dtype float32"),
    Case("step_skip_nonfinite_bad_shape", adamw_skip, lambda c: c.opt.step([c.grads[0], c.grads[1], np.ones(5)]),
         ValueError, r"grads\[2\] has shape"),
    Case("step_lr_set_nan_between_steps", then(adam2, lambda c: with_group(c, 0, lr=float("nan"))),
         lambda c: c.opt.step(c.grads), ValueError, r"lr must be finite"),
    Case("step_lr_set_negative_second_group", then(sgd2, lambda c: with_group(c, 1, lr=-1e-3)),
         lambda c: c.opt.step(c.grads), ValueError, r"lr must be >= 0"),
    Case("step_betas_set_bad_second_group", then(adam2, lambda c: with_group(c, 1, betas=(0.9, 1.5))),
         lambda c: c.opt.step(c.grads), ValueError, r"betas\[1\] must be < 1"),
    Case("step_momentum_set_inf", then(rms2, lambda c: with_group(c, 0, momentum=float("inf"))),
         lambda c: c.opt.step(c.grads), ValueError, r"momentum must be finite"),
    Case("step_nesterov_set_without_momentum", then(sgd2, lambda c: with_group(c, 0, momentum=0.0)),
         lambda c: c.opt.step(c.grads), ValueError, r"nesterov=True requires momentum > 0"),
    Case("step_eps_set_string", then(adagrad2, lambda c: with_group(c, 1, eps="tiny")),
         lambda c: c.opt.step(c.grads), TypeError, r"eps must be a real number"),
    Case("step_group_updated_with_update", then(adam2, lambda c: c.opt.param_groups[0].update(weight_decay=-1)),
         lambda c: c.opt.step(c.grads), ValueError, r"weight_decay must be >= 0"),
    Case("step_group_replaced_by_plain_dict",
         then(adagrad2, lambda c: c.opt.param_groups.__setitem__(0, dict(c.opt.param_groups[0], lr_decay=-1))),
         lambda c: c.opt.step(c.grads), ValueError, r"lr_decay must be >= 0"),
    Case("step_hyper_deleted", then(rms2, lambda c: c.opt.param_groups[1].pop("alpha")),
         lambda c: c.opt.step(c.grads), ValueError, r"param group has no 'alpha'"),
    Case("step_group_params_changed", then(adam2, lambda c: c.opt.param_groups[1]["params"].append(np.zeros(2))),
         lambda c: c.opt.step(c.grads + [np.zeros(2)]),
         ValueError, r"grads has 4 entries"),
    Case("step_group_params_replaced", then(sgd2, lambda c: c.opt.param_groups[0].__setitem__("params", [c.params[0]])),
         lambda c: c.opt.step(c.grads), RuntimeError, r"param_groups\[0\]\['params'\] was changed by hand"),
    Case("step_param_groups_appended",
         then(adam2, lambda c: c.opt.param_groups.append(dict(c.opt.param_groups[0]))),
         lambda c: c.opt.step(c.grads), RuntimeError, r"param_groups was resized by hand"),

    # --- add_param_group --------------------------------------------------------------------------
    Case("apg_not_dict", adam2, lambda c: c.opt.add_param_group([np.zeros(2)]),
         TypeError, r"param_group must be a dict"),
    Case("apg_no_params", adam2, lambda c: c.opt.add_param_group({"lr": 0.1}),
         ValueError, r"param_group must have a 'params' entry"),
    Case("apg_empty_params", sgd2, lambda c: c.opt.add_param_group({"params": []}),
         ValueError, r"param group 2 has no params"),
    Case("apg_param_already_present", adam2, lambda c: c.opt.add_param_group({"params": [c.params[1]]}),
         ValueError, r"params\[1\] and params\[3\] share memory"),
    Case("apg_bad_hyper", rms2, lambda c: c.opt.add_param_group({"params": [np.zeros(2)], "alpha": float("nan")}),
         ValueError, r"alpha must be finite"),
    Case("apg_bad_param_after_good", adagrad2,
         lambda c: c.opt.add_param_group({"params": [np.zeros(2), np.zeros(2, np.int32)]}),
         TypeError, r"params\[4\] must have dtype"),

    # --- load_state_dict ------------------------------------------------------------------------
    Case("lsd_not_dict", adam2, lambda c: c.opt.load_state_dict([1, 2]),
         TypeError, r"state_dict must be a dict with 'state' and 'param_groups'"),
    Case("lsd_group_count", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["param_groups"].pop())),
         ValueError, r"state_dict has 1 param groups, the optimizer has 2"),
    Case("lsd_params_mismatch", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["param_groups"][0].__setitem__("params", [0]))),
         ValueError, r"state_dict\['param_groups'\]\[0\] has params \[0\], expected \[0, 1\]"),
    Case("lsd_params_not_list", sgd2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["param_groups"][1].__setitem__("params", 2))),
         TypeError, r"state_dict\['param_groups'\]\[1\]\['params'\] must be a list"),
    Case("lsd_missing_hyper", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["param_groups"][1].pop("betas"))),
         ValueError, r"state_dict\['param_groups'\]\[1\] has no 'betas'"),
    Case("lsd_bad_hyper", rms2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0))),
         ValueError, r"state_dict\['param_groups'\]\[0\]: lr must be >= 0"),
    Case("lsd_state_wrong_shape", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][1].__setitem__("exp_avg", np.zeros(6, F32)))),
         ValueError, r"state_dict\['state'\]\[1\]\['exp_avg'\] has shape \(6,\)"),
    Case("lsd_state_wrong_dtype", adagrad2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][1].__setitem__("sum", np.zeros((2, 3))))),
         TypeError, r"state_dict\['state'\]\[1\]\['sum'\] has dtype float64"),
    Case("lsd_state_not_array", sgd2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][2].__setitem__("momentum_buffer", [0.0] * 4))),
         TypeError, r"state_dict\['state'\]\[2\]\['momentum_buffer'\] must be an ndarray"),
    Case("lsd_state_unknown_entry", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][0].__setitem__("velocity", np.zeros(5)))),
         ValueError, r"state_dict\['state'\]\[0\] has unknown entries \['velocity'\]"),
    Case("lsd_state_bad_index", rms2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"].__setitem__(7, sd["state"][0]))),
         ValueError, r"state_dict\['state'\] has key 7"),
    Case("lsd_state_str_index", rms2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"].__setitem__("0", sd["state"].pop(0)))),
         ValueError, r"state_dict\['state'\] has key '0'"),
    Case("lsd_step_negative", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][2].__setitem__("step", -1))),
         ValueError, r"state_dict\['state'\]\[2\]\['step'\] must be a whole number"),
    Case("lsd_step_fraction", adagrad2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][0].__setitem__("step", 2.5))),
         ValueError, r"state_dict\['state'\]\[0\]\['step'\] must be a whole number"),
    Case("lsd_step_beyond_int64", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][2].__setitem__("step", 2 ** 70))),
         ValueError, r"state_dict\['state'\]\[2\]\['step'\] must be a whole number in \[0, 2\*\*53\]"),
    Case("lsd_missing_buffer", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][0].pop("exp_avg_sq"))),
         ValueError, r"state_dict\['state'\]\[0\] has no 'exp_avg_sq'"),
    Case("lsd_amsgrad_without_max", adam2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["param_groups"][0].__setitem__("amsgrad", True))),
         ValueError, r"state_dict\['state'\]\[0\] has no 'max_exp_avg_sq'"),
    Case("lsd_missing_step", rms2,
         lambda c: c.opt.load_state_dict(modified_sd(c, lambda sd: sd["state"][1].pop("step"))),
         ValueError, r"state_dict\['state'\]\[1\] has no 'step'"),

    # --- clipping -------------------------------------------------------------------------------
    Case("clip_norm_max_norm_negative", arrays(((5,), F64)), lambda c: fastopt.clip_grad_norm_(c.grads, -1.0),
         ValueError, r"max_norm must be >= 0"),
    Case("clip_norm_max_norm_nan", arrays(((5,), F64)), lambda c: fastopt.clip_grad_norm_(c.grads, float("nan")),
         ValueError, r"max_norm must be finite"),
    Case("clip_norm_type_zero", arrays(((5,), F64)), lambda c: fastopt.clip_grad_norm_(c.grads, 1.0, norm_type=0),
         ValueError, r"norm_type must be > 0"),
    Case("clip_norm_type_str", arrays(((5,), F64)), lambda c: fastopt.clip_grad_norm_(c.grads, 1.0, norm_type="fro"),
         ValueError, r"norm_type must be a number > 0 or 'inf'"),
    Case("clip_norm_grads_none", plain, lambda c: fastopt.clip_grad_norm_(None, 1.0),
         TypeError, r"grads must be an array or a sequence of arrays"),
    Case("clip_norm_grad_int_dtype", arrays(((5,), F64)),
         lambda c: fastopt.clip_grad_norm_([c.grads[0], np.ones(3, np.int32)], 0.1),
         TypeError, r"grads\[1\] must be float32, float64, float16 or bfloat16"),
    Case("clip_norm_second_grad_readonly", arrays(((5,), F64), ((3,), F32)),
         lambda c: fastopt.clip_grad_norm_([c.grads[0], readonly(c.grads[1])], 0.1),
         ValueError, r"grads\[1\] is read-only"),
    Case("clip_norm_none_entry", arrays(((5,), F64)), lambda c: fastopt.clip_grad_norm_([c.grads[0], None], 0.1),
         TypeError, r"grads\[1\] is None"),
    Case("clip_norm_nonfinite_error", then(arrays(((5,), F64), ((3,), F32)), lambda c: c.grads[1].__setitem__(2, np.inf)),
         lambda c: fastopt.clip_grad_norm_(c.grads, 0.1, error_if_nonfinite=True),
         RuntimeError, r"non-finite"),
    Case("clip_norm_error_flag_int", arrays(((5,), F64)),
         lambda c: fastopt.clip_grad_norm_(c.grads, 0.1, error_if_nonfinite=1),
         TypeError, r"error_if_nonfinite must be True or False"),
    Case("clip_value_nan", arrays(((5,), F64)), lambda c: fastopt.clip_grad_value_(c.grads, float("nan")),
         ValueError, r"clip_value must be finite"),
    Case("clip_value_negative", arrays(((5,), F64)), lambda c: fastopt.clip_grad_value_(c.grads, -0.5),
         ValueError, r"clip_value must be >= 0"),
    Case("clip_value_noncontiguous", arrays(((4, 4), F32)), lambda c: fastopt.clip_grad_value_([c.grads[0][:, 1]], 0.1),
         ValueError, r"grads\[0\] must be C-contiguous"),
    Case("clip_value_string_grads", plain, lambda c: fastopt.clip_grad_value_(5, 0.1),
         TypeError, r"grads must be an array or a sequence"),

    Case("grads_finite_none", plain, lambda c: fastopt.grads_finite(None),
         TypeError, r"grads must be an array or a sequence"),
    Case("grads_finite_int_dtype", arrays(((5,), F64)), lambda c: fastopt.grads_finite([c.grads[0], np.ones(2, np.int8)]),
         TypeError, r"grads\[1\] must be float32, float64, float16 or bfloat16"),

    # --- set_num_threads --------------------------------------------------------------------------
    Case("threads_negative", plain, lambda c: fastopt.set_num_threads(-1), ValueError, r"num_threads must be"),
    Case("threads_none", plain, lambda c: fastopt.set_num_threads(None), TypeError, r"num_threads must be an integer"),
    Case("threads_float", plain, lambda c: fastopt.set_num_threads(1.5), TypeError, r"num_threads must be an integer"),
    Case("threads_huge", plain, lambda c: fastopt.set_num_threads(2 ** 40), ValueError, r"num_threads must be in"),

    # --- checkpoints ------------------------------------------------------------------------------
    Case("save_not_optimizer", plain, lambda c: save({"state": {}}, c.path), TypeError, r"optimizer must be a fastopt optimizer"),
    Case("save_params_flag_str", adam2, lambda c: save(c.opt, c.path, params="yes"), TypeError, r"params must be True or False"),
    Case("save_unstorable_hyper", then(adam2, lambda c: c.opt.param_groups[1].__setitem__("tag", object())),
         lambda c: save(c.opt, c.path), ValueError, r"param_groups\[1\]\['tag'\] is a object"),
    Case("save_missing_directory", adam2, lambda c: save(c.opt, os.path.join(c.path, "no", "such", "dir.npz")),
         FileNotFoundError, r"No such file"),
    Case("load_not_optimizer", plain, lambda c: load(None, c.path), TypeError, r"optimizer must be a fastopt optimizer"),
    Case("load_missing_file", adam2, lambda c: load(c.opt, c.path), FileNotFoundError, r"ck\.npz"),
    Case("load_empty_file", file_with(lambda c: b""), lambda c: load(c.opt, c.path),
         ValueError, r"not a readable fastopt checkpoint"),
    Case("load_truncated", file_with(truncated), lambda c: load(c.opt, c.path),
         ValueError, r"not a readable fastopt checkpoint \(truncated or corrupted\?\)"),
    Case("load_npy_not_npz", file_with(npy_bytes), lambda c: load(c.opt, c.path),
         ValueError, r"not a readable fastopt checkpoint"),
    Case("load_foreign_npz", file_with(lambda c: _npz_bytes(a=np.zeros(3))),
         lambda c: load(c.opt, c.path), ValueError, r"has no '__fastopt__' entry"),
    Case("load_wrong_class_sgd", other_opt_ckpt(lambda: fastopt.SGD([np.zeros(5), np.zeros((2, 3), F32), np.zeros(4)])),
         lambda c: load(c.opt, c.path), ValueError, r"holds the state of a 'SGD' optimizer, not of a 'Adam'"),
    Case("load_wrong_class_adamw", other_opt_ckpt(lambda: fastopt.AdamW([np.zeros(5), np.zeros((2, 3), F32), np.zeros(4)])),
         lambda c: load(c.opt, c.path), ValueError, r"'AdamW' optimizer, not of a 'Adam'"),
    Case("load_param_count", other_opt_ckpt(lambda: fastopt.Adam([np.zeros(5), np.zeros((2, 3), F32)])),
         lambda c: load(c.opt, c.path), ValueError, r"has 2 params, the optimizer has 3"),
    Case("load_shape_mismatch", other_opt_ckpt(lambda: fastopt.Adam([np.zeros(5), np.zeros((3, 2), F32), np.zeros(4)])),
         lambda c: load(c.opt, c.path), ValueError, r"params\[1\] has shape \[3, 2\]"),
    Case("load_dtype_mismatch", other_opt_ckpt(lambda: fastopt.Adam([np.zeros(5), np.zeros((2, 3)), np.zeros(4)])),
         lambda c: load(c.opt, c.path), ValueError, r"params\[1\] has dtype float64"),
    Case("load_grouping_mismatch",
         other_opt_ckpt(lambda: fastopt.Adam([{"params": [np.zeros(5)]}, {"params": [np.zeros((2, 3), F32), np.zeros(4)]}])),
         lambda c: load(c.opt, c.path), ValueError, r"does not fit this optimizer: .*param_groups'\]\[0\] has params \[0\]"),
    Case("load_future_version", rewrite_meta(lambda m: m.__setitem__("version", 99)),
         lambda c: load(c.opt, c.path), ValueError, r"format version 99"),
    Case("load_bad_hyper_in_file", rewrite_meta(lambda m: m["param_groups"][0].__setitem__("eps", -1.0)),
         lambda c: load(c.opt, c.path), ValueError, r"eps must be >= 0"),
    Case("load_state_array_missing", rewrite_meta(lambda m: m["state"][0]["arrays"].__setitem__("exp_avg", "nope")),
         lambda c: load(c.opt, c.path), ValueError, r"state\[0\]\['exp_avg'\] refers to a missing array"),
    Case("load_state_array_swapped", rewrite_meta(lambda m: m["state"][0]["arrays"].__setitem__("exp_avg", "state.1.exp_avg")),
         lambda c: load(c.opt, c.path), ValueError, r"state_dict\['state'\]\[0\]\['exp_avg'\] has shape \(2, 3\)"),
]


# ------------------------------------------------------------------------------------------------
# The test
# ------------------------------------------------------------------------------------------------

def snapshot(ctx):
    """Bytes of everything a bad call must not change."""
    out = [("param", p.dtype.str, p.shape, p.tobytes()) for p in ctx.params]
    out += [("grad", g.dtype.str, g.shape, g.tobytes()) for g in ctx.grads]
    if ctx.opt is not None:
        out += fingerprint(ctx.opt, ctx.params)
        out.append(("counters", ctx.opt.skipped_steps, ctx.opt.found_inf))
    return out


def _params(case):
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_case_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", [_params(c) for c in CASES])
def test_bad_input(case, tmp_path):
    try:
        ctx = case.setup(str(tmp_path))
        before = snapshot(ctx)
        files_before = sorted(os.listdir(tmp_path))
        with pytest.raises(case.exc) as info:
            case.call(ctx)
        assert re.search(case.match, str(info.value)), f"message {str(info.value)!r} does not match {case.match!r}"
        assert snapshot(ctx) == before, "a rejected call changed params, grads or optimizer state"
        if ctx.opt is not None:
            assert not ctx.opt._lock.locked(), "a rejected call left the optimizer locked"
        # no temporary files left behind by a failed save
        assert [f for f in os.listdir(tmp_path) if f.startswith(".fastopt-")] == []
        if case.id.startswith("save_"):
            assert sorted(os.listdir(tmp_path)) == files_before
    finally:
        fastopt.set_num_threads(0)   # the default; the set_num_threads cases may have changed it


@pytest.mark.parametrize("make", [adam2, sgd2, rms2, adagrad2, adamw_skip], ids=["adam", "sgd", "rmsprop", "adagrad", "adamw_skip"])
def test_still_usable_after_rejections(make, tmp_path):
    """After a string of rejected calls an optimizer steps exactly like one that never saw them."""
    ctx, ref = make(str(tmp_path)), make(str(tmp_path))
    for bad in ([ctx.grads[0]], [ctx.grads[0], ctx.grads[1], ctx.params[2]],
                [ctx.grads[0], ctx.grads[1].astype(F64), ctx.grads[2]]):
        with pytest.raises((TypeError, ValueError)):
            ctx.opt.step(bad)
    with pytest.raises(ValueError):
        ctx.opt.load_state_dict(modified_sd(ctx, lambda sd: sd["state"].__setitem__(9, {})))
    ctx.opt.step(ctx.grads)
    ref.opt.step(ref.grads)
    for a, b in zip(ctx.params, ref.params):
        assert a.tobytes() == b.tobytes()


def test_list_subclass_and_nested_list_grads_are_safe():
    """Regression: a list subclass of grads crashed the gather; a nested-list grad was read after free."""
    class GradList(list):
        pass
    n = 300_000
    w1, w2 = np.zeros(n), np.zeros(n)
    o1, o2 = fastopt.SGD([w1], lr=0.5), fastopt.SGD([w2], lr=0.5)
    g = np.random.default_rng(0).standard_normal(n)
    o1.step(GradList([g]))
    o2.step([g.tolist()])
    expected = np.zeros(n) - 0.5 * g
    assert w1.tobytes() == expected.tobytes()
    assert w2.tobytes() == expected.tobytes()
