"""Exact resume (``mk.fit``): kill training at any step, rerun, get the bitwise-identical model.

The kill harness (``tests/resume/``) runs a training script as a child process, SIGKILLs it
at chosen points (mid-epoch, right after a backup, during validation, at an epoch end),
reruns it in a fresh process until it finishes, and compares every model, optimizer and
metric variable (``np.array_equal``), the history and the step count with an uninterrupted
run. The same is done with Keras's own ``BackupAndRestore`` and printed beside it (slow run).
"""

from __future__ import annotations

import concurrent.futures
import random
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.checkpoint import store
from modelkeep.errors import IncompatibleModelError
from resume import harness

CHAINS = {
    # scenario: kill points, in the order they are reached (see tests/resume/train_child.py):
    # mid-epoch, right after a backup, during validation
    "arrays": ["step:4", "after_save:9", "val:1"],
}
KERAS_CHAINS = {"keras save_freq=3": ("3", ["step:5"])}
SLOW_CHAINS = {
    "arrays": ["step:2", "after_save:6", "epoch_end:1", "val:2", "step:23"],
    "callbacks": ["step:5", "val:2", "epoch_end:2", "step:31"],
    "pydataset": ["step:4", "epoch_end:0", "after_save:12", "step:22"],
    "tfdata": ["step:5", "val:1", "after_save:18"],
}
SLOW_KERAS_CHAINS = {"keras save_freq=3": ("3", ["step:5"]), "keras save_freq=epoch": ("epoch", ["step:8"])}
SYNC_SAVE = {"callbacks", "pydataset"}  # these write backups on the training thread; the rest use async_save
SLOW_CHAINS = {
    "arrays": ["step:2", "after_save:6", "epoch_end:1", "val:2", "step:23"],
    "callbacks": ["step:5", "val:2", "epoch_end:2", "step:31"],
    "pydataset": ["step:4", "epoch_end:0", "after_save:12", "step:22"],
    "tfdata": ["step:5", "val:1", "after_save:18"],
}
SLOW_KERAS_CHAINS = {"keras save_freq=3": ("3", ["step:5"]), "keras save_freq=epoch": ("epoch", ["step:8"])}


