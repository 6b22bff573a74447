"""Faults on S3 (slow run): SIGKILL of the trainer mid-upload, and the S3 server itself stopped
in the middle of a save and started again. The counts are those of ``tests/faults/harness.py``:
0 lost, 0 corrupt loaded, 0 partial checkpoints listed."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.checkpoint import store
from modelkeep.errors import CheckpointWriteError
from modelkeep.storage import fs as sfs

sys.path.insert(0, str(Path(__file__).parent / "faults"))
from harness import HarnessResult, Scenario, _Child, _wait_first_save, check_directory, print_table  # noqa: E402

pytestmark = pytest.mark.slow

S3_SCENARIOS = [
    Scenario("mk S3 .safetensors {batch}, keep 2", "mk", "w-{epoch}-{batch}.safetensors", True, 2, 5.0,
             {"max_to_keep": 2}),  # fmt: skip
    Scenario("mk S3 .keras (fixed name)", "mk", "ckpt.keras", False, 2, 5.0),
]


def run_s3_harness(scenario: Scenario, url: str, *, kills: int, seed: int, max_delay: float = 4.0) -> HarnessResult:
    """``harness.run_harness`` with the checkpoints in ``url`` (an s3:// directory)."""
    rng = random.Random(seed)
    result = HarnessResult(scenario.name)
    started = time.monotonic()
    for attempt in range(kills):
        child = _Child(scenario, url, seed=seed + attempt)  # type: ignore[arg-type]
        if not _wait_first_save(child, 240.0):
            child.kill()
            raise RuntimeError(f"{scenario.name}: no save (exit {child.proc.returncode}):\n" + "\n".join(child.stderr[-20:]))
        time.sleep(rng.uniform(0.0, max_delay))
        child.kill()
        result.kills += 1
        saves = child.saves()
        result.saves_seen += len(saves)
        result.mid_save += child.saving_when_killed()
        check_directory(scenario, url, saves, child.fingerprints(), result)  # type: ignore[arg-type]
        print(f"  kill {attempt + 1}/{kills}: {result.line()}", flush=True)
    result.seconds = time.monotonic() - started
    return result


def test_sigkill_of_the_trainer_mid_upload_loses_nothing(s3_dir, capsys):
    results = [run_s3_harness(s, f"{s3_dir}/s{i}", kills=20, seed=100 * i) for i, s in enumerate(S3_SCENARIOS)]
    with capsys.disabled():
        print_table(results)
        for r in results:
            for note in r.notes[:5]:
                print("   ", note)
    assert sum(r.kills for r in results) >= 40
    assert sum(r.mid_save for r in results) >= 20  # most kills landed while a save was uploading
    assert all(r.lost == 0 and r.corrupt_loaded == 0 and r.partial == 0 for r in results)


# ------------------------------------------------------------------ the server stopped mid-save
def big_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((512,)), keras.layers.Dense(2048), keras.layers.Dense(2048), keras.layers.Dense(4)])
    model.compile(keras.optimizers.SGD(1e-4), "mse")
    return model  # ~5.3M parameters: 21 MB of weights, a few hundred ms to upload here


class ServerStopper:
    """Stops the S3 server while the N-th upload of a save is in flight, restarts it after."""

    def __init__(self, server, monkeypatch, *, every: int, delay: float) -> None:
        self.server, self.every, self.delay = server, every, delay
        self.uploads = 0
        self.stops = 0
        self.down = threading.Event()
        real = sfs.upload_files

        def upload(pairs, **kwargs):
            self.uploads += 1
            if self.uploads % self.every == 0 and not self.down.is_set():
                self.down.set()
                threading.Timer(self.delay, self._stop).start()
            return real(pairs, **kwargs)

        monkeypatch.setattr(sfs, "upload_files", upload)

    def _stop(self) -> None:
        self.server.stop(timeout=2)
        self.stops += 1

    def restart_if_down(self) -> None:
        if self.down.is_set():
            time.sleep(self.delay + 0.5)
            self.server.start()
            self.down.clear()


def test_s3_server_stopped_mid_save_then_restarted(s3_server, s3_dir, monkeypatch):
    """5 stops mid-upload: with on_error="warn" training goes on and the next save succeeds;
    with on_error="raise" the save fails with CheckpointWriteError. Nothing committed is lost."""
    rng = np.random.default_rng(0)
    x = rng.random((64, 512), dtype=np.float32)
    y = rng.random((64, 4), dtype=np.float32)
    stopper = ServerStopper(s3_server, monkeypatch, every=3, delay=0.15)
    fingerprints: dict[int, list[np.ndarray]] = {}

    class Restarter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            fingerprints[step] = [w.numpy().copy() for w in self.model.weights]
            stopper.restart_if_down()

    model = big_model()
    checkpoint = mk.ModelCheckpoint(f"{s3_dir}/w-{{epoch}}-{{batch}}.safetensors", save_weights_only=True,
                                    save_freq=2, on_error="warn", async_save=False, max_to_keep=3)  # fmt: skip
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[checkpoint, Restarter()])
    stopper.restart_if_down()
    assert "could not upload" in str(checkpoint.last_error) or "could not write" in str(checkpoint.last_error)
    assert stopper.stops >= 5, stopper.stops
    assert checkpoint.failed_saves >= 5
    assert checkpoint.failed_saves <= stopper.stops
    infos = mk.list_checkpoints(s3_dir)
    assert [i for i in infos if i.status == store.CORRUPT] == []  # 0 partial listed
    good = [i for i in infos if i.status == store.OK]
    assert good and good[0].step == 32  # the last save, after the last restart, succeeded
    for info in good:  # 0 corrupt loaded: each holds the weights of the step it names
        fresh = big_model(seed=7)
        mk.load_weights(fresh, info.path)
        for a, b in zip(fresh.weights, fingerprints[info.step]):
            np.testing.assert_array_equal(a.numpy(), b)

    # on_error="raise": the save fails with a CheckpointWriteError naming the URL
    raising = mk.ModelCheckpoint(f"{s3_dir}/r.safetensors", save_weights_only=True, save_freq=1, async_save=False)
    stopper.every = 1
    with pytest.raises(CheckpointWriteError, match=r"s3://.*r\.safetensors"):
        big_model().fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[raising])
    stopper.restart_if_down()
    assert [i.step for i in mk.list_checkpoints(s3_dir) if i.status == store.OK][0] == 32  # nothing lost


def test_s3_server_stopped_mid_load_fails_cleanly_then_loads(s3_server, s3_dir):
    """A load streamed into memory when the server stops in the middle: an error naming the
    download (never a partial state), and the same load succeeds, exact, once it is back."""
    from modelkeep.state import ModelState

    rng = np.random.default_rng(5)
    arrays = {f"model/w{i}": rng.standard_normal(4 << 20, dtype=np.float32) for i in range(6)}  # 96 MiB
    store.save_state(s3_dir, ModelState(arrays), step=3)
    url = f"{s3_dir}/ckpt-000000003"
    real = sfs._stream_s3
    calls = []

    async def stop_then_stream(fs, path, name, start, end, dest):
        calls.append(start)
        if len(calls) == 2:  # the first part is under way: the server goes down
            s3_server.stop(kill=True)
        return await real(fs, path, name, start, end, dest)

    sfs._stream_s3 = stop_then_stream
    try:
        with pytest.raises(OSError, match="could not download"):
            store.load_state(url)
    finally:
        sfs._stream_s3 = real
        s3_server.start()
    back = store.load_state(url)
    for key, value in arrays.items():
        np.testing.assert_array_equal(back.variables[key], value)
