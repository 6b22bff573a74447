"""Save/load speed, training stall and memory of modelkeep against Keras, TF and the raw disk.

Every figure comes from the same run (ratios only mean something within one run):

    python benchmarks/run.py [--size-gb 1.0] [--reps 3] [--json out.json] [--dir DIR]

* save/load, median of ``--reps``, seconds and GB/s, for every modelkeep format, Keras's
  own ``save_weights``/``model.save``/``load_weights``/``load_model``, ``tf.train.Checkpoint``
  and the raw reference (the same bytes: one write + fsync; one read). Keras's and TF's
  saves get an fsync of their files, because modelkeep's saves are durable.
* training stall per checkpoint: ``fit`` with a checkpoint every epoch minus ``fit``
  without, divided by the number of checkpoints, synchronous vs ``AsyncWriter``; against
  the floor of any async design, one in-memory copy of the state.
* the writer thread's GIL footprint: a pure-Python loop's speed while the writer writes,
  over its speed alone.
* peak extra memory (RssAnon sampling) of a synchronous and an asynchronous save.

Reads come from the page cache for every contender alike (dropping it needs root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

import modelkeep  # noqa: E402  - before TensorFlow: keeps its start-up lines off stderr

GB = 1e9
GIB = 1 << 30


# ------------------------------------------------------------------------ the model
def build_model(size_gb: float, seed: int = 0, optimizer: str = "sgd") -> Any:
    """A Dense stack whose float32 weights total about ``size_gb`` GiB, compiled with SGD
    (no optimizer slots, so the state is the weights plus the iteration counter), or with
    ``optimizer="adam"`` (two slots a weight: the state is three times the weights)."""
    import keras

    nbytes = size_gb * GIB
    layers = 16 if nbytes >= 256 << 20 else 4
    width = max(8, int((nbytes / (4 * layers)) ** 0.5))
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((width,))])
    for _ in range(layers):
        model.add(keras.layers.Dense(width, kernel_initializer="zeros", bias_initializer="zeros"))
    rng = np.random.default_rng(seed)
    for variable in model.weights:  # random values without a slow initializer
        variable.assign(rng.standard_normal(tuple(variable.shape), dtype=np.float32))
    chosen = keras.optimizers.Adam(1e-6) if optimizer == "adam" else keras.optimizers.SGD(1e-6)
    model.compile(optimizer=chosen, loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def state_bytes(model: Any) -> int:
    return sum(int(np.prod(v.shape)) * 4 for v in model.weights)


# ------------------------------------------------------------------------ timing helpers
def fsync_all(path: Path) -> None:
    """fsync a file, or every file of a directory or a TF checkpoint prefix."""
    from modelkeep.storage.commit import fsync_path, fsync_tree

    if path.is_dir():
        fsync_tree(path)
        return
    if path.exists():
        fsync_path(path)
    for sibling in path.parent.glob(path.name + ".*"):
        fsync_path(sibling)
    fsync_path(path.parent)


def timed(fn: Callable[[], Any], reps: int, setup: Callable[[], Any] | None = None) -> list[float]:
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def figure(times: list[float], nbytes: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {"seconds": median, "gb_per_s": nbytes / median / GB if median else None, "runs": times}


def remove(path: Path) -> None:
    for candidate in [path, *path.parent.glob(path.name + ".*")]:
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        elif candidate.exists():
            candidate.unlink()


# ------------------------------------------------------------------------ contenders
def raw_reference(model: Any, work: Path, reps: int) -> dict[str, Any]:
    """The same bytes in one buffer: one write + fsync; one read; read + assign (the floor)."""
    arrays = [v.numpy() for v in model.weights]
    buffer = np.concatenate([a.reshape(-1) for a in arrays])
    del arrays
    path = work / "raw.bin"

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
        os.close(fd)

    def read() -> np.ndarray:
        out = np.empty(buffer.size, np.float32)
        with open(path, "rb", buffering=0) as handle:
            view, done = memoryview(out).cast("B"), 0
            while done < len(view):
                done += handle.readinto(view[done:])
        return out

    def read_assign() -> None:
        flat, offset = read(), 0
        for variable in model.weights:
            count = int(np.prod(variable.shape))
            variable.assign(flat[offset : offset + count].reshape(tuple(variable.shape)))
            offset += count

    nbytes = buffer.nbytes
    out = {"write_fsync": figure(timed(write, reps), nbytes), "read": figure(timed(read, reps), nbytes),
           "read_assign": figure(timed(read_assign, reps), nbytes)}  # fmt: skip
    copy_times = timed(lambda: buffer.copy(), reps)
    out["copy"] = figure(copy_times, nbytes)
    out["checksum"] = checksum_figures(buffer, reps)
    path.unlink()
    return out


def checksum_figures(buffer: np.ndarray, reps: int) -> dict[str, Any]:
    """CRC-32 throughput over the state: zlib vs ISA-L (same values), one thread vs two."""
    import zlib

    from modelkeep.storage import checksums

    view = memoryview(buffer).cast("B")
    out = {"zlib_crc32": figure(timed(lambda: zlib.crc32(view), reps), view.nbytes)}
    try:
        from isal.isal_zlib import crc32 as isal_crc32

        out["isal_crc32"] = figure(timed(lambda: isal_crc32(view), reps), view.nbytes)
    except ImportError:
        pass
    out["modelkeep_crc32_2_threads"] = figure(timed(lambda: checksums.crc32_buffers([view]), reps), view.nbytes)
    return out


def modelkeep_contenders(model: Any, work: Path) -> dict[str, tuple[Callable, Callable, Path]]:
    """name -> (save, load, path) for every modelkeep format."""
    import modelkeep as mk
    from modelkeep.capture import capture, restore
    from modelkeep.checkpoint import store

    backup_dir = work / "backup"

    def save_backup() -> None:
        shutil.rmtree(backup_dir, ignore_errors=True)
        store.save_state(backup_dir, capture(model, copy=False), step=1)

    def load_backup() -> None:
        path = backup_dir / store.store_name(1)
        restore(model, store.load_state(path), source=str(path))

    table = {"modelkeep backup ckpt (default)": (save_backup, load_backup, backup_dir)}
    weights = {"safetensors": "w.safetensors", "TF checkpoint": "tfckpt/w", ".weights.h5": "w.weights.h5"}
    for name, rel in weights.items():
        path = work / rel
        table[f"modelkeep {name}"] = (lambda p=path: mk.save_weights(model, p), lambda p=path: mk.load_weights(model, p), path)
    for name, rel in {".h5": "m.h5", ".keras": "m.keras", "SavedModel": "savedmodel"}.items():
        path = work / rel
        table[f"modelkeep {name} (whole model)"] = (lambda p=path: mk.save_model(model, p), lambda p=path: mk.load_model(p), path)
    return table


def keras_contenders(model: Any, work: Path) -> dict[str, tuple[Callable, Callable, Path]]:
    import keras
    import tensorflow as tf

    weights, whole, prefix = work / "k.weights.h5", work / "k.keras", work / "tfc" / "ckpt"
    checkpoint = tf.train.Checkpoint(model=model)

    def keras_save_weights() -> None:
        model.save_weights(weights)
        fsync_all(weights)

    def keras_save() -> None:
        model.save(whole)
        fsync_all(whole)

    def tf_write() -> None:
        checkpoint.write(str(prefix))
        fsync_all(prefix)

    return {
        "Keras save_weights(.weights.h5)+fsync / load_weights": (keras_save_weights, lambda: model.load_weights(weights), weights),
        "Keras model.save(.keras)+fsync / load_model": (keras_save, lambda: keras.models.load_model(whole), whole),
        "tf.train.Checkpoint write+fsync / read": (tf_write, lambda: checkpoint.read(str(prefix)).expect_partial(), prefix),
    }


def run_contender(name: str, save: Callable, load: Callable, path: Path, nbytes: int, reps: int) -> dict[str, Any]:
    print(f"  {name} ...", end="", flush=True)
    save_times = timed(save, reps, setup=lambda: remove(path))
    load_times = timed(load, reps)
    remove(path)
    out = {"save": figure(save_times, nbytes), "load": figure(load_times, nbytes)}
    print(f" save {out['save']['seconds']:.3f} s, load {out['load']['seconds']:.3f} s", flush=True)
    return out


# ------------------------------------------------------------------------ memory, GIL
class RssSampler:
    """Peak anonymous RSS above its value at the start, sampled every millisecond."""

    def __enter__(self) -> RssSampler:
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):  # the process's own memory, not mapped files
                return int(line.split()[1]) * 1024
    return 0


def memory_figures(model: Any, work: Path) -> dict[str, Any]:
    import gc

    from modelkeep.capture import capture
    from modelkeep.checkpoint import store
    from modelkeep.checkpoint.writer import AsyncWriter

    gc.collect()
    with RssSampler() as sync_mem:
        store.save_state(work / "mem", capture(model, copy=False), step=1)
    gc.collect()
    writer = AsyncWriter()
    with RssSampler() as async_mem:
        writer.save(lambda: capture(model), lambda s: store.save_state(work / "mem", s, step=2))
        writer.close()
    shutil.rmtree(work / "mem", ignore_errors=True)
    return {"sync_save_extra_bytes": sync_mem.extra, "async_save_extra_bytes": async_mem.extra}


def gil_share(model: Any, work: Path) -> dict[str, Any]:
    """How fast a pure-Python loop runs while the writer writes, relative to alone."""
    from modelkeep.capture import capture
    from modelkeep.checkpoint import store
    from modelkeep.checkpoint.writer import AsyncWriter

    def spin(stop: Callable[[], bool]) -> tuple[int, float]:
        count, start = 0, time.perf_counter()
        while not stop():
            for _ in range(1000):
                count += 1
        return count, time.perf_counter() - start

    state = capture(model)
    writer = AsyncWriter()
    writer.submit(lambda: store.save_state(work / "gil", state, step=1))
    busy_count, busy_seconds = spin(lambda: not writer.busy)
    writer.close()
    deadline = time.perf_counter() + busy_seconds
    idle_count, idle_seconds = spin(lambda: time.perf_counter() >= deadline)
    shutil.rmtree(work / "gil", ignore_errors=True)
    share = (busy_count / busy_seconds) / (idle_count / idle_seconds)
    return {"python_loop_speed_during_write_over_alone": share, "write_seconds": busy_seconds}


# ------------------------------------------------------------------------ training stall
def stall_figures(model: Any, work: Path, sync_save_s: float, copy_s: float, epochs: int, rounds: int) -> dict[str, Any]:
    """fit with a backup checkpoint every epoch minus fit without, per checkpoint; modes are
    interleaved for ``rounds`` rounds and medians kept (other processes share the CPUs)."""
    import keras

    from modelkeep.capture import capture
    from modelkeep.checkpoint import store
    from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers

    width = model.inputs[0].shape[-1]
    x = np.random.default_rng(1).standard_normal((64, width), dtype=np.float32)
    model.fit(x[:16], x[:16], batch_size=8, epochs=1, verbose=0)  # warm up tracing
    start = time.perf_counter()
    model.fit(x[:16], x[:16], batch_size=8, epochs=1, verbose=0)
    step_s = (time.perf_counter() - start) / 2
    # an epoch should outlast a background write, or the next save waits on the previous one
    steps = max(4, min(64, int(2.0 * sync_save_s / step_s) + 1))
    data = np.resize(x, (steps * 8, width))

    class Every(keras.callbacks.Callback):
        """sync; async (the design: copy into reused buffers, writer at normal priority); async_fresh
        (copy into fresh arrays); async_nice10 (writer niced by 10); async_cow (no
        copy: views that TF copies-on-write at the next update)."""

        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode, self.writer = mode, AsyncWriter(nice=10 if mode == "async_nice10" else 0)
            self.buffers, self.blocked = SnapshotBuffers(), []

        def take(self) -> Any:
            if self.mode == "async_cow":
                return capture(self.model, copy=False)
            if self.mode == "async_fresh":
                return capture(self.model)
            return self.buffers.copy(capture(self.model, copy=False))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            target, begin = work / f"stall-{self.mode}", time.perf_counter()
            if self.mode == "sync":
                store.save_state(target, capture(self.model, copy=False), step=epoch)
            elif self.mode != "none":
                self.writer.save(self.take, lambda s: store.save_state(target, s, step=epoch))
            self.blocked.append(time.perf_counter() - begin)

    def fit_time(mode: str) -> tuple[float, float, float]:
        callback = Every(mode)
        begin = time.perf_counter()
        model.fit(data, data, batch_size=8, epochs=epochs, verbose=0, callbacks=[callback])
        fitted = time.perf_counter() - begin
        callback.writer.close()
        drain = time.perf_counter() - begin - fitted
        shutil.rmtree(work / f"stall-{mode}", ignore_errors=True)
        return fitted, drain, statistics.median(callback.blocked)

    runs: dict[str, list[tuple[float, float, float]]] = {"none": [], "sync": [], "async": []}
    for _ in range(max(1, rounds)):
        for mode in runs:
            runs[mode].append(fit_time(mode))
    variants = {mode: fit_time(mode) for mode in ("async_fresh", "async_nice10", "async_cow")}
    base_s = statistics.median(r[0] for r in runs["none"])

    def per_ckpt(fit_s: float) -> float:
        return max(0.0, fit_s - base_s) / epochs

    sync_stall = per_ckpt(statistics.median(r[0] for r in runs["sync"]))
    async_stall = per_ckpt(statistics.median(r[0] for r in runs["async"]))
    return {
        "epochs": epochs, "steps_per_epoch": steps, "step_s": step_s, "rounds": rounds,
        "fit_s": {mode: [r[0] for r in rs] for mode, rs in runs.items()},
        "blocked_in_callback_s": {mode: statistics.median(r[2] for r in rs) for mode, rs in runs.items() if mode != "none"},
        "other_designs_stall_per_ckpt_s": {m: per_ckpt(r[0]) for m, r in variants.items()},
        "other_designs_blocked_in_callback_s": {m: r[2] for m, r in variants.items()},
        "async_final_drain_s": statistics.median(r[1] for r in runs["async"]),
        "sync_stall_per_ckpt_s": sync_stall, "async_stall_per_ckpt_s": async_stall,
        "copy_floor_s": copy_s, "async_stall_over_copy": async_stall / copy_s if copy_s else None,
        "async_stall_over_sync_stall": async_stall / sync_stall if sync_stall else None,
        "async_stall_over_sync_save": async_stall / sync_save_s if sync_save_s else None,
    }  # fmt: skip


# ------------------------------------------------------------------------ report
BACKUP = "modelkeep backup ckpt (default)"
KERAS_WEIGHTS = "Keras save_weights(.weights.h5)+fsync / load_weights"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue with its measured ratio (pass when ratio <= limit)."""
    ours, raw, keras_w = results["formats"][BACKUP], results["raw"], results["formats"][KERAS_WEIGHTS]
    stall, memory, nbytes = results["stall"], results["memory"], results["state_bytes"]
    rows = [
        ("save backup / raw write+fsync", ours["save"]["seconds"] / raw["write_fsync"]["seconds"], 1.3),
        ("save backup / Keras save_weights+fsync", ours["save"]["seconds"] / keras_w["save"]["seconds"], 1.0),
        ("load backup / floor (read + assign)", ours["load"]["seconds"] / raw["read_assign"]["seconds"], 1.3),
        ("load backup / Keras load_weights", ours["load"]["seconds"] / keras_w["load"]["seconds"], 1.0),
        ("async stall per ckpt / one in-memory copy", stall["async_stall_over_copy"], 3.0),
        ("peak extra memory, async save / state size", memory["async_save_extra_bytes"] / nbytes, 1.0),
        ("peak extra memory, sync save / state size", memory["sync_save_extra_bytes"] / nbytes, 1.0),
    ]
    return [{"target": name, "ratio": ratio, "limit": limit, "met": ratio is not None and ratio <= limit}
            for name, ratio, limit in rows]  # fmt: skip


