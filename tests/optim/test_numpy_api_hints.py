"""The NumPy API where torch habits meet it, and where torch.optim's checkpoints meet it.

* torch params handed to ``fastopt.Adam`` (``model.parameters()``), and ``opt.step()`` without the
  gradients, are refused with a pointer to ``fastopt.torch.Adam``, which does what was meant;
* scalar states saved as Python numbers (older torch checkpoints) load;
* ``stochastic_rounding=True`` is refused where it would be ignored: float16 params, or no bfloat16
  param at all.
"""
import numpy as np
import pytest

import fastopt


def _ml_dtypes():
    return pytest.importorskip("ml_dtypes")


# ------------------------------------------------------------------------------------------------
# torch habits
# ------------------------------------------------------------------------------------------------

def test_torch_params_point_to_the_torch_front_end():
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"params\[0\] .*Parameter.*use fastopt\.torch\.Adam"):
        fastopt.Adam(model.parameters())
    with pytest.raises(TypeError, match=r"use fastopt\.torch\.NAdam"):
        fastopt.NAdam([{"params": list(model.parameters()), "lr": 1e-3}])
    with pytest.raises(TypeError, match=r"params\[1\] .*Tensor.*use fastopt\.torch\.SGD"):
        fastopt.SGD([np.zeros(3), torch.zeros(3, dtype=torch.bfloat16)])
    opt = fastopt.Adam([np.zeros(3)])
    with pytest.raises(TypeError, match=r"params\[1\] .*use fastopt\.torch\.Adam"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    assert len(opt.param_groups) == 1
    # a plain CPU tensor (no grad) is a buffer NumPy views: it is still stepped in place
    t = torch.ones(3, dtype=torch.float64)
    fastopt.SGD([t], lr=0.5).step([np.ones(3)])
    assert t.tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("call", ["no argument", "closure"])
def test_step_without_gradients_says_the_numpy_api_takes_them(call):
    opt = fastopt.Adam([np.zeros(3)])
    args = () if call == "no argument" else (lambda: 0.0,)
    with pytest.raises(TypeError, match=r"takes the gradients as an argument.*fastopt\.torch\.Adam"):
        opt.step(*args)
    assert opt.state == {}


# ------------------------------------------------------------------------------------------------
# Scalar states saved as Python numbers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,numbers", [("NAdam", ("mu_product",)), ("ASGD", ("eta", "mu"))])
def test_scalar_states_given_as_python_numbers_load(name, numbers):
    rng = np.random.default_rng(0)
    kwargs = {"t0": 1.0, "lambd": 1e-2} if name == "ASGD" else {}
    start = rng.standard_normal(5).astype(np.float32)
    grads = [rng.standard_normal(5).astype(np.float32) for _ in range(6)]
    a, b = start.copy(), start.copy()
    ours = getattr(fastopt, name)([a], **kwargs)
    for g in grads[:3]:
        ours.step([g])
    sd = ours.state_dict()
    for key in numbers:
        sd["state"][0][key] = float(sd["state"][0][key])      # as an older torch saved it
    resumed = getattr(fastopt, name)([b], **kwargs)
    b[...] = a
    resumed.load_state_dict(sd)
    for g in grads[3:]:
        ours.step([g])
        resumed.step([g])
    assert a.tobytes() == b.tobytes()
    bad = ours.state_dict()
    bad["state"][0][numbers[0]] = True
    with pytest.raises(TypeError, match=numbers[0]):
        resumed.load_state_dict(bad)


# ------------------------------------------------------------------------------------------------
# stochastic_rounding
# ------------------------------------------------------------------------------------------------

def test_stochastic_rounding_is_refused_for_float16_params():
    p = np.zeros(3, dtype="float16")
    with pytest.raises(ValueError, match=r"stochastic_rounding.*params\[0\] has dtype float16"):
        fastopt.Adam([p], stochastic_rounding=True)
    half = np.zeros(3, dtype=_ml_dtypes().bfloat16)
    opt = fastopt.SGD([half], lr=0.1, stochastic_rounding=True, seed=0)
    with pytest.raises(ValueError, match=r"stochastic_rounding.*params\[1\] has dtype float16"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1 and len(opt._params) == 1
    opt.step([np.ones(3, dtype=half.dtype)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stochastic_rounding_needs_a_bfloat16_param_and_leaves_wider_ones_exact(dtype):
    p = np.full(3, 0.7, dtype=dtype)
    with pytest.raises(ValueError, match=r"stochastic_rounding.*params has none"):
        fastopt.Adam([p], stochastic_rounding=True)
    half = np.zeros(3, dtype=_ml_dtypes().bfloat16)
    twin = p.copy()
    opt = fastopt.Adam([half, p], stochastic_rounding=True, seed=0)
    plain = fastopt.Adam([twin])
    for _ in range(3):
        opt.step([np.ones(3, dtype=half.dtype), np.full(3, 0.3, dtype=dtype)])
        plain.step([np.full(3, 0.3, dtype=dtype)])
    np.testing.assert_array_equal(p, twin)
