"""AsyncWriter: one save in flight, snapshot on the caller's thread, errors surface, exit waits,
and a kill during a background write leaves the previous checkpoint good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from modelkeep.checkpoint import store
from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers
from modelkeep.errors import CheckpointWriteError
from modelkeep.state import ModelState

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src")}


def small_state(value: float) -> ModelState:
    return ModelState({"model/w": np.full((64, 64), value, np.float32), "optimizer/iteration": np.array(3)})


def test_save_writes_in_background_and_wait_returns_after_commit(tmp_path: Path) -> None:
    release = threading.Event()
    caller = threading.get_ident()
    seen: dict[str, int] = {}

    def write(state: ModelState) -> store.CheckpointInfo:
        seen["writer"] = threading.get_ident()
        release.wait(10)
        return store.save_state(tmp_path, state, step=1)

    def snapshot() -> ModelState:
        seen["snapshot"] = threading.get_ident()
        return small_state(1.0)

    writer = AsyncWriter()
    assert writer.save(snapshot, write, label="step 1") is True
    assert seen["snapshot"] == caller  # the snapshot is taken on the calling thread
    assert writer.busy and not (tmp_path / store.store_name(1)).exists()
    release.set()
    writer.wait()
    assert seen["writer"] != caller and not writer.busy
    loaded = store.load_state(tmp_path / store.store_name(1))
    assert np.array_equal(loaded.variables["model/w"], np.full((64, 64), 1.0, np.float32))
    record = writer.history[-1]
    assert record.label == "step 1" and record.error is None and record.result.step == 1
    writer.close()


def test_second_save_waits_for_the_first_before_its_snapshot() -> None:
    events: list[str] = []
    release = threading.Event()
    writer = AsyncWriter()

    def slow(tag: str):
        def run(_: object) -> None:
            events.append(f"write {tag} start")
            if tag == "1":
                release.wait(10)
            events.append(f"write {tag} end")

        return run

    writer.save(lambda: events.append("snap 1"), slow("1"))
    second = threading.Thread(target=lambda: writer.save(lambda: events.append("snap 2"), slow("2")))
    second.start()
    time.sleep(0.3)
    assert "snap 2" not in events  # blocked: one save in flight, no second snapshot in memory
    release.set()
    second.join(10)
    writer.close()
    assert events == ["snap 1", "write 1 start", "write 1 end", "snap 2", "write 2 start", "write 2 end"]


def test_skip_mode_drops_a_save_while_one_is_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    writer = AsyncWriter(when_busy="skip")
    snapshots = []
    assert writer.save(lambda: snapshots.append(1), lambda _: release.wait(10), label="first")
    assert writer.save(lambda: snapshots.append(2), lambda _: None, label="second") is False
    assert snapshots == [1] and writer.skipped == 1
    assert "skipped second" in caplog.text and "first is still being written" in caplog.text
    release.set()
    writer.wait()
    assert writer.save(lambda: snapshots.append(3), lambda _: None) is True
    writer.close()
    assert snapshots == [1, 3]
    with pytest.raises(ValueError, match="when_busy"):
        AsyncWriter(when_busy="sometimes")


def test_background_error_surfaces_on_next_save_and_at_close(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the checkpoint directory should be")
    writer = AsyncWriter()
    writer.submit(lambda: store.save_state(blocked, small_state(1.0), step=1), label="bad")
    with pytest.raises((CheckpointWriteError, OSError)) as raised:
        writer.submit(lambda: None, label="next")
    assert "not-a-dir" in str(raised.value)
    assert writer.history[-1].label == "bad"  # the next job was not queued
    writer.submit(lambda: 1 / 0, label="divide")
    with pytest.raises(ZeroDivisionError):
        writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(lambda: None)


def test_writer_thread_runs_at_lower_priority() -> None:
    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priority on this platform")
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with AsyncWriter(nice=5) as writer:
        writer.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert writer.history[-1].result == min(19, main + 5)


def test_interpreter_exit_waits_for_the_last_save(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time, numpy as np
        from modelkeep.checkpoint import store
        from modelkeep.checkpoint.writer import AsyncWriter
        from modelkeep.state import ModelState
        w = AsyncWriter()
        def write(state):
            time.sleep(1.0)
            store.save_state({str(tmp_path)!r}, state, step=5)
        w.save(lambda: ModelState({{"model/w": np.arange(10.0)}}), write)
        print("leaving", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    state = store.load_state(tmp_path / store.store_name(5))
    assert np.array_equal(state.variables["model/w"], np.arange(10.0))


def test_failed_last_save_is_reported_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from modelkeep.checkpoint.writer import AsyncWriter
        w = AsyncWriter()
        def fail():
            raise OSError(28, "No space left on device")
        w.submit(fail, label="final")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert "the last background save failed" in done.stdout + done.stderr
    assert "No space left on device" in done.stdout + done.stderr


KILL_CHILD = """
import sys, numpy as np
from modelkeep.checkpoint import store
from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers
from modelkeep.state import ModelState
directory = sys.argv[1]
big = lambda v: ModelState({"model/w": np.full(48 << 20, v, np.float32)})  # 192 MiB
store.save_state(directory, big(1.0), step=1)
print("first", flush=True)
w = AsyncWriter()
for step in range(2, 100):
    w.save(lambda: big(float(step)), lambda s, step=step: store.save_state(directory, s, step=step))
    print("queued", step, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.4])
