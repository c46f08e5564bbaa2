"""``fastopt.torch.LBFGS``: ``torch.optim.LBFGS``'s interface, state layout and trajectories, with
the vector work on zero-copy NumPy views of the parameters and the two-loop recursion in Cython.

torch's own LBFGS runs every vector operation of an iteration as a separate tensor op from Python
(the two-loop recursion alone is ~4 m of them); here the recursion is one compiled call over a
ring buffer, and the parameters are read and moved through NumPy views of their storage (no
copies besides the flat gradient, which torch also gathers). Imported only by ``fastopt.torch``.

The state is torch's, in ``state[params[0]]`` (so a ``state_dict`` moves between this class and
``torch.optim.LBFGS`` both ways): the correction pairs ``old_stps`` (s) and ``old_dirs`` (y), oldest
first, are tensor views of the ring buffer's rows, made once and kept in step with the ring as
torch keeps its lists; the engine's arrays are wrapped as tensors, never the other way round, so
no step re-wraps what the previous one wrapped.
"""
import numbers
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from .._validation import check_integer
from ..minimize._stepwise import StepwiseEngine, check_lbfgs_options

__all__ = ["LBFGS"]

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
#: torch.optim.LBFGS's options, all in its one param group
_OPTION_KEYS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
                "history_size", "line_search_fn")
#: what torch.optim.LBFGS keeps besides its counters once an iteration has run
_ITERATION_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad",
                   "prev_loss")
#: keys of the ring-buffer layout that development versions of this class saved
_RING_LAYOUT_KEYS = ("history", "rho", "newest", "count")
#: the closure torch's documentation asks for, quoted in the messages about a wrong one
_CLOSURE_SHAPE = ("def closure(): optimizer.zero_grad(); loss = loss_fn(model(x), y); "
                  "loss.backward(); return loss")


class _TorchLayoutEngine(StepwiseEngine):
    """The stepwise engine, its correction pairs also shown as torch.optim.LBFGS's lists.

    ``old_stps`` / ``old_dirs`` / ``ro`` hold tensor views of the ring buffer's rows and of its
    ``rho`` entries, oldest first; a stored pair appends its slot's views and, when the ring is
    full, drops the oldest, as torch pops and appends. The views are made once, here.
    """

    def __init__(self, n, dtype, history_size):
        super().__init__(n, dtype, history_size)
        ring = torch.from_numpy(self.state["history"])
        rho = torch.from_numpy(self.state["rho"])
        self._stp_rows = [ring[2 * k] for k in range(history_size)]
        self._dir_rows = [ring[2 * k + 1] for k in range(history_size)]
        self._ro_entries = [rho[k] for k in range(history_size)]
        self.old_stps, self.old_dirs, self.ro = [], [], []
        self._wrapped = {}   # state key -> (the engine's array, the tensor viewing it)

    def is_fresh(self):
        """True before the first evaluation (torch's state is then empty)."""
        return self.state["func_evals"] == 0 and self.state["n_iter"] == 0

    def _clear_history(self):
        super()._clear_history()
        self.old_stps, self.old_dirs, self.ro = [], [], []   # new lists, as torch makes

    def _store_pair(self, s, y, ys):
        was_full = self.state["count"] == self.history_size
        super()._store_pair(s, y, ys)
        if was_full:   # the slot just written held the oldest pair
            del self.old_stps[0], self.old_dirs[0], self.ro[0]
        slot = self.state["newest"]
        self.old_stps.append(self._stp_rows[slot])
        self.old_dirs.append(self._dir_rows[slot])
        self.ro.append(self._ro_entries[slot])

    def load_pairs(self, stps, dirs, ros):
        """Put pairs (oldest first, at most ``history_size``) into slots 0, 1, ..."""
        st = self.state
        for slot, (s, y, r) in enumerate(zip(stps, dirs, ros)):
            st["history"][2 * slot] = s
            st["history"][2 * slot + 1] = y
            st["rho"][slot] = r
        count = len(stps)
        st["count"] = count
        st["newest"] = (count - 1) % self.history_size
        self.old_stps = self._stp_rows[:count]
        self.old_dirs = self._dir_rows[:count]
        self.ro = self._ro_entries[:count]

    def _tensor(self, key):
        """A tensor viewing the engine's array ``state[key]``, made again only when the engine
        has replaced the array (``d`` every step; ``prev_flat_grad`` is updated in place)."""
        array = self.state[key]
        wrapped = self._wrapped.get(key)
        if wrapped is None or wrapped[0] is not array:
            wrapped = self._wrapped[key] = (array, torch.from_numpy(array))
        return wrapped[1]

    def publish(self, entry):
        """Write the state into ``entry`` in torch.optim.LBFGS's layout."""
        st = self.state
        entry["func_evals"] = st["func_evals"]
        entry["n_iter"] = st["n_iter"]
        if st["d"] is None:   # no iteration has finished: torch keeps only the counters too
            return
        entry["d"] = self._tensor("d")
        entry["t"] = st["t"]
        entry["old_dirs"] = self.old_dirs
        entry["old_stps"] = self.old_stps
        entry["ro"] = self.ro
        # a Python float, as the engine keeps it: a tensor would be cast to the params' dtype by
        # load_state_dict and round it (torch itself stores the number 1 after its first iteration)
        entry["H_diag"] = st["H_diag"]
        entry["prev_flat_grad"] = self._tensor("prev_flat_grad")
        entry["prev_loss"] = st["prev_loss"]