def print_report(results: dict[str, Any]) -> None:
    nbytes = results["state_bytes"]
    print(f"\nstate: {nbytes / GIB:.3f} GiB float32, median of {results['reps']} reps, {results['cpus']} CPUs")
    raw = results["raw"]
    print(f"\n{'contender':58s} {'save s':>8s} {'GB/s':>6s} {'load s':>8s} {'GB/s':>6s} {'save/raw':>8s} {'load/floor':>10s}")
    rows = {"raw: one write+fsync / one read": {"save": raw["write_fsync"], "load": raw["read"]},
            "floor: one read + assign into the variables": {"save": raw["write_fsync"], "load": raw["read_assign"]}}  # fmt: skip
    rows.update(results["formats"])
    for name, fig in rows.items():
        save, load = fig["save"], fig["load"]
        print(f"{name[:58]:58s} {save['seconds']:8.3f} {save['gb_per_s']:6.2f} {load['seconds']:8.3f} {load['gb_per_s']:6.2f} "
              f"{save['seconds'] / raw['write_fsync']['seconds']:8.2f} {load['seconds'] / raw['read_assign']['seconds']:10.2f}")  # fmt: skip
    stall = results["stall"]
    print(f"\none in-memory copy of the state: {raw['copy']['seconds']:.3f} s")
    print("CRC-32 over the state: " + ", ".join(f"{k} {v['gb_per_s']:.2f} GB/s" for k, v in raw["checksum"].items()))
    print(f"training stall per checkpoint ({stall['epochs']} epochs x {stall['steps_per_epoch']} steps): "
          f"sync {stall['sync_stall_per_ckpt_s']:.3f} s, async {stall['async_stall_per_ckpt_s']:.3f} s "
          f"(async/sync stall {_fmt(stall['async_stall_over_sync_stall'])}, async/sync save "
          f"{_fmt(stall['async_stall_over_sync_save'])}); last async save drained in {stall['async_final_drain_s']:.3f} s")  # fmt: skip
    blocked = stall["blocked_in_callback_s"]
    print(f"training thread blocked in the checkpoint callback: sync {blocked['sync']:.3f} s, async {blocked['async']:.3f} s")
    others = ", ".join(f"{k} {v:.3f} s (blocked {stall['other_designs_blocked_in_callback_s'][k]:.3f} s)"
                       for k, v in stall["other_designs_stall_per_ckpt_s"].items())
    print(f"other writer designs, stall per checkpoint: {others} "
          "(fresh: snapshot into new arrays; nice10: writer niced by 10; cow: no snapshot copy, "
          "TF copies on the next update)")
    gil = results["gil"]
    print(f"writer thread GIL footprint: a Python loop runs at {gil['python_loop_speed_during_write_over_alone']:.2f}x "
          f"its solo speed while the writer writes ({gil['write_seconds']:.2f} s)")  # fmt: skip
    mem = results["memory"]
    print(f"peak extra memory: sync save {mem['sync_save_extra_bytes'] / GIB:.3f} GiB, "
          f"async save {mem['async_save_extra_bytes'] / GIB:.3f} GiB (state {nbytes / GIB:.3f} GiB)")
    print("\ntargets:")
    for row in results["targets"]:
        mark = "met" if row["met"] else "MISSED"
        print(f"  {row['target']:48s} {row['ratio']:7.3f}  (<= {row['limit']})  {mark}" if row["ratio"] is not None else f"  {row['target']:48s}     n/a")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def duration_note(args: argparse.Namespace) -> str:
    """What the run is about to do and how long that took where it was measured."""
    return (
        f"benchmark: {args.size_gb:g} GiB of float32 state, median of {args.reps}, 12 save/load contenders, then "
        "memory, GIL and training-stall runs. Measured on a 2-core machine with other jobs running (Dec 2026): "
        "`--size-gb 0.05 --reps 1` took 4.7 minutes; the default (1 GiB, 3 reps) takes well over 5 minutes. "
        "Ctrl-C or SIGTERM stops it and removes what it wrote."
    )


