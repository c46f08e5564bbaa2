"""A differential harness for torch.optim's Optimizer contract (tests/torch/test_torch_contract.py).

The same hand-written scenario runs on two *sides*: ``fastopt.torch.<Name>`` ("ours") and
``torch.optim.<Name>`` with ``foreach=False`` ("theirs", the reference). Each side has its own
params, made from the same seeds by name, so that "q1" holds the same values on both sides; a
scenario acts on both sides alike (``twin.both(action)``), and ``twin.step()`` gives every param
of each side the same hand-made gradient (seeded by the param's name and the step number), steps
both optimizers and compares every param and every state buffer, side by side, by name.

Every param a side ever made gets a gradient at every step, including those no longer in any
group: an optimizer that steps a param it no longer holds is caught by the comparison.

Nothing here reads fastopt's internals: the harness must be able to disagree with it, and it
must pass with the reference on both sides (``ours_class`` below is where the side under test
comes from: a throwaway pytest plugin that sets ``contract.ours_class = contract.reference_class``
runs the whole file on torch.optim alone).
"""
import inspect
import io
import math
import sys
import zlib

import torch

import fastopt.torch
from fastopt.algorithms import ALGORITHMS

#: (fastopt.torch class name, torch.optim class name) of every algorithm both libraries have.
PAIRS = [(a.name, a.torch_name) for a in ALGORITHMS
         if a.torch_name and a.name in fastopt.torch.__all__ and hasattr(torch.optim, a.torch_name)]
NAMES = [name for name, _ in PAIRS]
TORCH_NAME = dict(PAIRS)

#: Hyperparameters per algorithm (the defaults otherwise): each keeps state (SGD's momentum) and
#: moves its params visibly in a few steps (ASGD's averaging starts at step 3).
CONFIG = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.05), "AdamW": dict(lr=0.05),
          "Adagrad": dict(lr=0.1), "RMSprop": dict(momentum=0.5), "ASGD": dict(t0=2),
          "Muon": dict(lr=0.02)}

#: The params every scenario starts from: group 0 holds two, group 1 (half the learning rate)
#: one. Matrices only, so that Muon takes them too.
START = [{"a0": (3, 4), "a1": (4, 2)}, {"b0": (2, 3)}]

# Float32 tolerances of tests/torch/test_torch_adapter.py (50 steps of a model against torch).
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


#: {algorithm: the learning rate of group 0} (group 1 runs at half of it).
LR = {name: CONFIG.get(name, {}).get("lr", inspect.signature(getattr(torch.optim, torch_name)).parameters["lr"].default)
      for name, torch_name in PAIRS}


def ours_class(name):
    """The class under test."""
    return getattr(fastopt.torch, name)


def reference_class(name):
    """torch.optim's class, single-tensor (foreach=False) where it has the choice."""
    cls = getattr(torch.optim, TORCH_NAME[name])

    def build(params, **kwargs):
        if "foreach" in cls.__init__.__code__.co_varnames:   # (Muon has no foreach)
            kwargs.setdefault("foreach", False)
        return cls(params, **kwargs)
    return build


def seeded(label, shape):
    """Standard normal values, the same for a label on every side and every run."""
    generator = torch.Generator().manual_seed(zlib.crc32(label.encode()))
    return torch.randn(shape, generator=generator)


def _state_kinds():
    """The state keys torch.optim keeps per param, per algorithm, after one step."""
    kinds = {}
    for name in NAMES:
        p = torch.nn.Parameter(seeded("probe", (3, 4)))
        opt = reference_class(name)([p], **CONFIG.get(name, {}))
        p.grad = seeded("probe-grad", (3, 4))
        opt.step()
        kinds[name] = {k for k, v in opt.state[p].items() if v is not None}
    return kinds


#: {algorithm: the state keys torch.optim keeps for a matrix param}.
STATE_KEYS = _state_kinds()


def buffer_key(name):
    """The state buffer a scenario edits: the first, by name, that is not the step count."""
    return sorted(STATE_KEYS[name] - {"step"})[0]


def _assert_close(actual, expected, tolerance, where):
    """torch.testing.assert_close, its report only on a failure (checking with torch.allclose
    first is ten times faster, and the harness compares thousands of tensors)."""
    if not (isinstance(actual, torch.Tensor) and actual.dtype == expected.dtype
            and actual.shape == expected.shape and torch.allclose(actual, expected, **tolerance)):
        torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m: f"{where}: {m}")


class Side:
    """One library's optimizer over its own params, found by name."""

    def __init__(self, label, make_optimizer, name):
        self.label = label
        self.name = name
        self.params = {}        # name -> Parameter, every param this side ever made
        self.marks = {}         # name -> the param's values when last marked
        groups = [{"params": [self.new(n, shape) for n, shape in group.items()]} for group in START]
        self.lr = LR[name]
        groups[1]["lr"] = self.lr * 0.5
        self.opt = make_optimizer(groups, **CONFIG.get(name, {}))

    def new(self, name, shape):
        """A new param (the same values on every side)."""
        p = torch.nn.Parameter(seeded(name, shape))
        self.params[name] = p
        self.mark(name)
        return p

    def __getitem__(self, name):
        return self.params[name]

    def group(self, g):
        return self.opt.param_groups[g]

    def mark(self, name):
        self.marks[name] = self.params[name].detach().clone()

    def moved(self, name):
        p, mark = self.params[name], self.marks[name]
        return p.shape != mark.shape or not torch.equal(p.detach(), mark)

    def set_grads(self, k):
        for name, p in self.params.items():
            p.grad = seeded(f"{name}/grad {k}", p.shape)

    def state_of(self, name):
        """The param's state without its unset entries (torch's SGD keeps a None buffer)."""
        state = self.opt.state.get(self.params[name])
        return {k: v for k, v in (state or {}).items() if v is not None}

    def donor_state(self, shape):
        """A state dict of tensors copied from another (reference) optimizer's state for a param
        of ``shape``, three steps in: the same values on every side."""
        p = torch.nn.Parameter(seeded("donor", shape))
        donor = reference_class(self.name)([p], **CONFIG.get(self.name, {}))
        for k in range(3):
            p.grad = seeded(f"donor/grad {k}", shape)
            donor.step()
        return {k: v.clone() for k, v in donor.state[p].items() if v is not None}


