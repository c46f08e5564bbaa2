"""The digits MLP of numpy_mlp_digits.py in PyTorch: fastopt.torch.Adam beside torch.optim.Adam.

The same model (same initial weights, same minibatches, CosineAnnealingLR, clip_grad_norm_) is
trained once per optimizer, all in lockstep so that every optimizer runs under the same machine
load; the script prints each one's test accuracy and the time per optimizer step (median over all
steps, measured around ``opt.step()`` only):

    python examples/torch_mlp_digits.py                  # the small 64-64-10 model
    python examples/torch_mlp_digits.py --hidden 512 512 # a wider one, where the kernel dominates
"""
import argparse
import statistics
import time

import numpy as np
import torch

import fastopt.torch


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


def train(factories, data, hidden=(64,), epochs=20, batch_size=32, lr=5e-3, max_norm=5.0, seed=0):
    """Train one model per optimizer, in lockstep (each step of each optimizer sees the same batch
    and the same machine load); return ``{name: (test accuracy, per-step times in seconds)}``."""
    (X_train, y_train), _, (X_test, y_test) = data
    runs = {}
    for name, make_opt in factories.items():
        model = make_model(hidden, seed)            # same initial weights for every optimizer
        opt = make_opt(model.parameters(), lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-4)
        runs[name] = (model, opt, sched, [])
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
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
                times.append(time.perf_counter() - t0)
        for _, _, sched, _ in runs.values():
            sched.step()
    out = {}
    with torch.no_grad():
        for name, (model, _, _, times) in runs.items():
            out[name] = ((model(X_test).argmax(1) == y_test).float().mean().item(), times)
    return out


def main(hidden=(64,), epochs=20, batch_size=32, lr=5e-3, seed=0, optimizers=None, verbose=True):
    """Train with each optimizer; return ``{name: {"test_accuracy", "median_step_us", "steps"}}``."""
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
                      "steps": len(times)}
               for name, (acc, times) in runs.items()}
    if verbose:
        n_params = sum(p.numel() for p in make_model(hidden, seed).parameters())
        print(f"MLP 64-{'-'.join(map(str, hidden))}-10 ({n_params} params, float32), "
              f"{epochs} epochs, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'optimizer':<32} {'test acc':>8} {'step (us, median)':>18}")
        for name, r in results.items():
            print(f"{name:<32} {r['test_accuracy']:>8.4f} {r['median_step_us']:>18.1f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(hidden=tuple(args.hidden), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
         seed=args.seed)
