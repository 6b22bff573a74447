"""Faults on purpose: full disk, write errors, flipped bits, truncation, SIGKILL mid-save."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.checkpoint import store
from modelkeep.errors import CheckpointWriteError, CorruptCheckpointError
from modelkeep.storage.checksums import verify_manifest
from modelkeep.storage.commit import TMP_MARK

sys.path.insert(0, str(Path(__file__).parent / "faults"))
from harness import KERAS, OURS, print_table, run_harness  # noqa: E402


def model_of(width: int = 16, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((100,)), keras.layers.Dense(width, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((32, 100), dtype=np.float32)
    return x, x.sum(axis=1, keepdims=True)


def weights_equal(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


def no_temporaries(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if TMP_MARK in p.name or p.name.endswith(store.PENDING_SUFFIX)]


# ------------------------------------------------------------------ (c) full disk, write errors
@contextlib.contextmanager
def small_filesystem(path: Path, size: int) -> Iterator[bool]:
    """A tmpfs of ``size`` bytes at ``path`` (needs root); yields False when it cannot mount."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


FULL_DISK_CASES = [
    ("w.safetensors", True),
    ("saved_modelname", True),  # TensorFlow's SaveV2 reports ENOSPC its own way
    ("m.keras", False),  # Keras writes this one itself
]


@pytest.mark.parametrize("name, weights_only", FULL_DISK_CASES)
def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, name: str, weights_only: bool) -> None:
    """A real size-limited file system: room for one checkpoint, not for a second beside it."""
    x, y = data()
    probe = tmp_path / "probe"
    model = model_of(width=1000)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[mk.ModelCheckpoint(str(probe / name), save_weights_only=weights_only)])
    size = sum(p.stat().st_size for p in probe.iterdir())
    disk = tmp_path / "disk"
    with small_filesystem(disk, (size * 3 // 2 // 4096 + 16) * 4096) as mounted:
        if not mounted:  # not root or no tmpfs: the injected-errno tests below still run
            pytest.skip("cannot mount a tmpfs here; see test_injected_write_errors")
        target = disk / name
        callback = mk.ModelCheckpoint(str(target), save_weights_only=weights_only, async_save=False)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        saved = [w.copy() for w in model.get_weights()]
        with pytest.raises(CheckpointWriteError) as caught:
            model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        assert str(target) in str(caught.value) and "the disk is full" in str(caught.value)
        assert caught.value.errno == errno.ENOSPC
        no_temporaries(disk)
        assert store.info_for(target).status == "ok"
        fresh = model_of(width=1000, seed=3)
        mk.load_weights(fresh, disk)
        weights_equal(fresh.get_weights(), saved)

        warn = mk.ModelCheckpoint(str(target), save_weights_only=weights_only, on_error="warn", async_save=False)
        with pytest.warns(UserWarning, match="disk is full"):
            history = model.fit(x, y, epochs=3, verbose=0, callbacks=[warn])
        assert len(history.epoch) == 3 and warn.failed_saves == 3
        assert isinstance(warn.last_error, CheckpointWriteError)
        no_temporaries(disk)
        mk.load_weights(fresh, disk)
        weights_equal(fresh.get_weights(), saved)


@pytest.mark.parametrize(
    "code, cause, name",
    [
        (errno.ENOSPC, "the disk is full", "ckpt"),
        (errno.EACCES, "permission denied", "w-{epoch}.safetensors"),
        (errno.EIO, "an I/O error", "w-{epoch}.h5"),
    ],
)
def test_injected_write_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, cause: str, name: str) -> None:
    x, y = data()
    model = model_of()
    callback = mk.ModelCheckpoint(str(tmp_path / name), save_weights_only=True, async_save=False)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    saved = [w.copy() for w in model.get_weights()]
    good = store.list_checkpoints(tmp_path)[0].path

    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointWriteError, match=cause) as caught:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert str(tmp_path / name.format(epoch=1)) in str(caught.value)
    warn = mk.ModelCheckpoint(str(tmp_path / name), save_weights_only=True, on_error="warn", async_save=False)
    with pytest.warns(UserWarning, match=cause):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[warn])
    assert len(history.epoch) == 2 and warn.failed_saves == 2
    monkeypatch.undo()
    no_temporaries(tmp_path)
    assert [(i.path, i.status) for i in store.list_checkpoints(tmp_path)] == [(good, "ok")]
    fresh = model_of(seed=4)
    mk.load_weights(fresh, tmp_path)
    weights_equal(fresh.get_weights(), saved)


def test_background_save_error_surfaces_at_the_end_of_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data()
    model = model_of()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(CheckpointWriteError, match="the disk is full"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[mk.ModelCheckpoint(str(tmp_path / "w.safetensors"), save_weights_only=True)])


# ------------------------------------------------------------------ (d) bit flips and truncation
EVERY_FORMAT = [
    ("ckpt-{epoch}", True),
    ("w-{epoch}.h5", True),
    ("m-{epoch}.h5", False),
    ("w-{epoch}.weights.h5", True),
    ("w-{epoch}.safetensors", True),
    ("m-{epoch}.keras", False),
    ("sm-{epoch}", False),
    ("backup", None),  # BackupAndRestore's ckpt-<step>/
]