class Twin:
    """The same scenario on ``ours`` and ``theirs`` (the reference), compared after every step."""

    def __init__(self, name):
        self.name = name
        self.ours = Side("ours", ours_class(name), name)
        self.theirs = Side("theirs", reference_class(name), name)
        self.steps_taken = 0
        self.compare("at construction")

    @property
    def sides(self):
        return (self.theirs, self.ours)     # the reference first: its errors are the scenario's

    def both(self, action):
        """Run ``action(side)`` on both sides now (usable as a decorator); then compare."""
        for side in self.sides:
            action(side)
        self.compare(f"after {action.__name__} (before a step)")
        return action

    def step(self, times=1):
        for _ in range(times):
            k = self.steps_taken
            for side in self.sides:
                side.set_grads(k)
                side.opt.step()
            self.steps_taken += 1
            self.compare(f"step {k + 1}")

    def reference_moved(self, *names):
        """Assert the reference moved each named param since it was last marked (the scenario
        really exercised what it says)."""
        for name in names:
            assert self.theirs.moved(name), f"the reference did not move {name!r}: the scenario tests nothing"

    def reference_still(self, *names):
        """Assert the reference left each named param alone since it was last marked."""
        for name in names:
            assert not self.theirs.moved(name), f"the reference moved {name!r}"

    def mark(self, *names):
        for side in self.sides:
            for name in names:
                side.mark(name)

    def tolerance(self):
        tolerance = dict(TOLERANCE)
        if self.name == "Muon":
            # Muon orthogonalizes in bfloat16: an element of the update can differ by a few
            # bfloat16 ulps per step (see tests/torch/test_torch_optim_db.py), times lr * sqrt(2)
            tolerance["atol"] += max(self.steps_taken, 1) * self.ours.lr * math.sqrt(2.0) * 2.0 ** -5
        return tolerance

    def compare(self, when):
        tolerance = self.tolerance()
        for name, theirs in self.theirs.params.items():
            ours = self.ours[name]
            where = f"{self.name}, {when}: param {name!r}"
            _assert_close(ours.detach(), theirs.detach(), tolerance, where)
            ours_state, theirs_state = self.ours.state_of(name), self.theirs.state_of(name)
            assert set(ours_state) == set(theirs_state), \
                f"{where}: state keys {sorted(ours_state)}, torch's {sorted(theirs_state)}"
            for key, value in theirs_state.items():
                if key == "step":
                    assert float(ours_state[key]) == float(value), \
                        f"{where}: step {float(ours_state[key])}, torch's {float(value)}"
                else:
                    _assert_close(ours_state[key], value, tolerance, f"{where}: state {key!r}")

    def cross_load(self):
        """Each side loads the other library's checkpoint (saved and loaded as a file would be).

        First each side drops the state of the params it no longer holds, as a torch.optim user
        must: torch's ``state_dict()`` raises a KeyError for a state whose param is in no group."""
        saved = {}
        for side in self.sides:
            held = {id(p) for group in side.opt.param_groups for p in group["params"]}
            for p in side.params.values():
                if id(p) not in held and p in side.opt.state:
                    del side.opt.state[p]
            buffer = io.BytesIO()
            torch.save(side.opt.state_dict(), buffer)
            saved[side.label] = buffer.getvalue()
        self.ours.opt.load_state_dict(torch.load(io.BytesIO(saved["theirs"])))
        self.theirs.opt.load_state_dict(torch.load(io.BytesIO(saved["ours"])))
        self.compare("after loading the other library's state_dict")


def python_calls(function):
    """How many Python functions run during ``function()`` (a measure of the work a step does in
    Python: the same code path makes the same calls)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    previous = sys.getprofile()
    sys.setprofile(count)
    try:
        function()
    finally:
        sys.setprofile(previous)
    return calls


def steady_step_calls(side, warmup=2):
    """Python calls of one step of ``side``, and of one step of a new optimizer of the same class
    over copies of the side's current groups and state (the path every step of an untouched
    optimizer takes), both after ``warmup`` steps with the same gradients."""
    held = [p for group in side.opt.param_groups for p in group["params"]]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in held]
    groups, start = [], 0
    for group in side.opt.param_groups:
        n = len(group["params"])
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": copies[start:start + n]})
        start += n
    fresh = type(side.opt)(groups)
    states = [{k: v.clone() for k, v in (side.opt.state.get(p) or {}).items() if v is not None} for p in held]
    fresh.load_state_dict({
        "state": {i: state for i, state in enumerate(states) if state},
        "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                          "params": list(range(start - len(group["params"]), start))}
                         for group, start in zip(groups, _ends(groups))]})

    def measure(opt, params):
        for k in range(warmup + 1):
            for i, p in enumerate(params):
                p.grad = seeded(f"fast path {k} {i}", p.shape)
            if k < warmup:
                opt.step()
        return python_calls(opt.step)

    return measure(side.opt, held), measure(fresh, copies)


def _ends(groups):
    """The index one past each group's last param, counting over all groups."""
    ends, end = [], 0
    for group in groups:
        end += len(group["params"])
        ends.append(end)
    return ends