def test_kill_during_background_write_leaves_the_previous_checkpoint_good(tmp_path: Path, delay: float) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(tmp_path)], env=ENV,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "first"
    assert child.stdout.readline().startswith("queued")
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    infos = store.list_checkpoints(tmp_path)
    assert infos, "no checkpoint listed"
    good = store.latest_good(tmp_path, warn=False)
    assert good is not None and good.step >= 1
    for info in infos:  # nothing committed is partial: every listed ckpt-N verifies
        if info.status == store.OK:
            loaded = store.load_state(info.path)
            assert np.all(loaded.variables["model/w"] == float(info.step))
        else:
            assert info.status == store.INCOMPLETE  # never a corrupt committed checkpoint


def test_snapshot_buffers_reuse_arrays_and_copy_exactly() -> None:
    buffers = SnapshotBuffers()
    source = {"model/w": np.arange(12.0).reshape(3, 4), "optimizer/iteration": np.array(5)}
    first = buffers.copy(ModelState(dict(source), None, None, {"step": 1}))
    kept = first.variables["model/w"]
    assert np.array_equal(kept, source["model/w"]) and kept is not source["model/w"]
    source["model/w"] = source["model/w"] * 2  # a later value of the variable
    second = buffers.copy(ModelState(dict(source), None, None, {"step": 2}))
    assert second.variables["model/w"] is kept  # the same memory, already mapped
    assert np.array_equal(kept, np.arange(12.0).reshape(3, 4) * 2)
    assert second.variables["optimizer/iteration"].shape == () and second.metadata == {"step": 2}
    grown = buffers.copy(ModelState({"model/w": np.ones((5, 4))}))
    assert grown.variables["model/w"].shape == (5, 4) and list(grown.variables) == ["model/w"]


def test_snapshot_buffers_lay_arrays_back_to_back_in_one_aligned_mapping() -> None:
    """The snapshot is one page-aligned buffer in state order (a safetensors data section);
    align=64 starts every array at a multiple of 64 bytes instead; reserve() maps ahead."""
    source = {"model/a": np.arange(7, dtype=np.float32), "model/b": np.arange(5, dtype=np.int64),
              "rng/s": np.array([3, 4], np.uint32)}  # fmt: skip
    buffers = SnapshotBuffers()
    buffers.reserve(1 << 20)
    mapped = buffers.capacity
    assert mapped >= 1 << 20
    packed = buffers.copy(ModelState(dict(source))).variables
    addresses = [a.__array_interface__["data"][0] for a in packed.values()]
    assert addresses[0] % 4096 == 0
    assert addresses[1] == addresses[0] + 28 and addresses[2] == addresses[1] + 40
    assert buffers.capacity == mapped  # the reserved mapping was used
    for key, value in source.items():
        assert packed[key].dtype == value.dtype and np.array_equal(packed[key], value)
    aligned = buffers.copy(ModelState(dict(source)), align=64).variables
    assert all(a.__array_interface__["data"][0] % 64 == 0 for a in aligned.values())
    assert all(np.array_equal(aligned[k], v) for k, v in source.items())


def test_each_save_records_its_wait_its_snapshot_and_the_writers_phases() -> None:
    """The breakdown ``benchmarks/ckpt_bench.py`` prints: the training thread's wait for the save
    before and its snapshot, and per phase the writer thread's wall and CPU seconds."""
    from modelkeep.storage.phases import phase

    release = threading.Event()

    def write(_data: object) -> None:
        with phase("spin"):
            end = time.thread_time() + 0.05  # CPU on the writer thread
            while time.thread_time() < end:
                pass
        with phase("sleep"):
            threading.Timer(0.3, release.set).start()
            release.wait(10)  # wall only
        with phase("sleep"):
            time.sleep(0.01)

    with phase("outside any save"):  # records nothing: no collect() on this thread
        pass
    writer = AsyncWriter()
    writer.save(lambda: time.sleep(0.05), write, label="first")
    writer.save(lambda: None, lambda _d: None, label="second")  # waits for the first (over 0.3 s)
    writer.close()
    first, second = writer.history
    assert first.snapshot_seconds >= 0.05 and first.waited_seconds < 0.05
    assert second.waited_seconds >= 0.25, second.waited_seconds
    assert set(first.phases) == {"spin", "sleep"} and not second.phases
    spin_wall, spin_cpu = first.phases["spin"]
    sleep_wall, sleep_cpu = first.phases["sleep"]
    assert spin_cpu >= 0.05 and spin_wall >= spin_cpu * 0.9
    assert sleep_wall >= 0.3 and sleep_cpu < 0.05