def _two_checkpoints(directory: Path, template: str, weights_only: bool | None) -> list[list[np.ndarray]]:
    """Train 2 epochs with one checkpoint each; return the weights at the end of each epoch."""
    x, y = data()
    model = model_of()
    if weights_only is None:
        callback = mk.BackupAndRestore(str(directory), delete_checkpoint=False, async_save=False)
    else:
        callback = mk.ModelCheckpoint(str(directory / template), save_weights_only=weights_only, async_save=False)
    seen: list[list[np.ndarray]] = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(model.get_weights()))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback, record])
    return seen


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("template, weights_only", EVERY_FORMAT)
def test_every_damage_detected_and_load_falls_back(tmp_path: Path, template: str, weights_only: bool | None) -> None:
    """Bit flips (first, middle, last byte) and truncation of every file of the newest
    checkpoint: verify names the file; load_weights(model, dir) takes the older one."""
    per_epoch = _two_checkpoints(tmp_path, template, weights_only)
    infos = store.list_checkpoints(tmp_path)
    assert [(i.epoch, i.step, i.status) for i in infos] == [(2, 4, "ok"), (1, 2, "ok")]
    newest = infos[0]
    manifest = store.manifest_path(newest.path)
    files = [manifest.parent / name for name in verify_manifest(manifest)["files"]]
    assert len(files) >= (2 if template.startswith(("ckpt", "sm")) else 1)
    checked = 0
    for file in files:
        original = file.read_bytes()
        damages = [("truncated", lambda f, o=original: f.write_bytes(o[: len(o) // 2]))]
        if original:
            for offset in {0, len(original) // 2, len(original) - 1}:
                damages.append((f"bit {offset}", lambda f, o=offset: _flip(f, o)))
        for label, damage in damages:
            damage(file)
            with pytest.raises(CorruptCheckpointError) as caught:
                verify_manifest(manifest)
            assert str(file) in str(caught.value), label
            info = store.info_for(newest.path)
            assert info.status == "corrupt" and file.name in info.problem, label
            file.write_bytes(original)
            checked += 1
        assert store.info_for(newest.path).status == "ok"
    print(f"{template}: {len(files)} files, {checked} damages, all detected")

    biggest = max(files, key=lambda p: p.stat().st_size)
    _flip(biggest, biggest.stat().st_size // 2)
    fresh = model_of(seed=9)
    with pytest.warns(UserWarning, match=newest.path.name):
        mk.load_weights(fresh, tmp_path)
    weights_equal(fresh.get_weights(), per_epoch[0])


def test_load_weights_with_no_good_checkpoint_says_so(tmp_path: Path) -> None:
    _two_checkpoints(tmp_path, "w-{epoch}.safetensors", True)
    for info in store.list_checkpoints(tmp_path):
        info.path.write_bytes(info.path.read_bytes()[:-4])
    with pytest.warns(UserWarning), pytest.raises(CorruptCheckpointError, match="no checkpoint in .* verifies"):
        mk.load_weights(model_of(), tmp_path)


# ------------------------------------------------------------------ (e) SIGKILL at random instants
FAST = [
    (OURS[0], 1),  # .keras under a fixed name: overwritten by every save
    (OURS[2], 1),  # TF prefix with rotation (max_to_keep=2) and the `checkpoint` state file
    (OURS[1], 1),  # .weights.h5 under a fixed name
]


def _report(results: list) -> None:
    print_table(results)
    for r in results:
        for note in r.notes:
            print("   ", r.scenario, note)


def test_sigkill_fast_subset(tmp_path: Path) -> None:
    """3 kills of ours, one per kind of file (a 20M-parameter model saving every 2 batches).

    Keras's own callbacks under the same kills are the slow run's (``make test-slow``: 12 per
    Keras case, printed beside ours); here they only cost time, since nothing asserts on them."""
    ours = [run_harness(s, tmp_path / f"ours{i}", kills=n, seed=11 + i, max_delay=4.0) for i, (s, n) in enumerate(FAST)]
    _report(ours)
    assert sum(r.kills for r in ours) == 3
    assert sum(r.lost for r in ours) == 0
    assert sum(r.corrupt_loaded for r in ours) == 0
    assert sum(r.partial for r in ours) == 0


@pytest.mark.slow
def test_sigkill_many(tmp_path: Path) -> None:
    """>= 50 kills over every scenario of ours; Keras's own ModelCheckpoint beside it."""
    per = -(-54 // len(OURS))
    ours = [run_harness(s, tmp_path / f"ours{i}", kills=per, seed=100 + i) for i, s in enumerate(OURS)]
    theirs = [run_harness(s, tmp_path / f"keras{i}", kills=12, seed=200 + i) for i, s in enumerate(KERAS)]
    _report(ours + theirs)
    assert sum(r.kills for r in ours) >= 50
    assert sum(r.lost for r in ours) == 0
    assert sum(r.corrupt_loaded for r in ours) == 0
    assert sum(r.partial for r in ours) == 0
