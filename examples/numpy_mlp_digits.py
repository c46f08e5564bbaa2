"""
A NumPy MLP on the digits, trained with fastopt.Adam
====================================================

A multilayer perceptron written out in NumPy -- the activations (sigmoid, tanh, ReLU) and their
derivatives, softmax cross-entropy and backprop -- trained on scikit-learn's bundled digits (8x8
images, 10 classes; no download) with minibatches, :class:`fastopt.Adam`, a cosine learning-rate
schedule (:class:`fastopt.lr_scheduler.CosineAnnealingLR`), :func:`fastopt.clip_grad_norm_` and
early stopping on the validation error (the best params are restored at the end).

Run it as a script, with any of the three activations::

    python examples/numpy_mlp_digits.py --activation tanh

With the defaults (ReLU, one hidden layer of 64, seed 0) one run printed a test accuracy of 0.9667
after 23 epochs (tanh: 0.9611, sigmoid: 0.9583), in under a second of training. The test set holds
360 images, so one image is 0.28 points; over seeds 0 to 4 the ReLU model's test accuracy ranged
from 0.950 to 0.975 (``--seed`` changes the split, the initial weights and the batches).
"""
import argparse
import math
import time

import numpy as np

import fastopt
from fastopt.lr_scheduler import CosineAnnealingLR

# %%
# Activations
# -----------
# Each activation is a pair: :math:`f(z)` and its derivative :math:`f'(z)`, written out.


def sigmoid(z):
    # exp of a non-positive number only, so it never overflows
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_grad(z):
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh(z):
    return np.tanh(z)


def tanh_grad(z):
    return 1.0 - np.tanh(z) ** 2


def relu(z):
    return np.maximum(z, 0.0)


def relu_grad(z):
    return (z > 0).astype(z.dtype)


ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "relu": (relu, relu_grad),
}


# %%
# The model
# ---------
# ``params`` is the list of weight matrices and bias vectors that the optimizer updates in place;
# ``loss_and_grad`` fills the matching ``grads`` with backprop.


class MLP:
    """``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between the affine layers
    and softmax cross-entropy on top.

    ``params`` is ``[W1, b1, W2, b2, ...]`` (C-contiguous, updated in place by the optimizer) and
    ``grads`` the matching gradient buffers, filled by :meth:`loss_and_grad`.
    """

    def __init__(self, sizes, activation="relu", seed=0, dtype=np.float64):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.f, self.df = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            # He init for ReLU, Glorot otherwise
            scale = math.sqrt(2.0 / fan_in) if activation == "relu" else math.sqrt(1.0 / fan_in)
            self.params.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(dtype))
            self.params.append(np.zeros(fan_out, dtype=dtype))
        self.grads = [np.zeros_like(p) for p in self.params]

    @property
    def n_layers(self):
        return len(self.params) // 2

    def logits(self, X):
        a = X
        for layer in range(self.n_layers):
            W, b = self.params[2 * layer], self.params[2 * layer + 1]
            z = a @ W + b
            a = z if layer == self.n_layers - 1 else self.f(z)
        return a

    def predict(self, X):
        return self.logits(X).argmax(axis=1)

    def error(self, X, y):
        return float(np.mean(self.predict(X) != y))

    def loss_and_grad(self, X, y):
        """Mean softmax cross-entropy over the batch; writes d(loss)/d(param) into ``self.grads``."""
        n = len(X)
        # forward, keeping each layer's input a and pre-activation z
        inputs, pre = [], []
        a = X
        for layer in range(self.n_layers):
            W, b = self.params[2 * layer], self.params[2 * layer + 1]
            inputs.append(a)
            z = a @ W + b
            pre.append(z)
            a = z if layer == self.n_layers - 1 else self.f(z)
        # softmax cross-entropy, shifted for stability
        shifted = a - a.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -float(log_probs[np.arange(n), y].mean())
        # backward: d loss / d logits = (softmax - onehot) / n
        delta = np.exp(log_probs)
        delta[np.arange(n), y] -= 1.0
        delta /= n
        for layer in reversed(range(self.n_layers)):
            W = self.params[2 * layer]
            np.matmul(inputs[layer].T, delta, out=self.grads[2 * layer])    # dW = a^T delta
            np.sum(delta, axis=0, out=self.grads[2 * layer + 1])            # db = sum of delta
            if layer > 0:
                delta = (delta @ W.T) * self.df(pre[layer - 1])             # through f
        return loss


