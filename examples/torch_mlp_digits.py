"""
fastopt.torch.Adam beside torch.optim.Adam on the digits
========================================================

The digits MLP of ``numpy_mlp_digits.py``, in PyTorch: the same model (same initial weights,
same minibatches, ``CosineAnnealingLR``, ``clip_grad_norm_``) trained once per optimizer --
:class:`fastopt.torch.Adam` and ``torch.optim.Adam`` in its three implementations (for-loop,
``foreach=True``, ``fused=True``) -- all in lockstep, so that every optimizer runs under the same
machine load. The script prints each one's test accuracy and the time of one optimizer step
(``opt.step()`` alone; the median over every step after the first epoch, which is the warm-up:
the first steps allocate the state)::

    python examples/torch_mlp_digits.py                  # the small 64-64-10 model
    python examples/torch_mlp_digits.py --hidden 512 512 # a wider one, where the kernel dominates

All four optimizers compute the same update, so their test accuracies agree to a test image or
two (float32 rounding in a different order); the step times depend on the machine, its load and
the thread count, and are printed, not promised.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import fastopt.torch


# %%
# The optimizers, the data and the model
# --------------------------------------


def _optimizers():
    """name -> factory(params, lr); the first is fastopt's."""
    return {
        "fastopt.torch.Adam": lambda params, lr: fastopt.torch.Adam(params, lr=lr),
        "torch.optim.Adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
        "torch.optim.Adam(foreach=True)": lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=True),
        "torch.optim.Adam(fused=True)": lambda params, lr: torch.optim.Adam(params, lr=lr, fused=True),
    }


def load_data(seed=0):
    """The same split as numpy_mlp_digits.py, as float32 tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tmp, X_test, y_tmp, y_test = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    X_train, X_val, y_train, y_val = train_test_split(
        X_tmp, y_tmp, test_size=0.25, random_state=seed, stratify=y_tmp)
    t = torch.from_numpy
    return (t(X_train), t(y_train)), (t(X_val), t(y_val)), (t(X_test), t(y_test))


def make_model(hidden, seed):
    torch.manual_seed(seed)
    layers, width = [], 64
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


# %%
# Training in lockstep
# --------------------
# Every minibatch goes through each optimizer's model in turn, so a burst of load on the machine
# hits all of them alike. Only ``opt.step()`` is timed, and only after the first epoch.


def train(factories, data, hidden=(64,), epochs=20, batch_size=32, lr=5e-3, max_norm=5.0, seed=0,
          warmup_epochs=1):
    """Train one model per optimizer, in lockstep (each step of each optimizer sees the same batch
    and the same machine load); return ``{name: (test accuracy, per-step times in seconds)}``, the
    times of the steps after the first ``warmup_epochs`` epochs (all of them if there are no
    more epochs than that)."""
    (X_train, y_train), _, (X_test, y_test) = data
    runs = {}
    for name, make_opt in factories.items():
        model = make_model(hidden, seed)            # same initial weights for every optimizer
        opt = make_opt(model.parameters(), lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-4)
        runs[name] = (model, opt, sched, [])
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    timed_from = warmup_epochs if epochs > warmup_epochs else 0
    for epoch in range(epochs):
        order = torch.randperm(len(X_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = X_train[idx], y_train[idx]
            for model, opt, _, times in runs.values():
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                t0 = time.perf_counter()
                opt.step()
                if epoch >= timed_from:
                    times.append(time.perf_counter() - t0)
        for _, _, sched, _ in runs.values():
            sched.step()
    out = {}
    with torch.no_grad():
        for name, (model, _, _, times) in runs.items():
            out[name] = ((model(X_test).argmax(1) == y_test).float().mean().item(), times)
    return out


def main(hidden=(64,), epochs=20, batch_size=32, lr=5e-3, seed=0, optimizers=None, verbose=True):
    """Train with each optimizer; return ``{name: {"test_accuracy", "median_step_us", "steps",
    "step_us"}}`` (``steps``: the number of timed steps, ``step_us``: their times)."""
    data = load_data(seed)
    available = _optimizers()
    names = list(available) if optimizers is None else list(optimizers)
    factories = {}
    probe = torch.nn.Linear(2, 2)
    for name in names:
        try:                                        # e.g. fused=True unsupported in some builds
            available[name](probe.parameters(), lr)
        except (RuntimeError, TypeError, ValueError) as exc:
            if verbose:
                print(f"{name}: skipped ({exc})")
            continue
        factories[name] = available[name]
    runs = train(factories, data, hidden, epochs, batch_size, lr, seed=seed)
    results = {name: {"test_accuracy": acc, "median_step_us": statistics.median(times) * 1e6,
                      "steps": len(times), "step_us": [t * 1e6 for t in times]}
               for name, (acc, times) in runs.items()}
    if verbose:
        n_params = sum(p.numel() for p in make_model(hidden, seed).parameters())
        print(f"MLP 64-{'-'.join(map(str, hidden))}-10 ({n_params} params, float32), "
              f"{epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'optimizer':<32} {'test acc':>8} {'step (us, median)':>18}")
        for name, r in results.items():
            print(f"{name:<32} {r['test_accuracy']:>8.4f} {r['median_step_us']:>18.1f}")
        print(f"(step: opt.step() alone, median of {next(iter(results.values()))['steps']} steps "
              "after the first epoch)")
    return results


def plot_step_times(results):
    """The distribution of each optimizer's step times (box: quartiles; line: median)."""
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.5), layout="constrained")
    ax.boxplot([results[n]["step_us"] for n in names], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(names) + 1),
                  [f"{n}\ntest acc {results[n]['test_accuracy']:.4f}" for n in names])
    ax.invert_yaxis()
    ax.set(xlabel="opt.step() time (us)", title="One Adam step on the digits MLP")
    return fig


# %%
# Train and time
# --------------



if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="fastopt.torch.Adam beside torch.optim.Adam on the digits MLP.")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="do not draw the step times")
    args = parser.parse_args()
    results = main(hidden=tuple(args.hidden), epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, seed=args.seed)

# %%
# Step times
# ----------
# Each box spans the middle half of an optimizer's step times (outliers not drawn), its line is
# the median printed above.

if __name__ == "__main__" and not args.no_plot:
    import matplotlib.pyplot as plt
    plot_step_times(results)
    plt.show()
