"""fastopt.checkpoint: pickle-free .npz checkpoints, atomic writes, exact resume, clean failures."""
import json
import os

import numpy as np
import pytest

import fastopt
from fastopt import _atomic_file, checkpoint
from fastopt.checkpoint import load, save
from reference import fingerprint

OPTIMIZERS = {
    "sgd": lambda groups: fastopt.SGD(groups, lr=0.05),
    "sgd_nesterov": lambda groups: fastopt.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_dampening": lambda groups: fastopt.SGD(groups, lr=0.05, momentum=0.5, dampening=0.3, maximize=True),
    "adam": lambda groups: fastopt.Adam(groups, lr=0.01, weight_decay=0.01),
    "adam_amsgrad": lambda groups: fastopt.Adam(groups, lr=0.01, amsgrad=True),
    "adamw": lambda groups: fastopt.AdamW(groups, lr=0.01, betas=(0.8, 0.95)),
    "rmsprop": lambda groups: fastopt.RMSprop(groups, lr=0.01),
    "rmsprop_centered_momentum": lambda groups: fastopt.RMSprop(groups, lr=0.01, centered=True, momentum=0.7),
    "adagrad": lambda groups: fastopt.Adagrad(groups, lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2),
    "adagrad_plain": lambda groups: fastopt.Adagrad(groups, lr=0.1),
    "nadam": lambda groups: fastopt.NAdam(groups, lr=0.01, weight_decay=0.01),   # a scalar state
    "radam": lambda groups: fastopt.RAdam(groups, lr=0.01, decoupled_weight_decay=True, weight_decay=0.1),
    "adamax": lambda groups: fastopt.Adamax(groups, lr=0.01),
    "lion": lambda groups: fastopt.Lion(groups, lr=0.01, weight_decay=0.1),
}

SHAPES = [((5,), np.float64), ((3, 4), np.float32), ((2,), np.float64), ((6, 1), np.float32)]


def fresh_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]


def make_groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.002, "weight_decay": 0.0}]


def grads_at(step):
    """The gradients of step ``step``: deterministic, with some None entries."""
    rng = np.random.default_rng(1000 + step)
    gs = [rng.standard_normal(shape).astype(dtype) for shape, dtype in SHAPES]
    if step % 3 == 1:
        gs[1] = None          # param 1 sits this step out: its step count falls behind
    if step == 4:
        gs[3] = None
    return gs


def run(opt, start, stop):
    for t in range(start, stop):
        if t == 5:
            opt.param_groups[0]["lr"] *= 0.5           # a scheduler changes a hyperparameter mid-run
        opt.step(grads_at(t))