def _run_all(tmp: Path, chains: dict, keras_chains: dict) -> dict:
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for scenario, points in chains.items():
            extra = ("--sync-save",) if scenario in SYNC_SAVE else ()
            jobs[("base", scenario)] = pool.submit(harness.baseline, scenario, tmp / f"{scenario}-base", extra)
            jobs[("chain", scenario)] = pool.submit(harness.chain, scenario, tmp / f"{scenario}-killed", points, extra)
        if keras_chains:
            jobs[("base", "keras")] = pool.submit(harness.baseline, "arrays", tmp / "keras-base", ("--keras-backup",))
        for name, (freq, points) in keras_chains.items():
            extra = ("--keras-backup", "--save-freq", freq)
            jobs[("chain", name)] = pool.submit(harness.chain, "arrays", tmp / name.replace(" ", "_"), points, extra)
        return {key: job.result() for key, job in jobs.items()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    started = time.monotonic()
    results = _run_all(tmp_path_factory.mktemp("resume"), CHAINS, {})  # Keras's own: the slow run's
    results["seconds"] = time.monotonic() - started
    return results


def _report(results: dict, chains: dict, capsys) -> tuple[int, int]:
    kill_points = bad_total = 0
    lines = []
    for scenario in chains:
        base, killed = results[("base", scenario)], results[("chain", scenario)]
        bad = harness.mismatches(base, killed)
        kill_points += killed.kills
        bad_total += len(bad)
        where = ", ".join(r.killed_at for r in killed.runs if r.killed_at)
        lines.append(f"  mk.fit {scenario:<10} kills={killed.kills} [{where}] steps={killed.steps}/{base.steps} "
                     f"mismatches={len(bad)} {bad if bad else ''}")
    with capsys.disabled():
        print(f"\nexact resume: kill points={kill_points} mismatches={bad_total}")
        print("\n".join(lines))
    return kill_points, bad_total


def test_killed_and_resumed_runs_equal_the_uninterrupted_run_bit_for_bit(outcomes, capsys):
    kill_points, bad_total = _report(outcomes, CHAINS, capsys)
    assert kill_points == sum(len(points) for points in CHAINS.values())
    assert bad_total == 0
    for scenario, points in CHAINS.items():
        killed = outcomes[("chain", scenario)]
        assert [r.killed_at for r in killed.runs[:-1]] == points, "every kill point was reached and killed"
        assert killed.runs[-1].returncode == 0
        resumed = [line for run in killed.runs[1:] for line in run.lines if line.startswith("mk.fit: resumed")]
        # with async saving a kill can land before the newest backup is committed; a run
        # then resumes from an older one (or starts over), but most runs do resume
        assert len(resumed) >= max(1, len(points) - 1), [run.lines for run in killed.runs]
        assert all(line.endswith("everything restored") for line in resumed), resumed


def _report_keras(outcomes: dict, keras_chains: dict, capsys) -> None:
    base = outcomes[("base", "keras")]
    with capsys.disabled():
        print("Keras's own BackupAndRestore, same script, same kills:")
        for name in keras_chains:
            killed = outcomes[("chain", name)]
            bad = harness.mismatches(base, killed)
            print(f"  {name:<22} kills={killed.kills} steps={killed.steps}/{base.steps} "
                  f"mismatched variables={len([b for b in bad if '/' in b])}/{len(base.variables)} "
                  f"history equal={'history' not in bad} max |dw|={harness.max_abs_diff(base, killed):.4f}")
        print(f"  (harness wall time {outcomes['seconds']:.0f}s)")


@pytest.mark.slow
def test_keras_backup_and_restore_for_comparison(tmp_path, capsys):
    """Printed beside ours, asserted only to have run: not worth its two child processes in the default run."""
    started = time.monotonic()
    outcomes = _run_all(tmp_path, {}, KERAS_CHAINS)
    outcomes["seconds"] = time.monotonic() - started
    _report_keras(outcomes, KERAS_CHAINS, capsys)
    for name in KERAS_CHAINS:
        assert outcomes[("chain", name)].kills == 1
        assert outcomes[("chain", name)].runs[-1].returncode == 0


@pytest.mark.slow
def test_more_kill_points_of_every_kind(tmp_path, capsys):
    started = time.monotonic()
    results = _run_all(tmp_path, SLOW_CHAINS, SLOW_KERAS_CHAINS)
    results["seconds"] = time.monotonic() - started
    kill_points, bad_total = _report(results, SLOW_CHAINS, capsys)
    _report_keras(results, SLOW_KERAS_CHAINS, capsys)
    assert kill_points == sum(len(points) for points in SLOW_CHAINS.values())
    assert bad_total == 0


@pytest.mark.slow
def test_random_kill_points_sweep(tmp_path, capsys):
    """Many random kill points per scenario, by step and by wall-clock time (mid-save included)."""
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    chains = {}
    for scenario, total in (("arrays", 24), ("callbacks", 32), ("pydataset", 24), ("tfdata", 24)):
        steps = sorted(rng.sample(range(1, total), 4))
        points: list = [f"step:{s}" for s in steps]
        points += [rng.uniform(4.0, 12.0) for _ in range(3)]  # random instants, anywhere
        chains[scenario] = points
    results = _run_all(tmp_path, chains, {})
    with capsys.disabled():
        print(f"\nrandom sweep seed={seed}")
    kill_points, bad_total = _report(results, chains, capsys)
    assert kill_points >= 16
    assert bad_total == 0


# --------------------------------------------------------------------------- in-process
class Crash(Exception):
    pass


def _crash(where):
    raise Crash(where)


def _variables(model) -> list:
    arrays = [v.numpy() for v in model.variables + model.optimizer.variables]
    return arrays + [v.numpy() for m in model.metrics for v in m.variables]


@pytest.mark.parametrize(
    "scenario, points",
    [
        ("callbacks", ["step:13"]),  # class_weight, validation_data, ReduceLROnPlateau, LR scheduler
        ("pydataset", ["after_save:6"]),  # PyDataset drawing from the global NumPy RNG
        ("tfdata", ["val:1"]),  # shuffled tf.data (reshuffled every epoch), tf.data validation
    ],
)
def test_in_process_crashes_resume_exactly(scenario, points, tmp_path):
    """The kill harness's scenarios, crashed by an exception instead of SIGKILL (fast)."""
    from resume import train_child

    straight, h_straight = train_child.train(scenario, tmp_path / "straight", verbose=0)
    for point in points:
        with pytest.raises(Crash):
            train_child.train(scenario, tmp_path / "crashed", kill_at=point, on_kill=_crash, verbose=0)
    resumed, h_resumed = train_child.train(scenario, tmp_path / "crashed", verbose=0)
    bad = [i for i, (a, b) in enumerate(zip(_variables(straight), _variables(resumed))) if not np.array_equal(a, b)]
    assert bad == []
    assert h_resumed.history == h_straight.history and h_resumed.epoch == h_straight.epoch
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy())