#: the signal that stopped the run, if one did
STOPPED_BY: list[int] = []


def _stop(signum: int, frame: Any) -> None:
    # SIGTERM / SIGHUP end the run like Ctrl-C does: through `finally`, which removes the files.
    # Raised inside a C callback (h5py's link iteration), the exit turns into another error;
    # STOPPED_BY lets main still end with 128 + signal.
    STOPPED_BY.append(signum)
    raise SystemExit(128 + signum)


def cleanup(work: Path) -> None:
    """Remove the run's directory, after any background save still writing into it."""
    try:
        from modelkeep.checkpoint.writer import wait_for_saves

        wait_for_saves(raise_errors=False)
    except Exception:  # noqa: BLE001 - removing the files matters more
        pass
    shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="float32 state size in GiB (default 1.0)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per figure; the median is kept")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (= checkpoints) per fit in the stall test")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    args = parser.parse_args(argv)

    print(duration_note(args), flush=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="modelkeep-bench-", dir=args.dir))
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        results = run(args, work)
    except BaseException:
        if STOPPED_BY:
            raise SystemExit(128 + STOPPED_BY[0]) from None
        raise
    finally:
        cleanup(work)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_report(results)
    print(f"\ntook {(time.perf_counter() - started) / 60:.1f} minutes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nfigures written to {args.json}")
    return results


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    model = build_model(args.size_gb)
    nbytes = state_bytes(model)
    print(f"model: {len(model.weights)} variables, {nbytes / GIB:.3f} GiB; writing under {work}", flush=True)
    results: dict[str, Any] = {
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
        "state_bytes": nbytes, "reps": args.reps, "cpus": os.cpu_count(),
        "versions": {"modelkeep": modelkeep.__version__, "keras": keras.__version__, "tensorflow": tf.__version__},
    }  # fmt: skip
    print("raw reference ...", flush=True)
    results["raw"] = raw_reference(model, work, args.reps)
    results["formats"] = {}
    for table in (modelkeep_contenders(model, work), keras_contenders(model, work)):
        for name, (save, load, path) in table.items():
            results["formats"][name] = run_contender(name, save, load, path, nbytes, args.reps)
    print("memory, GIL, training stall ...", flush=True)
    results["memory"] = memory_figures(model, work)
    results["gil"] = gil_share(model, work)
    sync_save = results["formats"][BACKUP]["save"]["seconds"]
    results["stall"] = stall_figures(model, work, sync_save, results["raw"]["copy"]["seconds"], args.epochs, args.reps)
    results["targets"] = targets(results)
    return results


if __name__ == "__main__":
    main()
