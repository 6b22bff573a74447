"""Hot reload: a trainer writes checkpoints into a run directory while clients keep asking.

The server (``--poll-seconds 0.2``) must swap each new good checkpoint in with no failed
request, answer every request from exactly one version (its ``X-Model-Version`` header and
its numbers agree), and never serve a corrupt or incomplete checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.capture import build_model
from modelkeep.checkpoint import store
from test_serving_helpers import ServerProcess, tutorial_rows

STEPS_PER_EPOCH = 8
EPOCHS = 6
CORRUPT_STEP = 3 * STEPS_PER_EPOCH + 1  # written right after epoch 3's good checkpoint
INCOMPLETE_STEP = 4 * STEPS_PER_EPOCH + 1  # files without a manifest, after epoch 4's

TRAINER = f"""
import json, shutil, sys, time
import numpy as np
from pathlib import Path
import keras
import modelkeep as mk
from modelkeep.capture import capture
from modelkeep.checkpoint import store
from modelkeep.demo import tutorial_data, tutorial_model
from modelkeep.formats import registry

run, go = Path(sys.argv[1]), Path(sys.argv[2])
rows = np.load(run.parent / "rows.npy")
expected = {{}}
keras.utils.set_random_seed(0)
x, y, _ = tutorial_data()
model = tutorial_model()
for epoch in range(1, {EPOCHS} + 1):
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    step = epoch * {STEPS_PER_EPOCH}
    if epoch % 2:
        path = run / f"model-{{step}}.keras"
        mk.save_model(model, path)
        store.write_sidecar_manifest(path, registry.KERAS_ZIP, {{"step": step, "epoch": epoch}})
    else:
        store.save_state(run, capture(model), step=step, metadata={{"epoch": epoch}})
    if epoch == 3:  # newest for a while, but one byte flipped after its manifest was written
        bad = run / f"model-{CORRUPT_STEP}.keras"
        shutil.copy(run / f"model-{{step}}.keras", bad)
        store.write_sidecar_manifest(bad, registry.KERAS_ZIP, {{"step": {CORRUPT_STEP}, "epoch": epoch}})
        data = bytearray(bad.read_bytes()); data[len(data) // 2] ^= 0x40; bad.write_bytes(bytes(data))
    if epoch == 4:  # a save that never finished: no manifest
        mk.save_model(model, run / f"model-{INCOMPLETE_STEP}.keras")
    expected[step] = np.asarray(model(rows, training=False)).tolist()  # what version `step` must answer
    (run.parent / "expected.json").write_text(json.dumps(expected))
    if epoch == 1:
        while not go.exists():
            time.sleep(0.05)
    # a handshake, not a sleep: wait (at most 60 s) until a client was answered by this version,
    # so a loaded machine cannot make the server skip versions
    deadline = time.monotonic() + 60
    while not (run.parent / f"seen-{{step}}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
print("trainer done", flush=True)
"""


def load_version(infos, step: int):
    (info,) = [c for c in infos if c.step == step]
    assert info.status == "ok"
    if info.format == "modelkeep backup":
        return build_model(store.load_state(info.path), compile=False)
    return mk.load_model(info.path, compile=False)


class LoadLoop:
    """Client threads posting the same rows until stopped; answers grouped by version."""

    def __init__(self, url: str, rows: np.ndarray, threads: int = 4, seen_dir=None):
        self.url, self.rows, self.seen_dir = url, rows, seen_dir
        self.answers: dict[int, list[np.ndarray]] = {}
        self.failures: list[str] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(threads)]

    def _client(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.done.is_set():
                try:
                    r = http.post(f"{self.url}/v1/models/tutorial:predict", json={"instances": self.rows.tolist()})
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code}: {r.text}")
                    continue
                version = int(r.headers["X-Model-Version"])
                if self.seen_dir is not None and version not in self.answers:
                    (self.seen_dir / f"seen-{version}").touch()
                self.answers.setdefault(version, []).append(np.array(r.json()["predictions"]))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(30)

    def run_while(self, proc: subprocess.Popen, limit: float = 120, tail: float = 1.5, until: int | None = None) -> None:
        """Ask while ``proc`` runs; then ``tail`` seconds more, or until version ``until`` answered
        (at most 60 s: a loaded machine may take long to swap the last checkpoint in)."""
        self.start()
        deadline = time.monotonic() + limit
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if until is None:
            time.sleep(tail)
        else:
            deadline = time.monotonic() + 60
            while until not in self.answers and time.monotonic() < deadline:
                time.sleep(0.1)
        self.stop()

    def check(self, run, expected: dict[int, np.ndarray] | None = None) -> int:
        """No failure, and every answer equals the output of the version its header names
        (``expected`` by step, else each version is loaded from the run and called)."""
        total = sum(len(v) for v in self.answers.values())
        print(f"{total} requests during reloads, {len(self.failures)} failed, versions seen {sorted(self.answers)}")
        assert self.failures == []
        infos = store.list_checkpoints(run)
        for step, got in self.answers.items():
            if expected is not None:
                want = expected[step]
            else:
                want = np.asarray(load_version(infos, step)(self.rows, training=False))
            for prediction in got:
                np.testing.assert_allclose(prediction, want, rtol=1e-5, atol=1e-6)
        return total


def test_hot_reload_under_load(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    go = tmp_path / "go"
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    rows = tutorial_rows(2, seed=5)
    np.save(tmp_path / "rows.npy", rows)
    trainer = subprocess.Popen([sys.executable, str(script), str(run), str(go)])
    server = ServerProcess(run, "--name", "tutorial", "--poll-seconds", "0.2", log_dir=tmp_path, grpc=False)
    load = LoadLoop(server.url, rows, seen_dir=tmp_path)
    try:
        server.wait(timeout=120)
        go.touch()
        load.run_while(trainer, limit=600, until=EPOCHS * STEPS_PER_EPOCH)
        status = httpx.get(f"{server.url}/v1/models/tutorial").json()["model_version_status"]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        load.done.set()
        trainer.wait(60)
        assert server.stop() == 0, server.log()
    assert trainer.returncode == 0
    expected = {int(k): np.array(v) for k, v in json.loads((tmp_path / "expected.json").read_text()).items()}
    load.check(run, expected)
    good_steps = [e * STEPS_PER_EPOCH for e in range(1, EPOCHS + 1)]
    assert set(load.answers) <= set(good_steps), sorted(load.answers)
    assert len(load.answers) >= 4, sorted(load.answers)
    assert EPOCHS * STEPS_PER_EPOCH in load.answers  # the last checkpoint was swapped in
    states = {int(s["version"]): s for s in status}
    assert states[EPOCHS * STEPS_PER_EPOCH]["state"] == "AVAILABLE"
    assert states[CORRUPT_STEP]["status"]["error_code"] == "DATA_LOSS"
    assert 'modelkeep_checkpoints_rejected_total{model="tutorial",reason="corrupt"} 1' in metrics
    assert 'reason="incomplete"' in metrics


FIT_TRAINER = """
import sys, time
from pathlib import Path
import keras
import modelkeep as mk
from modelkeep.demo import tutorial_data, tutorial_model

run, go = Path(sys.argv[1]), Path(sys.argv[2])
keras.utils.set_random_seed(0)
x, y, _ = tutorial_data()
model = tutorial_model()

class Pace(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        while epoch == 0 and not go.exists():
            time.sleep(0.05)
        time.sleep(0.5)

model.fit(x, y, epochs=6, batch_size=64, verbose=0,
          callbacks=[mk.ModelCheckpoint(str(run / "model-{epoch:02d}.keras")), Pace()])
print("trainer done", flush=True)
"""


@pytest.mark.slow
def test_hot_reload_follows_modelcheckpoint_during_fit(tmp_path):
    """The real thing: ``model.fit`` with ``mk.ModelCheckpoint`` writing into the served run."""
    run = tmp_path / "run"
    run.mkdir()
    go = tmp_path / "go"
    script = tmp_path / "fit.py"
    script.write_text(FIT_TRAINER)
    trainer = subprocess.Popen([sys.executable, str(script), str(run), str(go)])
    server = ServerProcess(run, "--name", "tutorial", "--poll-seconds", "0.2", log_dir=tmp_path, grpc=False)
    load = LoadLoop(server.url, tutorial_rows(2, seed=6))
    try:
        server.wait(timeout=120)
        go.touch()
        load.run_while(trainer, limit=120)
    finally:
        load.done.set()
        trainer.wait(60)
        assert server.stop() == 0, server.log()
    assert trainer.returncode == 0
    load.check(run)
    steps = sorted(c.step for c in store.list_checkpoints(run) if c.status == "ok")
    assert set(load.answers) <= set(steps) and steps[-1] in load.answers and len(load.answers) >= 3