# %%
# Data and training
# -----------------
# A stratified 60/20/20 split. Each epoch shuffles the training set, steps Adam once per
# minibatch (gradients clipped to a global norm of 5), then lowers the learning rate along the
# cosine and measures the validation error; training stops when it has not improved for
# ``patience`` epochs.


def load_data(seed=0, dtype=np.float64):
    """Digits split 60/20/20 into train/validation/test (stratified), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(dtype)
    X_tmp, X_test, y_tmp, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    X_train, X_val, y_train, y_val = train_test_split(
        X_tmp, y_tmp, test_size=0.25, random_state=seed, stratify=y_tmp)
    return (X_train, y_train), (X_val, y_val), (X_test, y_test)


def main(activation="relu", hidden=(64,), epochs=60, batch_size=32, lr=5e-3, eta_min=1e-4,
         weight_decay=0.0, max_norm=5.0, patience=10, seed=0, verbose=True):
    """Train, early-stop on validation error, and return a dict of results.

    Returns ``{"test_accuracy", "best_val_error", "best_epoch", "epochs_run", "history"}``, where
    ``history`` has one ``(epoch, lr, train_loss, val_error)`` tuple per epoch.
    """
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = load_data(seed)
    model = MLP([X_train.shape[1], *hidden, 10], activation=activation, seed=seed)
    opt = fastopt.Adam(model.params, lr=lr, weight_decay=weight_decay)
    sched = CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min)
    rng = np.random.default_rng(seed)

    best_err, best_epoch, best_params = math.inf, 0, [p.copy() for p in model.params]
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        lr_now = opt.param_groups[0]["lr"]
        order = rng.permutation(len(X_train))
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            losses.append(model.loss_and_grad(X_train[idx], y_train[idx]))
            fastopt.clip_grad_norm_(model.grads, max_norm)
            opt.step(model.grads)
        sched.step()
        val_err = model.error(X_val, y_val)
        history.append((epoch, lr_now, float(np.mean(losses)), val_err))
        if verbose:
            print(f"epoch {epoch:3d}  lr {lr_now:.2e}  train loss {np.mean(losses):.4f}  "
                  f"val error {val_err:.4f}")
        if val_err < best_err:
            best_err, best_epoch = val_err, epoch
            for saved, p in zip(best_params, model.params):
                saved[...] = p
        elif epoch - best_epoch >= patience:
            if verbose:
                print(f"early stop: no better validation error for {patience} epochs")
            break
    for saved, p in zip(best_params, model.params):
        p[...] = saved            # in place: the optimizer's views stay valid
    acc = 1.0 - model.error(X_test, y_test)
    if verbose:
        print(f"{activation}: best val error {best_err:.4f} at epoch {best_epoch}; "
              f"test accuracy {acc:.4f} ({time.perf_counter() - t0:.2f} s)")
    return {"test_accuracy": acc, "best_val_error": best_err, "best_epoch": best_epoch,
            "epochs_run": len(history), "history": history}


def plot_history(result, activation):
    """Training loss and validation error per epoch, with the epoch whose params were kept."""
    import matplotlib.pyplot as plt
    epochs, lrs, losses, val_errors = zip(*result["history"])
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    ax_loss.plot(epochs, losses)
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log")
    ax_err.plot(epochs, val_errors, label="validation error")
    ax_err.axvline(result["best_epoch"], color="gray", linestyle=":", label="params kept")
    ax_err.set(xlabel="epoch", ylabel="error rate")
    ax_err.legend()
    fig.suptitle(f"{activation} MLP on the digits: fastopt.Adam, cosine schedule; "
                 f"test accuracy {result['test_accuracy']:.4f}")
    return fig


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="A NumPy MLP on the digits, trained with fastopt.Adam.")
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="do not draw the training curves")
    return parser.parse_args(argv)


# %%
# Train
# -----
# One line per epoch: the learning rate of the epoch, the mean training loss of its minibatches
# and the validation error after it.

if __name__ == "__main__":
    args = parse_args()
    result = main(activation=args.activation, hidden=tuple(args.hidden), epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed)

# %%
# The training curves
# -------------------
# The training loss keeps falling while the validation error levels off; early stopping keeps
# the params of the epoch with the lowest validation error.

if __name__ == "__main__" and not args.no_plot:
    import matplotlib.pyplot as plt
    plot_history(result, args.activation)
    plt.show()
