"""Hot reload: a trainer writes checkpoints into a run directory while clients keep asking.

The server (``--poll-seconds 0.2``) must swap each new good checkpoint in with no failed
request, answer every request from exactly one version (its ``X-Model-Version`` header and
its numbers agree), and never serve a corrupt or incomplete checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import numpy as np

import modelkeep as mk
from modelkeep.capture import build_model
from modelkeep.checkpoint import store
from test_serving_helpers import ServerProcess, tutorial_rows

STEPS_PER_EPOCH = 8
EPOCHS = 7
CORRUPT_STEP = 3 * STEPS_PER_EPOCH + 1  # written right after epoch 3's good checkpoint
INCOMPLETE_STEP = 4 * STEPS_PER_EPOCH + 1  # files without a manifest, after epoch 4's

TRAINER = f"""
import shutil, sys, time
from pathlib import Path
import keras
import modelkeep as mk
from modelkeep.capture import capture
from modelkeep.checkpoint import store
from modelkeep.demo import tutorial_data, tutorial_model
from modelkeep.formats import registry

run, go = Path(sys.argv[1]), Path(sys.argv[2])
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
    if epoch == 1:
        while not go.exists():
            time.sleep(0.05)
    time.sleep(0.8)
print("trainer done", flush=True)
"""


def load_version(run, step: int):
    (info,) = [c for c in store.list_checkpoints(run) if c.step == step]
    assert info.status == "ok"
    if info.format == "modelkeep backup":
        return build_model(store.load_state(info.path), compile=False)
    return mk.load_model(info.path, compile=False)


def test_hot_reload_under_load(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    go = tmp_path / "go"
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    trainer = subprocess.Popen([sys.executable, str(script), str(run), str(go)])
    server = ServerProcess(run, "--name", "tutorial", "--poll-seconds", "0.2", log_dir=tmp_path, grpc=False)
    rows = tutorial_rows(2, seed=5)
    answers: dict[int, list[np.ndarray]] = {}
    failures: list[str] = []
    done = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                try:
                    r = http.post(f"{server.url}/v1/models/tutorial:predict", json={"instances": rows.tolist()})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
                    continue
                answers.setdefault(int(r.headers["X-Model-Version"]), []).append(np.array(r.json()["predictions"]))

    try:
        server.wait(timeout=120)
        go.touch()
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 90
        while trainer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # let the last checkpoint be picked up under load
        done.set()
        for t in threads:
            t.join(30)
        status = httpx.get(f"{server.url}/v1/models/tutorial").json()["model_version_status"]
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        done.set()
        trainer.wait(60)
        assert server.stop() == 0, server.log()
    assert trainer.returncode == 0
    total = sum(len(v) for v in answers.values())
    print(f"{total} requests during reloads, {len(failures)} failed, versions seen {sorted(answers)}")
    assert failures == []
    good_steps = [e * STEPS_PER_EPOCH for e in range(1, EPOCHS + 1)]
    assert set(answers) <= set(good_steps), sorted(answers)
    assert len(answers) >= 4, sorted(answers)
    assert EPOCHS * STEPS_PER_EPOCH in answers  # the last checkpoint was swapped in
    for step, got in answers.items():  # each answer is exactly that version's output
        want = load_version(run, step).predict(rows, verbose=0)
        for prediction in got:
            np.testing.assert_allclose(prediction, want, rtol=1e-5, atol=1e-6)
    states = {int(s["version"]): s for s in status}
    assert states[EPOCHS * STEPS_PER_EPOCH]["state"] == "AVAILABLE"
    assert states[CORRUPT_STEP]["status"]["error_code"] == "DATA_LOSS"
    assert 'modelkeep_checkpoints_rejected_total{model="tutorial",reason="corrupt"} 1' in metrics
    assert 'reason="incomplete"' in metrics