def _copied(value):
    """``value`` with every tensor in it cloned (dicts, lists and tuples rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return value


def _real(value, name):
    """A real number or a one-element real tensor, as a Python float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number or a one-element real tensor, got a "
                            f"{value.dtype} tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


class LBFGS(torch.optim.Optimizer):
    """L-BFGS with the interface, state and trajectories of ``torch.optim.LBFGS``.

    Parameters are those of ``torch.optim.LBFGS``: ``lr`` (float or 1-element tensor, >= 0),
    ``max_iter``, ``max_eval`` (default ``max_iter * 5 // 4``), ``tolerance_grad``,
    ``tolerance_change``, ``history_size`` and ``line_search_fn`` (None or ``"strong_wolfe"``).
    Parameters must be dense, contiguous CPU tensors of one floating dtype (float32 or
    float64), all in one parameter group. ``step(closure)`` takes a closure that clears the
    gradients, computes the loss, calls ``backward()`` and returns the loss, as for torch.

    The state is torch.optim.LBFGS's, in ``state[params[0]]``: ``func_evals``, ``n_iter`` and,
    once an iteration has run, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
    ``prev_flat_grad`` and ``prev_loss``. ``state_dict()`` of either class loads into the other
    and continues the same trajectory; ``load_state_dict`` checks what it loads (``TypeError`` /
    ``ValueError`` naming the entry, the optimizer unchanged). torch's scratch list ``al`` is
    not kept (torch makes it again when it is missing).

    Examples
    --------
    >>> import torch
    >>> import fastopt.torch
    >>> x = torch.zeros(2, requires_grad=True)
    >>> target = torch.tensor([1.0, -2.0])
    >>> opt = fastopt.torch.LBFGS([x], line_search_fn="strong_wolfe")
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = ((x - target) ** 2).sum()
    ...     loss.backward()
    ...     return loss
    >>> opt.step(closure).item()           # the loss before the step, as torch returns it
    5.0
    >>> torch.allclose(x, target)
    True
    >>> opt.state[x]["n_iter"] >= 1
    True
    """

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr_value = lr.item() if isinstance(lr, torch.Tensor) else lr
        if not 0.0 <= lr_value:
            raise ValueError(f"Invalid learning rate: {lr}")
        (_, max_iter, max_eval, tolerance_grad, tolerance_change, history_size,
         line_search_fn) = check_lbfgs_options(lr_value, max_iter, max_eval, tolerance_grad,
                                               tolerance_change, history_size, line_search_fn)
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                        tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                        history_size=history_size, line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        for i, p in enumerate(self._params):
            if p.device.type != "cpu" or p.layout != torch.strided:
                raise ValueError(f"params[{i}] must be a dense CPU tensor")
            if p.dtype not in _NUMPY_DTYPES:
                raise TypeError(f"params[{i}] must be float32 or float64, got {p.dtype}")
            if not p.is_contiguous():
                raise ValueError(f"params[{i}] must be contiguous (its storage is viewed)")
        if len({p.dtype for p in self._params}) != 1:
            raise TypeError("params must all have the same dtype")
        self._dtype = _NUMPY_DTYPES[self._params[0].dtype]
        self._views = [p.detach().numpy() for p in self._params]
        self._sizes = [v.size for v in self._views]
        self._n = sum(self._sizes)
        self._engine = _TorchLayoutEngine(self._n, self._dtype, history_size)
        self._published = None     # the dict in state[params[0]] the engine last wrote
        self._gradless = False     # set when an evaluation left every .grad None

    # -- views of the parameters and gradients ----------------------------------------------------
    def _evaluate(self, closure):
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise TypeError("LBFGS: closure() returned None (NoneType None), but it must return a "
                            "real number, the loss, after computing the gradients: "
                            f"{_CLOSURE_SHAPE}")
        flat = np.empty(self._n, dtype=self._dtype)
        offset = 0
        without_grad = 0
        for p, size in zip(self._params, self._sizes):
            if p.grad is None:   # torch takes a missing gradient as zero
                flat[offset:offset + size] = 0.0
                without_grad += 1
            else:
                flat[offset:offset + size] = p.grad.detach().reshape(-1).numpy()
            offset += size
        if without_grad == len(self._params) and any(p.requires_grad for p in self._params):
            self._gradless = True
        return loss, flat

    def _get_flat(self):
        return np.concatenate([v.ravel() for v in self._views])

    def _set_flat(self, flat):
        offset = 0
        for p, v, size in zip(self._params, self._views, self._sizes):
            v.reshape(-1)[...] = flat[offset:offset + size]
            offset += size
            torch.autograd.graph.increment_version(p)

    def _add(self, t, d):
        offset = 0
        for p, v, size in zip(self._params, self._views, self._sizes):
            flat = v.reshape(-1)
            flat += (t * d[offset:offset + size]).astype(self._dtype, copy=False)
            offset += size
            torch.autograd.graph.increment_version(p)

    # -- state in torch.optim.LBFGS's layout ------------------------------------------------------
    def _checked_options(self, group, where):
        """The group's LBFGS options, checked as the constructor checks them."""
        missing = [key for key in _OPTION_KEYS if key not in group]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(map(repr, missing))} "
                             "(torch.optim.LBFGS's options)")
        lr = group["lr"]
        try:
            if isinstance(lr, torch.Tensor):
                if lr.numel() != 1:
                    raise ValueError("Tensor lr must be 1-element")
                lr = lr.item()
            return check_lbfgs_options(lr, *(group[key] for key in _OPTION_KEYS[1:]))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None

    def _vector(self, value, name):
        """A tensor of shape (n,) (the parameters flattened) as a new array of the params' dtype."""
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if tuple(value.shape) != (self._n,):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({self._n},) "
                             "(the parameters flattened)")
        return np.array(value.detach().to("cpu", self._params[0].dtype).numpy(), copy=True)

    def _engine_from_state(self, entry, history_size, where):
        """A new engine holding ``entry`` (torch.optim.LBFGS's layout), everything checked first;
        ``where`` names the entry in messages."""
        engine = _TorchLayoutEngine(self._n, self._dtype, history_size)
        if not entry:
            return engine
        if not isinstance(entry, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(entry).__name__}")
        ring_keys = [key for key in _RING_LAYOUT_KEYS if key in entry]
        if ring_keys:
            raise ValueError(
                f"{where} holds {', '.join(map(repr, ring_keys))}: the ring-buffer layout of a "
                "development version of fastopt.torch.LBFGS, which this version does not read. "
                "fastopt.torch.LBFGS now saves torch.optim.LBFGS's layout ('old_dirs', "
                "'old_stps', 'ro', ...). Restore the model's parameters alone and start a new "
                "optimizer: L-BFGS rebuilds its history within history_size iterations.")
        for key in ("func_evals", "n_iter"):
            if key not in entry:
                raise ValueError(f"{where} lacks {key!r}")
        st = engine.state
        st["func_evals"] = check_integer(f"{where}['func_evals']", entry["func_evals"], low=0)
        st["n_iter"] = check_integer(f"{where}['n_iter']", entry["n_iter"], low=0)
        if st["n_iter"] == 0:   # torch's next iteration is its first: it starts afresh
            return engine
        missing = [key for key in _ITERATION_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{where} has n_iter={st['n_iter']} but lacks "
                             f"{', '.join(map(repr, missing))}")
        pairs = {}
        for key in ("old_stps", "old_dirs", "ro"):
            if not isinstance(entry[key], (list, tuple)):
                raise TypeError(f"{where}[{key!r}] must be a list, got "
                                f"{type(entry[key]).__name__}")
            pairs[key] = entry[key]
        lengths = {key: len(items) for key, items in pairs.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{where}: 'old_stps', 'old_dirs' and 'ro' must have one length "
                             f"(one entry per pair), got {lengths}")
        if lengths["ro"] > history_size:
            raise ValueError(f"{where} holds {lengths['ro']} pairs, more than history_size="
                             f"{history_size}")
        stps = [self._vector(v, f"{where}['old_stps'][{i}]")
                for i, v in enumerate(pairs["old_stps"])]
        dirs = [self._vector(v, f"{where}['old_dirs'][{i}]")
                for i, v in enumerate(pairs["old_dirs"])]
        ros = [_real(v, f"{where}['ro'][{i}]") for i, v in enumerate(pairs["ro"])]
        st["d"] = self._vector(entry["d"], f"{where}['d']")
        st["prev_flat_grad"] = self._vector(entry["prev_flat_grad"], f"{where}['prev_flat_grad']")
        st["t"] = _real(entry["t"], f"{where}['t']")
        st["H_diag"] = _real(entry["H_diag"], f"{where}['H_diag']")
        st["prev_loss"] = _real(entry["prev_loss"], f"{where}['prev_loss']")
        engine.load_pairs(stps, dirs, ros)
        return engine

    def _install(self, engine):
        """Make ``engine`` the optimizer's and show its state in ``state[params[0]]``."""
        self._engine = engine
        first = self._params[0]
        if engine.is_fresh():
            self.state.pop(first, None)
            self._published = None
        else:
            self._published = {}
            engine.publish(self._published)
            self.state[first] = self._published

    def _adopt_outside_changes(self, group):
        """Rebuild the engine when ``state[params[0]]`` or ``history_size`` was changed other than
        by ``step`` / ``load_state_dict`` (e.g. ``optimizer.state.clear()`` to start afresh)."""
        entry = self.state.get(self._params[0])
        st = self._engine.state
        if group["history_size"] == self._engine.history_size:
            if entry is not None and entry is self._published \
                    and entry.get("n_iter") == st["n_iter"] \
                    and entry.get("func_evals") == st["func_evals"]:
                return
            if not entry and self._engine.is_fresh():
                return
        history_size = self._checked_options(group, "param_groups[0]")[5]
        self._install(self._engine_from_state(entry, history_size, "state[params[0]]"))

    def state_dict(self):
        """torch.optim.LBFGS's state_dict: its keys and layout, so ``torch.optim.LBFGS`` loads it
        (and this class loads torch's). The tensors are copies: later steps do not change a
        state_dict already taken."""
        state_dict = super().state_dict()
        state_dict["state"] = _copied(state_dict["state"])
        return state_dict

    def load_state_dict(self, state_dict):
        """Load a state_dict of this class or of ``torch.optim.LBFGS`` (the same layout).

        The options are checked as the constructor checks them and the state entry by entry (a
        missing key, a wrong shape, history lists of different lengths or longer than
        ``history_size``: ``ValueError`` / ``TypeError`` naming the entry); on an error the
        optimizer is left as it was.
        """
        kept_state, kept_groups = self.state, self.param_groups
        super().load_state_dict(state_dict)
        try:
            group = self.param_groups[0]
            options = self._checked_options(group, "state_dict['param_groups'][0]")
            saved_first = state_dict["param_groups"][0]["params"][0]
            engine = self._engine_from_state(self.state.get(self._params[0]), options[5],
                                             f"state_dict['state'][{saved_first!r}]")
        except (TypeError, ValueError):
            self.state, self.param_groups = kept_state, kept_groups
            raise
        group["max_eval"] = options[2]   # a saved None means torch's default
        self._install(engine)

    @torch.no_grad()
    def step(self, closure):
        """Run up to ``max_iter`` iterations; returns the loss at the entry point (torch's
        return value)."""
        if closure is None:
            raise ValueError("LBFGS needs a closure that reevaluates the model")
        group = self.param_groups[0]
        lr = group["lr"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else float(lr)
        self._adopt_outside_changes(group)
        if self._published is None:
            self._published = self.state[self._params[0]]
        self._gradless = False
        try:
            loss = self._engine.step(closure, self._evaluate, self._get_flat, self._set_flat,
                                     self._add, lr, group["max_iter"], group["max_eval"],
                                     group["tolerance_grad"], group["tolerance_change"],
                                     group["line_search_fn"])
        finally:
            self._engine.publish(self._published)
        if self._gradless:
            # torch's step does nothing here, silently (and must, when no param requires grad);
            # params that require grad but got none almost always mean a closure without backward
            warnings.warn("LBFGS.step: after closure() no parameter has a gradient (every .grad "
                          "is None), so the step leaves the parameters unchanged. The closure "
                          f"must call loss.backward() before returning the loss: {_CLOSURE_SHAPE}",
                          UserWarning, stacklevel=4)
        return loss
