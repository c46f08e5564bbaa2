"""Run every optimizer and option for a few steps and save the results (used across builds).

``python _trajectories.py OUT.npz`` imports whichever ``fastopt`` is first on sys.path, so the same
script can record the trajectories of the native build, a portable build's baseline module and its
AVX2 module; the build tests compare the files bit for bit.
"""
import sys

import numpy as np

import fastopt

CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
]
SHAPES = [(3,), (17, 5), (1000,), (33, 33), (7,)]


def trajectories(steps=25, seed=0):
    out = {}
    for c, (name, kwargs) in enumerate(CONFIGS):
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(seed + c)
            params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
            opt = getattr(fastopt, name)(params, **kwargs)
            for t in range(steps):
                grads = [(np.sin(3.0 * p + t) + 0.1 * rng.standard_normal(p.shape)).astype(dtype) for p in params]
                if t % 5 == 4:
                    fastopt.clip_grad_norm_(grads, 1.0)
                opt.step(grads)
            key = f"{c}-{name}-{np.dtype(dtype).name}"
            for i, p in enumerate(params):
                out[f"{key}-param{i}"] = p
            for i, entry in opt.state_dict()["state"].items():
                for buf, value in entry.items():
                    out[f"{key}-state{i}-{buf}"] = np.asarray(value)
    return out


if __name__ == "__main__":
    np.savez(sys.argv[1], **trajectories())
    print(fastopt._backend.kernels.__name__, fastopt._backend.kernels.vector_isa())