class Counter(keras.callbacks.Callback):
    """A user callback with state, kept across restarts through get_state/set_state."""

    def __init__(self, crash_at: int | None = None):
        super().__init__()
        self.batches, self.crash_at = 0, crash_at

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.crash_at is not None and int(self.model.optimizer.iterations.numpy()) == self.crash_at:
            raise Crash()

    def get_state(self):
        return {"batches": self.batches, "array": np.full(3, self.batches, dtype="int32")}

    def set_state(self, state):
        self.batches = state["batches"]
        assert state["array"].tolist() == [self.batches] * 3


def _model():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    return model


def _data(n=50):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def _fit(model, backup_dir, callbacks=(), **kwargs):
    x, y = _data()
    args = dict(batch_size=8, epochs=3, validation_split=0.2, save_freq=2, verbose=0)
    args.update(kwargs)
    return mk.fit(model, x, y, backup_dir=backup_dir, callbacks=list(callbacks), **args)


def _assert_same(model_a, model_b):
    for a, b in zip(model_a.variables + model_a.optimizer.variables, model_b.variables + model_b.optimizer.variables):
        assert np.array_equal(a.numpy(), b.numpy()), a.path


@pytest.mark.parametrize("save_freq", [2, "epoch"])
def test_in_process_crash_resume_with_user_callback_state(tmp_path, save_freq):
    straight = _model()
    h_straight = _fit(straight, tmp_path / "a", [Counter()], save_freq=save_freq)
    crashing = _model()
    with pytest.raises(Crash):
        _fit(crashing, tmp_path / "b", [Counter(crash_at=7)], save_freq=save_freq)
    resumed, counter = _model(), Counter()
    h_resumed = _fit(resumed, tmp_path / "b", [counter], save_freq=save_freq)
    _assert_same(straight, resumed)
    assert h_resumed.history == h_straight.history
    assert counter.batches == int(resumed.optimizer.iterations.numpy()) == 15


def test_rerun_after_finish_returns_the_same_model_without_training(tmp_path, capsys):
    first = _model()
    h1 = _fit(first, tmp_path, save_freq=1, keep_backups=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000014", "ckpt-000000015"]
    second = _model()
    h2 = _fit(second, tmp_path, verbose=2)
    _assert_same(first, second)
    assert h2.history == h1.history and h2.epoch == [0, 1, 2]
    out = capsys.readouterr().out
    assert "mk.fit: resumed from ckpt-000000015 at the end of training (epoch 3/3)" in out
    assert "Epoch" not in out  # nothing was trained again


def test_more_epochs_continue_exactly(tmp_path):
    straight = _model()
    h_straight = _fit(straight, tmp_path / "a", epochs=4)
    two = _model()
    _fit(two, tmp_path / "b", epochs=2)
    four = _model()
    h_four = _fit(four, tmp_path / "b", epochs=4)
    _assert_same(straight, four)
    assert h_four.history == h_straight.history


def test_corrupt_newest_backup_falls_back_with_a_warning(tmp_path):
    straight = _model()
    _fit(straight, tmp_path / "a")
    with pytest.raises(Crash):
        _fit(_model(), tmp_path / "b", [Counter(crash_at=9)])
    newest = store.list_checkpoints(tmp_path / "b")[0].path
    assert newest.name == "ckpt-000000008"
    state_file = newest / store.STORE_STATE
    data = bytearray(state_file.read_bytes())
    data[-5] ^= 0xFF
    state_file.write_bytes(bytes(data))
    resumed = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(resumed, tmp_path / "b", [Counter()])
    assert any("ckpt-000000008" in str(w.message) for w in caught)
    _assert_same(straight, resumed)


def test_callback_without_state_protocol_is_named_on_resume(tmp_path, capsys):
    class Opaque(keras.callbacks.Callback):
        pass

    with pytest.raises(Crash):
        _fit(_model(), tmp_path, [Counter(crash_at=3), Opaque()])
    capsys.readouterr()
    _fit(_model(), tmp_path, [Counter(), Opaque()], verbose=2)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("mk.fit: resumed"))
    assert "at epoch 1/3, batch 2/5, step 2; not restored: Opaque state (no get_state/set_state)" in line