@pytest.mark.parametrize("with_params", [True, False], ids=["params_in_file", "params_by_caller"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_is_bitwise_identical(name, with_params, tmp_path):
    make = OPTIMIZERS[name]
    total, cut = 12, 7
    # uninterrupted run
    p_ref = fresh_params()
    ref = make(make_groups(p_ref))
    run(ref, 0, total)
    # interrupted run: save at `cut`, rebuild everything from scratch, load, continue
    p_a = fresh_params()
    a = make(make_groups(p_a))
    run(a, 0, cut)
    path = tmp_path / "opt.ckpt"
    save(a, path, params=with_params)
    saved_params = [p.copy() for p in p_a]
    del a
    p_b = fresh_params(seed=99)          # different values: the file (or the caller) must restore them
    b = make([{"params": p_b[:2]}, {"params": p_b[2:]}])   # default hyperparameters: the file restores them
    load(b, path)
    if not with_params:
        for p, q in zip(p_b, saved_params):
            p[...] = q
    assert [p.tobytes() for p in p_b] == [q.tobytes() for q in saved_params]
    run(b, cut, total)
    assert fingerprint(b, p_b) == fingerprint(ref, p_ref)


def test_file_is_pickle_free_npz_with_metadata(tmp_path):
    params = fresh_params()
    opt = fastopt.Adam(make_groups(params), amsgrad=True, skip_nonfinite=True)
    run(opt, 0, 3)
    bad = grads_at(3)
    bad[0][0] = np.nan
    assert opt.step(bad) is False
    path = tmp_path / "a.npz"
    save(opt, path, params=True)
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        assert all(z[k].dtype != object for k in files)
        meta = json.loads(z["__fastopt__"].tobytes().decode("utf-8"))
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == checkpoint.VERSION == 1
    assert meta["optimizer"] == "Adam" and meta["has_params"] is True
    assert meta["params"][1] == {"shape": [3, 4], "dtype": "float32"}
    assert meta["param_groups"][0]["betas"] == [0.9, 0.999]
    assert meta["skipped_steps"] == 1 and meta["found_inf"] is True
    assert {"param.0", "param.3", "state.0.exp_avg", "state.2.max_exp_avg_sq"} <= files
    # the counters come back
    other = fastopt.Adam(make_groups(fresh_params()), amsgrad=True)
    load(other, path)
    assert other.skipped_steps == 1 and other.found_inf is True


def test_numpy_scalar_hyperparameters_are_stored_as_numbers(tmp_path):
    params = fresh_params()
    opt = fastopt.SGD(params, lr=np.float32(0.1), momentum=np.array(0.5))
    opt.param_groups[0]["note"] = "encoder"
    opt.param_groups[0]["initial_lr"] = np.float64(0.1)
    opt.step(grads_at(0))
    save(opt, tmp_path / "s.npz")
    other = fastopt.SGD(fresh_params(), lr=1.0)
    load(other, tmp_path / "s.npz")
    group = other.param_groups[0]
    assert group["lr"] == float(np.float32(0.1)) and group["momentum"] == 0.5
    assert group["note"] == "encoder" and group["initial_lr"] == 0.1


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temporary file."""
    params = fresh_params()
    opt = fastopt.Adam(params)
    run(opt, 0, 2)
    path = tmp_path / "c.npz"
    save(opt, path)
    original = path.read_bytes()
    run(opt, 2, 4)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save(opt, path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["c.npz"]


def test_save_replaces_existing_file_and_writes_exact_path(tmp_path):
    params = fresh_params()
    opt = fastopt.RMSprop(params)
    path = tmp_path / "ckpt"                 # no .npz suffix is added
    save(opt, path)
    run(opt, 0, 2)
    save(opt, path)
    assert os.listdir(tmp_path) == ["ckpt"]
    other = fastopt.RMSprop(fresh_params())
    load(other, path)
    assert fingerprint(other, params)[len(params):] == fingerprint(opt, params)[len(params):]


def _saved(tmp_path):
    params = fresh_params()
    opt = fastopt.Adam(make_groups(params), amsgrad=True)
    run(opt, 0, 3)
    path = tmp_path / "good.npz"
    save(opt, path, params=True)
    return path, path.read_bytes()


def _target():
    params = fresh_params(seed=5)
    opt = fastopt.Adam(make_groups(params), amsgrad=True)
    run(opt, 0, 2)
    return opt, params


def test_every_truncation_is_rejected_and_changes_nothing(tmp_path):
    path, data = _saved(tmp_path)
    opt, params = _target()
    before = fingerprint(opt, params)
    bad = tmp_path / "bad.npz"
    for cut in list(range(0, len(data), max(1, len(data) // 150))) + [len(data) - 1]:
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable fastopt checkpoint"):
            load(opt, bad)
    assert fingerprint(opt, params) == before


def test_corrupted_bytes_are_rejected_or_harmless(tmp_path):
    """Flip bytes all over the file: load either raises ValueError and changes nothing, or (a flip in
    a field the zip reader ignores) restores exactly what was saved. It never crashes or loads garbage."""
    path, data = _saved(tmp_path)
    reference, ref_params = _target()
    load(reference, path)
    expected = fingerprint(reference, ref_params)
    opt, params = _target()
    before = fingerprint(opt, params)
    bad = tmp_path / "bad.npz"
    rejected = 0
    positions = range(0, len(data), max(1, len(data) // 250))
    for pos in positions:
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x5A
        bad.write_bytes(bytes(corrupt))
        try:
            load(opt, bad)
        except ValueError:
            rejected += 1
            assert fingerprint(opt, params) == before, pos
        else:
            assert fingerprint(opt, params) == expected, pos
            opt, params = _target()          # start the next round from the original state again
    assert rejected > len(positions) // 2


def test_load_failure_leaves_params_unchanged_too(tmp_path):
    """A file with params but a mismatching state does not overwrite the params either."""
    path, _ = _saved(tmp_path)
    opt = fastopt.Adam(make_groups(fresh_params(seed=7)), amsgrad=False)   # amsgrad differs: needs no max
    params = opt._params
    before = fingerprint(opt, params)
    data = dict(np.load(path, allow_pickle=False))
    data["state.0.exp_avg"] = data["state.0.exp_avg"][:2]                   # wrong shape
    with open(tmp_path / "x.npz", "wb") as f:
        np.savez(f, **data)
    with pytest.raises(ValueError, match=r"\[0\]\['exp_avg'\] has shape \(2,\)"):
        load(opt, tmp_path / "x.npz")
    assert fingerprint(opt, params) == before


def test_checkpoint_of_fresh_optimizer_roundtrips(tmp_path):
    """No state yet (and Adagrad's state from construction) round-trips too."""
    for make in OPTIMIZERS.values():
        params = fresh_params()
        opt = make(make_groups(params))
        save(opt, tmp_path / "f.npz")
        other_params = fresh_params()
        other = make(make_groups(other_params))
        other.param_groups[0]["lr"] = 123.0
        load(other, tmp_path / "f.npz")
        assert fingerprint(other, other_params) == fingerprint(opt, params)


# ---------------------------------------------------------------------------------------------
# Crashes mid-save: stale temporaries are removed, live ones are not; permissions as open() gives
# ---------------------------------------------------------------------------------------------

_SAVER = """
import sys, numpy as np, fastopt
path = sys.argv[1]
params = [np.random.default_rng(0).standard_normal(600_000)]
opt = fastopt.Adam(params, lr=1e-3)
opt.step([np.ones_like(params[0])])
fastopt.save(opt, path, params=True)
print("saved", flush=True)
while True:
    opt.step([np.ones_like(params[0])])
    fastopt.save(opt, path, params=True)
"""


def _temporaries(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(_atomic_file.TEMP_SUFFIX))


def test_saves_killed_mid_write_leave_a_loadable_file_and_no_pile_of_temporaries(tmp_path):
    """SIGKILL a process that saves in a loop, over and over: every kill leaves the last complete
    checkpoint loadable, and the next save removes what the killed one left behind."""
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / "ckpt.npz"
    rng = np.random.default_rng(0)
    left_behind = 0
    for _ in range(12):
        # cwd: `python -c` puts it first on sys.path, and it must not be an unbuilt source tree
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                                 text=True, cwd=tmp_path)
        try:
            assert child.stdout.readline().strip() == "saved"     # its first save is complete
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        temporaries = _temporaries(tmp_path)
        assert len(temporaries) <= 1, temporaries          # older ones were removed by later saves
        left_behind += len(temporaries)
        opt = fastopt.Adam([np.zeros(600_000)])
        load(opt, path)                                     # the last complete save
        assert opt.state[0]["step"] >= 1
    assert left_behind >= 3          # most kills hit a save mid-write (else this tests nothing)
    save(fastopt.Adam([np.zeros(600_000)]), path)
    assert _temporaries(tmp_path) == []


def test_cleanup_spares_live_saves_other_targets_and_other_files(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    path = tmp_path / "a.npz"
    stale = str(tmp_path / (_atomic_file.temporary_prefix(str(path)) + "0" * 16 + _atomic_file.TEMP_SUFFIX))
    live = str(tmp_path / (_atomic_file.temporary_prefix(str(path)) + "1" * 16 + _atomic_file.TEMP_SUFFIX))
    other_target = str(tmp_path / (_atomic_file.temporary_prefix(str(tmp_path / "b.npz")) + "2" * 16
                                   + _atomic_file.TEMP_SUFFIX))
    unrelated = [str(tmp_path / n) for n in (".fastopt-legacy.tmp", ".a.npz.zzz.fastopt.tmp", "a.npz.bak")]
    for name in [stale, live, other_target] + unrelated:
        with open(name, "wb") as f:
            f.write(b"partial")
    holder = os.open(live, os.O_RDONLY)          # a save in progress holds the lock on its file
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        save(fastopt.SGD([np.zeros(3)]), path)
        assert not os.path.exists(stale)
        assert all(os.path.exists(n) for n in [live, other_target] + unrelated)
    finally:
        os.close(holder)
    assert checkpoint.remove_stale_temporaries(path) == 1           # released: now it is stale
    assert not os.path.exists(live) and os.path.exists(other_target)


def test_cleanup_without_fcntl_removes_only_old_temporaries(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic_file, "fcntl", None)
    path = tmp_path / "a.npz"
    prefix = _atomic_file.temporary_prefix(str(path))
    old, recent = (str(tmp_path / (prefix + c * 16 + _atomic_file.TEMP_SUFFIX)) for c in "ab")
    for name in (old, recent):
        with open(name, "wb") as f:
            f.write(b"partial")
    an_hour_ago = os.stat(old).st_mtime - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    save(fastopt.SGD([np.zeros(3)]), path)           # the fallback path writes and renames too
    assert not os.path.exists(old) and os.path.exists(recent)
    other = fastopt.SGD([np.ones(3)])
    load(other, path)


def test_temporary_names_fit_long_target_names(tmp_path):
    path = tmp_path / ("x" * 200 + ".npz")
    save(fastopt.SGD([np.zeros(3)]), path)
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_new_checkpoint_gets_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        save(fastopt.SGD([np.zeros(3)]), tmp_path / "c.npz")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "c.npz").st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "plain").st_mode & 0o777


def test_overwritten_checkpoint_keeps_its_mode(tmp_path):
    path = tmp_path / "c.npz"
    save(fastopt.SGD([np.zeros(3)]), path)
    os.chmod(path, 0o640)
    save(fastopt.SGD([np.ones(3)]), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_concurrent_saves_of_one_target_never_remove_each_others_temporaries(tmp_path):
    """Saves racing on one path (each cleaning up the other's files while it writes) all succeed."""
    import threading
    path = tmp_path / "shared.npz"
    errors = []

    def saver(seed):
        opt = fastopt.Adam([np.random.default_rng(seed).standard_normal(50_000)])
        try:
            for _ in range(25):
                save(opt, path)
        except BaseException as exc:      # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _temporaries(tmp_path) == []
    load(fastopt.Adam([np.zeros(50_000)]), path)


# ------------------------------------------------------------------------------------------------
# Half-precision params and states: bfloat16 is stored as its bits and comes back as bfloat16
# ------------------------------------------------------------------------------------------------

HALF_OPTIONS = {
    "plain": {},
    "master": {"master_weights": True},
    "master_bf16_moments": {"master_weights": True, "state_dtype": "bfloat16"},
    "stochastic": {"stochastic_rounding": True, "seed": 7},
}


def _bits(value):
    return np.ascontiguousarray(value).tobytes()


@pytest.mark.parametrize("cls", [fastopt.Adam, fastopt.NAdam, fastopt.SGD])
@pytest.mark.parametrize("options", sorted(HALF_OPTIONS))
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_half_precision_checkpoint_resumes_bit_for_bit(tmp_path, cls, options, dtype_name):
    if dtype_name == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.float16
    opts = HALF_OPTIONS[options]
    if dtype_name == "float16" and opts.get("stochastic_rounding"):
        pytest.skip("stochastic rounding is for bfloat16")
    extra = {"momentum": 0.9} if cls is fastopt.SGD else {}
    rng = np.random.default_rng(3)
    p = rng.standard_normal(37).astype(dtype)
    grads = [(rng.standard_normal(37) * 0.1).astype(dtype) for _ in range(4)]
    opt = cls([p], lr=0.01, **extra, **opts)
    for g in grads[:2]:
        opt.step([g])
    path = tmp_path / "half.npz"
    save(opt, path, params=True)
    meta = json.loads(np.load(path)["__fastopt__"].tobytes())
    assert meta["params"][0]["dtype"] == dtype_name

    p2 = np.zeros_like(p)
    # a resumed run need not pass the seed again: the checkpoint holds it
    resumed = cls([p2], lr=0.01, **extra, **{k: v for k, v in opts.items() if k != "seed"})
    load(resumed, path)
    assert _bits(p2) == _bits(p)
    for name, value in opt.state[0].items():
        if name != "step":
            assert resumed.state[0][name].dtype == value.dtype, name
            assert _bits(resumed.state[0][name]) == _bits(value), name
    for g in grads[2:]:
        opt.step([g])
        resumed.step([g])
    assert _bits(p2) == _bits(p)


def test_bfloat16_checkpoint_refuses_a_float32_optimizer(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    p = np.ones(5, ml_dtypes.bfloat16)
    opt = fastopt.Adam([p], lr=0.01, master_weights=True)
    opt.step([np.ones(5, ml_dtypes.bfloat16)])
    save(opt, tmp_path / "bf.npz")
    other = fastopt.Adam([np.ones(5, np.float32)], lr=0.01)
    with pytest.raises(ValueError, match=r"params\[0\] has dtype bfloat16, the optimizer's has float32"):
        load(other, tmp_path / "bf.npz")
    # the same bfloat16 param without a master copy: the saved master is refused, nothing written
    q = np.ones(5, ml_dtypes.bfloat16)
    plain = fastopt.Adam([q], lr=0.01)
    plain.step([np.full(5, 0.5, ml_dtypes.bfloat16)])
    before = {k: _bits(v) if k != "step" else v for k, v in plain.state[0].items()}
    with pytest.raises(ValueError, match="master"):
        load(plain, tmp_path / "bf.npz")
    assert {k: _bits(v) if k != "step" else v for k, v in plain.state[0].items()} == before
    assert _bits(q) == _bits(np.full(5, 1 - 0.01, ml_dtypes.bfloat16))


def test_stochastic_rounding_seed_and_steps_are_in_the_state_dict():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    p = np.ones(9, ml_dtypes.bfloat16)
    opt = fastopt.SGD([p], lr=0.01, stochastic_rounding=True, seed=2**64 - 5)
    opt.step([np.full(9, 0.3, ml_dtypes.bfloat16)])
    sd = opt.state_dict()
    assert sd["stochastic_rounding_seed"] == 2**64 - 5
    assert sd["state"][0]["step"] == 1            # SGD keeps no step, but its random stream does
    for bad, error in ((-1, ValueError), (2**64, ValueError), ("7", TypeError), (True, TypeError)):
        with pytest.raises(error, match="stochastic_rounding_seed"):
            opt.load_state_dict({**sd, "stochastic_rounding_seed": bad})
