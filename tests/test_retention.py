"""Retention rules: newest N, best K, permanent every-n-epochs / every-n-hours, combined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelkeep.checkpoint import store
from modelkeep.checkpoint.retention import apply_retention, direction_of, plan_retention
from modelkeep.checkpoint.store import CheckpointInfo

HOUR = 3600.0


def info(step: int, *, epoch: int | None = None, loss: float | None = None, t: float | None = None, status: str = "ok") -> CheckpointInfo:
    logs = {} if loss is None else {"val_loss": loss}
    return CheckpointInfo(
        Path(f"run/ckpt-{step}"), "TF checkpoint", status, step=step, epoch=epoch, logs=logs, wall_time=t if t is not None else float(step)
    )


def names(infos: list[CheckpointInfo]) -> list[int]:
    return [i.step for i in infos]


def test_no_rule_keeps_everything() -> None:
    infos = [info(s) for s in range(5)]
    keep, delete = plan_retention(infos)
    assert names(keep) == [4, 3, 2, 1, 0] and delete == []


def test_newest_n() -> None:
    keep, delete = plan_retention([info(s) for s in range(6)], max_to_keep=2)
    assert names(keep) == [5, 4]
    assert names(delete) == [3, 2, 1, 0]


def test_best_k_min_and_max() -> None:
    losses = [0.9, 0.2, 0.5, 0.1, 0.7, 0.8]
    infos = [info(s, loss=v) for s, v in enumerate(losses)]
    keep, _ = plan_retention(infos, keep_best=2, monitor="val_loss")
    assert names(keep) == [5, 3, 1]  # newest always, then the two lowest losses
    keep, _ = plan_retention(infos, keep_best=1, monitor="val_loss", mode="max")
    assert names(keep) == [5, 0]
    with pytest.raises(ValueError, match="monitor"):
        plan_retention(infos, keep_best=1)


def test_bad_checkpoints_are_neither_counted_nor_deleted() -> None:
    infos = [info(0), info(1), info(2, status="corrupt"), info(3, status="incomplete")]
    keep, delete = plan_retention(infos, max_to_keep=1)
    assert names(keep) == [3, 2, 1]  # newest good (1) kept; the bad ones left alone
    assert names(delete) == [0]


def test_keep_every_n_hours_like_checkpoint_manager() -> None:
    infos = [info(s, t=s * 0.75 * HOUR) for s in range(12)]  # one every 45 minutes
    keep, _ = plan_retention(infos, max_to_keep=1, keep_every_n_hours=2)
    # kept for good: t=0, then the first at or after each 2 h boundary from the last kept
    assert names(keep) == [11, 9, 6, 3, 0]


def test_rules_combined_over_a_long_run() -> None:
    """400 saves, 4 per epoch, retention after each one as the callback does."""
    rng = np.random.default_rng(7)
    losses = 1.0 / np.arange(1, 401) + rng.normal(0, 0.02, 400)
    rules = {"max_to_keep": 3, "keep_best": 2, "monitor": "val_loss", "keep_every_n_epochs": 10}
    alive: list[CheckpointInfo] = []
    deleted_ever: set[int] = set()
    for step in range(400):
        alive.append(info(step, epoch=step // 4 + 1, loss=float(losses[step]), t=step * 60.0))
        keep, delete = plan_retention(alive, **rules)
        assert alive[-1] in keep  # the new one is never the one deleted
        deleted_ever |= set(names(delete))
        alive = keep
    newest = set(range(397, 400))
    best = set(np.argsort(losses)[:2].tolist())
    permanent = {s for s in range(400) if (s // 4 + 1) % 10 == 0}
    assert set(names(alive)) == newest | best | permanent
    assert not deleted_ever & set(names(alive))  # nothing came back: deletes are final


@settings(max_examples=200, deadline=None)
@given(
    statuses=st.lists(st.sampled_from(["ok", "ok", "ok", "corrupt", "incomplete"]), min_size=1, max_size=30),
    max_to_keep=st.none() | st.integers(1, 5),
    keep_best=st.none() | st.integers(1, 3),
    every=st.none() | st.integers(1, 7),
)
def test_invariants(statuses: list[str], max_to_keep: int | None, keep_best: int | None, every: int | None) -> None:
    rng = np.random.default_rng(len(statuses))
    infos = [info(s, epoch=s, loss=float(rng.random()), status=st_) for s, st_ in enumerate(statuses)]
    keep, delete = plan_retention(
        infos, max_to_keep=max_to_keep, keep_best=keep_best, monitor="val_loss", keep_every_n_epochs=every
    )
    assert sorted(names(keep) + names(delete)) == sorted(names(infos))
    assert all(i.status == "ok" for i in delete)
    good = [i for i in sorted(infos, key=lambda i: -i.step) if i.status == "ok"]
    if good:
        assert good[0] in keep
    if max_to_keep:
        assert all(i in keep for i in good[:max_to_keep])
    if keep_best:
        best = sorted(good, key=lambda i: i.logs["val_loss"])[:keep_best]
        assert all(i in keep for i in best)
    if every:
        assert all(i in keep for i in good if i.epoch % every == 0)


def test_direction_of() -> None:
    assert direction_of("val_loss") == "min"
    assert direction_of("val_accuracy") == "max"
    assert direction_of("auc") == "max"
    assert direction_of("val_thing", {"thing": "max"}) == "max"
    with pytest.raises(ValueError, match="mode="):
        direction_of("val_weird")


# ------------------------------------------------------------------ on a real directory
def _tf_run(directory: Path, losses: list[float]) -> None:
    import keras

    import modelkeep as mk

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    callback = mk.ModelCheckpoint(str(directory / "ckpt-{epoch}"), save_weights_only=True)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"loss": loss, "val_loss": loss})
    callback.on_train_end()  # waits for background saves


def test_apply_retention_updates_the_state_file(tmp_path: Path) -> None:
    import tensorflow as tf

    _tf_run(tmp_path, [0.5, 0.1, 0.4, 0.3, 0.2])
    deleted = apply_retention(tmp_path, max_to_keep=2, keep_best=1, monitor="val_loss")
    assert sorted(p.name for p in deleted) == ["ckpt-1", "ckpt-3"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".index")) == [
        "ckpt-2.index", "ckpt-4.index", "ckpt-5.index",
    ]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if "ckpt-1." in p.name or "ckpt-3." in p.name or ".mk-tmp-" in p.name]
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [Path(p).name for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4", "ckpt-5"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-5")
    assert [i.status for i in store.list_checkpoints(tmp_path)] == ["ok"] * 3


def test_apply_retention_never_deletes_the_newest_good(tmp_path: Path) -> None:
    _tf_run(tmp_path, [0.5, 0.4, 0.3])
    data = tmp_path / "ckpt-3.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1])  # newest is now corrupt
    deleted = apply_retention(tmp_path, max_to_keep=1)
    assert [p.name for p in deleted] == ["ckpt-1"]
    assert [(i.path.name, i.status) for i in store.list_checkpoints(tmp_path)] == [("ckpt-3", "corrupt"), ("ckpt-2", "ok")]
