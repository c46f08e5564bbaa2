"""The flat mode of fastopt.torch (``flat=True``, ``flatten_``): the same trajectories as the
per-tensor path, bit for bit, through every user action the flat step detects; its fallbacks;
checkpoints that interchange with torch.optim; and what it refuses."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402
from fastopt.torch import _compat  # noqa: E402

#: The algorithms whose step is elementwise (those with a driver read whole params: flat refused)
FLAT_ALGORITHMS = sorted(name for name in ft.__all__
                         if name not in ("LBFGS", "FlatParams", "flatten_")
                         and getattr(ft, name)._fastopt_cls.algorithm.driver is None)
PER_TENSOR = "flat=True: the optimizer steps per tensor"


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).to(dtype)


def batches(steps, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=g).to(dtype), torch.randn(16, 3, generator=g).to(dtype))
            for _ in range(steps)]


def loss_of(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x).float(), y.float())


def train(flat, steps=6, action=None, cls=ft.Adam, dtype=torch.float32, micro=1, **kwargs):
    """(model, optimizer, warnings) after ``steps`` steps; ``action(model, opt, step)`` runs after
    backward, before the step. The per-tensor run zeroes gradients as the flat mode does."""
    model = make_model(dtype)
    opt = cls(model.parameters(), flat=flat, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t, batch in enumerate(batches(steps, dtype)):
            if flat:
                opt.zero_grad()
            else:
                opt.zero_grad(set_to_none=False)
            for _ in range(micro):
                loss_of(model, batch).backward()
            if action is not None:
                action(model, opt, t)
            opt.step()
    return model, opt, [str(w.message) for w in caught if PER_TENSOR in str(w.message)]


def assert_same_run(a, b):
    (ma, oa), (mb, ob) = a[:2], b[:2]
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for name, value in sa["state"][i].items():
            other = sb["state"][i][name]
            if isinstance(value, dict):     # (bitsandbytes' classes: their wrapped state1, ...)
                assert value.keys() == other.keys()
                for key in value:
                    assert torch.equal(value[key], other[key]), (i, name, key)
                continue
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (i, name)


def ran_flat(opt):
    return type(opt._runner).__name__ == "FlatRunner"


# -- trajectories --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FLAT_ALGORITHMS)
def test_flat_steps_as_the_per_tensor_path_bit_for_bit(name):
    cls = getattr(ft, name)
    kwargs = {"lr": 1e-2} if name not in ("Adadelta",) else {}
    if cls._fastopt_cls.algorithm.bitsandbytes_states:
        kwargs["optim_bits"] = 32       # (8-bit states are refused with flat=True: below)
    flat = train(True, cls=cls, **kwargs)
    assert ran_flat(flat[1]) and not flat[2]
    assert_same_run(flat, train(False, cls=cls, **kwargs))


def test_flat_follows_torch_optim_with_zeroed_gradients():
    model, opt, _ = train(True, steps=10, lr=1e-2)
    ref = make_model()
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=False)
    for batch in batches(10):
        ropt.zero_grad(set_to_none=False)
        loss_of(ref, batch).backward()
        ropt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_over_several_backward_passes():
    flat = train(True, micro=3, lr=1e-2)
    assert ran_flat(flat[1])
    assert_same_run(flat, train(False, micro=3, lr=1e-2))


def test_bfloat16_params_with_master_weights():
    kwargs = dict(lr=1e-2, master_weights=True, dtype=torch.bfloat16)
    flat = train(True, **kwargs)
    assert ran_flat(flat[1]) and flat[1]._flat[0].dtype == torch.bfloat16
    assert_same_run(flat, train(False, **kwargs))


def test_clipping_inside_the_step_matches_to_rounding():
    def clip(flat):
        model = make_model()
        opt = ft.Adam(model.parameters(), lr=1e-2, flat=flat)
        for batch in batches(5):
            opt.zero_grad(set_to_none=False) if not flat else opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step(max_norm=0.05)
        return model, opt
    (mf, of), (mp, op) = clip(True), clip(False)
    assert ran_flat(of)
    # the norm is summed over one buffer instead of tensor by tensor: the same to rounding
    assert of.grad_norm == pytest.approx(op.grad_norm, rel=1e-6)
    for p, q in zip(mf.parameters(), mp.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_skip_nonfinite_leaves_params_and_state_untouched():
    def poison(model, opt, t):
        if t == 3:
            model[0].weight.grad[0, 0] = float("inf")
    flat = train(True, action=poison, skip_nonfinite=True, lr=1e-2)
    assert flat[1].skipped_steps == 1 and ran_flat(flat[1])
    assert_same_run(flat, train(False, action=poison, skip_nonfinite=True, lr=1e-2))


# -- what the flat step detects ------------------------------------------------------------------

def _model_zero_grad(model, opt, t):
    """``model.zero_grad()`` (sets every .grad to None), then gradients made anew."""
    if t == 2:
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        for p, g in zip(model.parameters(), grads):
            p.grad = g


def _replace_one_grad(model, opt, t):
    if t == 2:
        model[0].weight.grad = model[0].weight.grad * 2


def _scale_grads_in_place(model, opt, t):
    for p in model.parameters():
        p.grad.mul_(0.5)


def _grad_data_swapped(model, opt, t):
    if t == 1:
        model[2].bias.grad.data = model[2].bias.grad.data.clone() * 3


def _param_given_new_memory(model, opt, t):
    if t == 3:      # memory of its own that nothing else views: put back into the buffer
        model[2].weight.data = model[2].weight.data.clone()


def _model_moved_to_its_own_device(model, opt, t):
    if t == 2:      # accelerate's DDP on CPU moves the model to cpu:<rank>: a copy of each param
        model.to(torch.device("cpu", 0))


@pytest.mark.parametrize("action", [_model_zero_grad, _replace_one_grad, _scale_grads_in_place,
                                    _grad_data_swapped, _param_given_new_memory,
                                    _model_moved_to_its_own_device])
def test_replaced_gradients_are_copied_in_and_the_step_stays_flat(action):
    flat = train(True, action=action, lr=1e-2)
    assert ran_flat(flat[1]) and not flat[2]
    assert_same_run(flat, train(False, action=action, lr=1e-2))
    buffer = flat[1]._flat[0]
    for p, view in zip(flat[0].parameters(), buffer.views(buffer.data)):   # params in place
        assert p.data_ptr() == view.data_ptr()
    flat[1].zero_grad()
    views = flat[1]._flat[0].grads
    for p, view in zip(flat[0].parameters(), views):   # the views are the gradients again
        assert p.grad.data_ptr() == view.data_ptr()
        assert not p.grad.any()


def _one_grad_none(model, opt, t):
    if t == 2:
        model[0].bias.grad = None


def _param_tied_to_another_tensor(model, opt, t):
    if t == 3:      # its memory is shared with another tensor: cannot go back into the buffer
        model[2].weight.data = _TIE.setdefault("w", model[2].weight.data.clone())


_TIE = {}


def _step_count_edited(model, opt, t):
    if t == 2:
        opt.state[model[0].weight]["step"].fill_(10)


@pytest.mark.parametrize("action", [_one_grad_none, _param_tied_to_another_tensor, _step_count_edited])
def test_what_cannot_be_stepped_flat_is_stepped_per_tensor_with_a_warning(action):
    _TIE.clear()
    flat = train(True, action=action, lr=1e-2)
    _TIE.clear()
    assert not ran_flat(flat[1])
    assert len(flat[2]) == 1          # said once
    assert_same_run(flat, train(False, action=action, lr=1e-2))


def test_zero_grad_keeps_the_views_and_set_to_none_is_as_torch():
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=1e-2, flat=True)
    flat = opt._flat[0]
    loss_of(model, batches(1)[0]).backward()
    assert flat.grad.abs().sum() > 0
    opt.zero_grad()
    assert flat.grad.abs().sum() == 0
    for p, view in zip(model.parameters(), flat.grads):
        assert p.grad.data_ptr() == view.data_ptr()
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    loss_of(model, batches(1)[0]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()                                  # the new gradients are copied into the buffer
    assert ran_flat(opt)
    assert torch.equal(flat.grad, torch.cat([g.reshape(-1) for g in grads]))
    assert model[0].weight.grad.data_ptr() != flat.grads[0].data_ptr()
    opt.zero_grad()                             # and the views are the gradients again
    assert model[0].weight.grad.data_ptr() == flat.grads[0].data_ptr()


def test_state_is_per_param_views_of_the_flat_state():
    model, opt, _ = train(True, lr=1e-2)
    ref, ropt, _ = train(False, lr=1e-2)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert opt.state[p]["exp_avg"].shape == p.shape
        assert torch.equal(opt.state[p]["exp_avg"], ropt.state[q]["exp_avg"])
        opt.state[p]["exp_avg"].mul_(0.5)       # an edit in place is the state
        ropt.state[q]["exp_avg"].mul_(0.5)
    batch = batches(1)[0]
    for m, o, flat in ((model, opt, True), (ref, ropt, False)):
        o.zero_grad() if flat else o.zero_grad(set_to_none=False)
        loss_of(m, batch).backward()
        o.step()
    assert ran_flat(opt)
    assert_same_run((model, opt), (ref, ropt))


def test_params_stay_the_same_objects_with_values_and_attributes():
    model = make_model()
    before = {name: (p, p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}
    model[0].weight.custom_tag = "kept"
    opt = ft.Adam(model.parameters(), lr=1e-2, flat=True)
    flat = opt._flat[0]
    for name, p in model.named_parameters():
        assert p is before[name][0] and torch.equal(p, before[name][1])
        assert p.requires_grad and isinstance(p, torch.nn.Parameter)
    assert model[0].weight.custom_tag == "kept"
    assert model[0].weight.data_ptr() == flat.data.data_ptr()
    assert [tuple(s) for s in flat.shapes] == [tuple(p.shape) for p in model.parameters()]


def test_a_step_between_forward_and_backward_is_reported_by_autograd():
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=1e-2, flat=True)
    loss = loss_of(model, batches(1)[0])
    opt.step()          # updates the params the pending backward saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# -- checkpoints ---------------------------------------------------------------------------------

def test_checkpoints_interchange_with_torch_optim():
    model, opt, _ = train(True, steps=4, lr=1e-2)
    saved = opt.state_dict()
    # into torch.optim.Adam, and on from there as the per-tensor fastopt path goes on
    ref = make_model()
    with torch.no_grad():
        for p, q in zip(ref.parameters(), model.parameters()):
            p.copy_(q)
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=False)
    ropt.load_state_dict(saved)
    for i, entry in ropt.state_dict()["state"].items():
        assert torch.equal(entry["exp_avg"], saved["state"][i]["exp_avg"])
    # a torch.optim checkpoint into a flat optimizer: the next step runs flat again
    ropt_saved = ropt.state_dict()
    again = make_model()
    with torch.no_grad():
        for p, q in zip(again.parameters(), model.parameters()):
            p.copy_(q)
    fopt = ft.Adam(again.parameters(), lr=1e-2, flat=True)
    fopt.load_state_dict(ropt_saved)
    popt = ft.Adam(ref.parameters(), lr=1e-2)
    popt.load_state_dict(ropt_saved)
    for batch in batches(3):
        fopt.zero_grad()
        popt.zero_grad(set_to_none=False)
        loss_of(again, batch).backward()
        loss_of(ref, batch).backward()
        fopt.step()
        popt.step()
    assert ran_flat(fopt)
    assert_same_run((again, fopt), (ref, popt))


# -- groups, dtypes ------------------------------------------------------------------------------

def test_one_buffer_per_group_and_dtype_and_add_param_group():
    model = make_model()
    extra = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = ft.SGD([{"params": [model[0].weight, extra, model[0].bias]},
                  {"params": model[2].parameters(), "lr": 0.05}], lr=0.1, momentum=0.9, flat=True)
    assert [(len(f), f.dtype) for f in opt._flat] == [(2, torch.float32), (1, torch.float64),
                                                       (2, torch.float32)]
    late = torch.nn.Parameter(torch.randn(4))
    opt.add_param_group({"params": [late], "lr": 0.01})
    assert len(opt._flat) == 4
    for batch in batches(3):
        opt.zero_grad()
        (loss_of(model, batch) + extra.square().sum() + late.square().sum()).backward()
        opt.step()
    assert ran_flat(opt)


# -- compat fallbacks ----------------------------------------------------------------------------

def test_without_storage_counts_every_step_takes_the_full_check(monkeypatch):
    monkeypatch.setattr(_compat, "storage_handle", lambda t: None)
    flat = train(True, action=_replace_one_grad, lr=1e-2)
    assert ran_flat(flat[1])
    assert_same_run(flat, train(False, action=_replace_one_grad, lr=1e-2))


def test_params_that_cannot_be_swapped_keep_their_own_version_counters(monkeypatch):
    monkeypatch.setattr(_compat, "can_swap", lambda t: False)
    flat = train(True, lr=1e-2)
    assert ran_flat(flat[1]) and len(flat[1]._flat[0].own_counters) == 4
    assert_same_run(flat, train(False, lr=1e-2))
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=1e-2, flat=True)
    loss = loss_of(model, batches(1)[0])
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_param_with_hooks_is_given_its_place_without_losing_them():
    model = make_model()
    fired = []
    model[0].weight.register_hook(lambda g: fired.append(1))
    opt = ft.Adam(model.parameters(), lr=1e-2, flat=True)
    assert opt._flat[0].own_counters == [model[0].weight]
    loss_of(model, batches(1)[0]).backward()
    assert fired == [1]
    opt.step()
    assert ran_flat(opt)


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Adafactor", "Muon", "LAMB", "LARS"])
def test_whole_matrix_algorithms_refuse_flat(name):
    required = dict(lr=0.1, momentum=0.9) if name == "LARS" else {}
    with pytest.raises(ValueError, match="flat=True is not available"):
        getattr(ft, name)([torch.nn.Parameter(torch.randn(4, 4))], flat=True, **required)


def test_refused_params_name_the_argument_and_nothing_moves():
    frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    live = torch.nn.Parameter(torch.randn(3))
    ptr = live.data_ptr()
    with pytest.raises(ValueError, match=r"param_groups\[0\].*params\[1\] does not require grad"):
        ft.Adam([live, frozen], flat=True)
    assert live.data_ptr() == ptr and live.grad is None
    base = torch.randn(6)
    a, b = torch.nn.Parameter(base[:4]), torch.nn.Parameter(base[2:])
    with pytest.raises(ValueError, match="share memory"):
        ft.flatten_([a, b])
    with pytest.raises(TypeError, match="one dtype"):
        ft.flatten_([torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(2).double())])
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor"):
        ft.flatten_([np.zeros(3)])
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="lists a param twice"):
        ft.Adam([p, p], flat=True)
    with pytest.raises(TypeError, match="flat must be"):
        ft.Adam([torch.nn.Parameter(torch.randn(3))], flat="yes")


def test_flatten_keeps_existing_gradients_and_returns_views():
    ps = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
    ps[0].grad = torch.ones(2, 3)
    values = [p.detach().clone() for p in ps]
    flat = ft.flatten_(ps)
    assert repr(flat) == "FlatParams(2 params, 10 elements, torch.float32)"
    assert torch.equal(flat.grad, torch.cat([torch.ones(6), torch.zeros(4)]))
    assert torch.equal(flat.data, torch.cat([v.reshape(-1) for v in values]))
    assert all(g.data_ptr() == p.grad.data_ptr() for g, p in zip(flat.grads, ps))
    assert [tuple(v.shape) for v in flat.views(flat.data)] == [(2, 3), (4,)]


def test_a_compiled_model_and_training_step():
    def run(flat):
        torch._dynamo.reset()
        model = make_model()
        opt = ft.Adam(model.parameters(), lr=1e-2, flat=flat)
        compiled = torch.compile(model, backend="aot_eager")

        @torch.compile(backend="aot_eager")
        def train_step(x, y):
            opt.zero_grad() if flat else opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.mse_loss(compiled(x), y)
            loss.backward()
            opt.step()
            return loss
        for batch in batches(4):
            train_step(*batch)
        return model, opt
    flat = run(True)
    assert ran_flat(flat[1])
    assert_same_run(flat, run(False))


def test_params_flattened_beforehand_keep_their_buffers():
    model = make_model()
    laid_out = ft.flatten_(model.parameters())
    ptr = laid_out.data.data_ptr()
    model[0].bias.grad = None                     # given its view back, zeroed
    opt = ft.Adam(model.parameters(), lr=1e-2, flat=True)
    assert opt._flat == [laid_out] and model[0].weight.data_ptr() == ptr
    assert model[0].bias.grad.data_ptr() == laid_out.grads[1].data_ptr()
    ref = make_model()
    ropt = ft.Adam(ref.parameters(), lr=1e-2)
    for batch in batches(3):
        for m, o in ((model, opt), (ref, ropt)):
            o.zero_grad(set_to_none=False)
            loss_of(m, batch).backward()
            o.step()
    assert ran_flat(opt)
    assert_same_run((model, opt), (ref, ropt))


def test_a_failed_full_check_is_not_repeated_while_nothing_changes(monkeypatch):
    from fastopt.torch import _flat
    calls = []
    check = _flat.FlatParams.check
    monkeypatch.setattr(_flat.FlatParams, "check", lambda self, where: calls.append(1) or check(self, where))

    def unused_bias(model, opt, t):
        model[0].bias.grad = None           # at every step: skipped, per tensor
    flat = train(True, steps=8, action=unused_bias, lr=1e-2)
    assert not ran_flat(flat[1]) and len(flat[2]) == 1
    # the first step that falls back, and the next (the per-tensor runner's views of the params
    # count on the buffer too): then not again
    assert len(calls) == 2
    assert_same_run(flat, train(False, steps=8, action=unused_bias, lr=1e-2))


def test_flat_refuses_8bit_states_naming_both_options():
    """8-bit states keep blocks of each param's own; a flat buffer does not keep them apart."""
    model = make_model()
    with pytest.raises(ValueError, match=r"flat=True is not available with 8-bit states \(optim_bits=8\)"):
        ft.AdamW8bit(model.parameters(), flat=True)
    with pytest.raises(ValueError, match="optim_bits=8"):
        ft.Adam(model.parameters(), flat=True, optim_bits=8)
    ft.AdamW8bit(model.parameters(), flat=True, optim_bits=32)      # float32 states: flat works