def test_positionless_inputs_and_conflicts_are_refused(tmp_path):
    model = _model()
    x, y = _data()

    def gen():
        while True:
            yield x[:8], y[:8]

    with pytest.raises(TypeError, match="cannot be positioned.*PyDataset"):
        mk.fit(model, gen(), backup_dir=tmp_path, steps_per_epoch=2)
    with pytest.raises(ValueError, match="remove the BackupAndRestore"):
        mk.fit(model, x, y, backup_dir=tmp_path, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "k"))])
    with pytest.raises(ValueError, match="save_freq"):
        mk.fit(model, x, y, backup_dir=tmp_path, save_freq="batch")


def test_resume_with_other_data_is_refused(tmp_path):
    with pytest.raises(Crash):
        _fit(_model(), tmp_path, [Counter(crash_at=3)])
    with pytest.raises(IncompatibleModelError, match="batches per pass"):
        _fit(_model(), tmp_path, [Counter()], batch_size=4)


def test_callback_states_survive_a_crash(tmp_path, capsys):
    """EarlyStopping, ReduceLROnPlateau and mk.ModelCheckpoint keep their best values and counters."""

    def callbacks(crash_at=None, run="a"):
        return [
            Counter(crash_at),
            keras.callbacks.EarlyStopping("val_loss", patience=1, min_delta=1.0),
            keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=0, min_delta=1.0),
            mk.ModelCheckpoint(str(tmp_path / run / "best.weights.h5"), monitor="val_loss",
                               save_best_only=True, save_weights_only=True),
        ]

    straight_cbs = callbacks(run="straight")
    straight = _model()
    h_straight = _fit(straight, tmp_path / "a", straight_cbs, epochs=6)
    with pytest.raises(Crash):
        _fit(_model(), tmp_path / "b", callbacks(crash_at=8, run="b"))
    capsys.readouterr()
    resumed_cbs = callbacks(run="b")
    resumed = _model()
    h_resumed = _fit(resumed, tmp_path / "b", resumed_cbs, epochs=6, verbose=2)
    assert "everything restored" in capsys.readouterr().out
    _assert_same(straight, resumed)
    assert h_resumed.history == h_straight.history
    assert len(h_straight.epoch) < 6  # EarlyStopping stopped the run, in both
    for a, b in zip(straight_cbs[1:], resumed_cbs[1:]):
        assert a.best == b.best and a.wait == b.wait if hasattr(a, "wait") else a.best == b.best


def test_dict_inputs_and_steps_per_epoch_resume_exactly(tmp_path):
    """Two named inputs, two outputs, and epochs shorter than one pass over the data."""

    def model():
        keras.utils.set_random_seed(9)
        a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
        h = keras.layers.Dropout(0.2)(keras.layers.Dense(6, activation="relu")(keras.layers.Concatenate()([a, b])))
        out1, out2 = keras.layers.Dense(1, name="y1")(h), keras.layers.Dense(1, name="y2")(h)
        m = keras.Model({"a": a, "b": b}, {"y1": out1, "y2": out2})
        m.compile(keras.optimizers.RMSprop(0.01), {"y1": "mse", "y2": "mae"})
        return m

    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(45, 3)), "b": rng.normal(size=(45, 2))}  # float64: cast to float32
    y = {"y1": rng.normal(size=(45, 1)), "y2": rng.normal(size=(45, 1))}

    def fit(m, directory, callbacks=()):
        return mk.fit(m, x, y, backup_dir=directory, batch_size=10, epochs=4, steps_per_epoch=3,
                      save_freq=2, verbose=0, callbacks=list(callbacks))

    straight = model()
    h_straight = fit(straight, tmp_path / "a", [Counter()])
    with pytest.raises(Crash):
        fit(model(), tmp_path / "b", [Counter(crash_at=8)])
    resumed = model()
    h_resumed = fit(resumed, tmp_path / "b", [Counter()])
    _assert_same(straight, resumed)
    assert h_resumed.history == h_straight.history
    assert int(resumed.optimizer.iterations.numpy()) == 12
