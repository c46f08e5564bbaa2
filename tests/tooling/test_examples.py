"""The examples in examples/ run, and give the results they promise (small settings)."""
import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"

pytest.importorskip("sklearn")


def load_example(name):
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{path} not found (examples are not part of the installed package)")
    spec = importlib.util.spec_from_file_location(f"fastopt_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def numpy_mlp():
    return load_example("numpy_mlp_digits")


# ------------------------------------------------------------------------------------------------
# numpy_mlp_digits.py
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_activation_derivatives(numpy_mlp, activation):
    f, df = numpy_mlp.ACTIVATIONS[activation]
    z = np.linspace(-4, 4, 81) + 0.0123          # avoid ReLU's kink at 0
    h = 1e-6
    np.testing.assert_allclose(df(z), (f(z + h) - f(z - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    big = np.array([-800.0, 800.0])
    assert np.all(np.isfinite(f(big)))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_backprop_matches_finite_differences(numpy_mlp, activation):
    rng = np.random.default_rng(1)
    model = numpy_mlp.MLP([5, 4, 3, 3], activation=activation, seed=2)
    for p in model.params:                        # nonzero biases: exercise their gradients too
        p[...] = rng.standard_normal(p.shape) * 0.5
    X = rng.standard_normal((7, 5))
    y = rng.integers(0, 3, size=7)
    model.loss_and_grad(X, y)
    analytic = [g.copy() for g in model.grads]
    h = 1e-6
    for p, g in zip(model.params, analytic):
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = model.loss_and_grad(X, y)
            p[i] = old - h
            down = model.loss_and_grad(X, y)
            p[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)


def test_example_uses_the_library_cosine_schedule(numpy_mlp):
    from fastopt.lr_scheduler import CosineAnnealingLR
    assert numpy_mlp.CosineAnnealingLR is CosineAnnealingLR


def test_numpy_mlp_reaches_95_percent(numpy_mlp, capsys):
    result = numpy_mlp.main(activation="relu", seed=0, verbose=True)
    out = capsys.readouterr().out
    assert "val error" in out and "test accuracy" in out
    assert result["test_accuracy"] >= 0.95
    history = result["history"]
    assert result["epochs_run"] == len(history) >= result["best_epoch"]
    assert history[0][1] > history[-1][1]               # the LR went down
    assert history[-1][2] < history[0][2]               # the training loss went down
    assert result["best_val_error"] == min(h[3] for h in history)


def test_numpy_mlp_early_stopping_and_other_activations(numpy_mlp):
    result = numpy_mlp.main(activation="tanh", epochs=40, patience=3, seed=0, verbose=False)
    assert result["epochs_run"] < 40 and result["epochs_run"] - result["best_epoch"] == 3
    assert result["test_accuracy"] >= 0.9
    with pytest.raises(ValueError, match="activation"):
        numpy_mlp.MLP([4, 3], activation="swish")


# ------------------------------------------------------------------------------------------------
# torch_mlp_digits.py
# ------------------------------------------------------------------------------------------------

def test_torch_mlp_same_accuracy_and_step_times(capsys):
    pytest.importorskip("torch")
    example = load_example("torch_mlp_digits")
    results = example.main(epochs=3, verbose=True)
    out = capsys.readouterr().out
    assert "fastopt.torch.Adam" in out and "step (us, median)" in out
    ours = results["fastopt.torch.Adam"]
    ref = results["torch.optim.Adam"]
    assert ours["steps"] == ref["steps"] > 0
    assert ours["test_accuracy"] >= 0.9
    for name, r in results.items():
        assert abs(r["test_accuracy"] - ours["test_accuracy"]) <= 2 / 360, name   # <= 2 test images
        assert r["median_step_us"] > 0


# ------------------------------------------------------------------------------------------------
# bf16_digits.py
# ------------------------------------------------------------------------------------------------

def test_bf16_master_weights_reach_float32_and_stochastic_rounding_unstalls(capsys):
    pytest.importorskip("ml_dtypes")
    example = load_example("bf16_digits")
    results = example.main(verbose=True)
    out = capsys.readouterr().out
    assert all(run in out for run in example.RUNS)
    # master weights: the float32 accuracy within half a point
    assert abs(results["bf16 + master"] - results["float32"]) <= 0.005
    assert results["float32"] >= 0.94
    # pure bf16 stalls (updates below half a bf16 spacing are lost); stochastic rounding recovers
    assert results["bf16"] <= results["float32"] - 0.02
    assert results["bf16 + SR"] >= results["bf16"] + 0.02
    assert abs(results["bf16 + SR"] - results["float32"]) <= 0.01
