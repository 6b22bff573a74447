"""Training stall of async checkpoints: modelkeep against Orbax, Keras, TensorFlow and the floors.

One command, every ratio from the same run (ratios only mean something within one run):

    python benchmarks/ckpt_bench.py [--size-mb 270,1024] [--epochs 2] [--dir DIR] [--json out.json]

For each state size, a Dense stack with that many bytes of float32 weights (SGD, so the
state is the weights) is trained with one checkpoint an epoch, by each contender in turn:

* modelkeep: weights-only ``ModelCheckpoint`` (a TF checkpoint, the tutorial's, and
  ``.safetensors``), ``BackupAndRestore`` (modelkeep's ``ckpt-<step>/`` directories), whole
  model ``ModelCheckpoint`` as a SavedModel (the tutorial's ``c-{epoch}``) and as ``.keras``;
* Keras's own ``ModelCheckpoint`` writing ``.weights.h5`` (synchronous) and Keras's own
  ``OrbaxCheckpoint`` (async), ``tf.train.CheckpointManager`` in a callback (synchronous);

and **stall per checkpoint** = (fit with the contender - the mean of the fits without just before
and just after it) / checkpoints (their disagreement is printed as the noise of that figure), over
**one in-memory copy** of the state (``np.copyto`` into memory already mapped: the floor of
any design that keeps training going while it writes). Beside it, the breakdown: how long the
training thread was blocked in the callback, the extra CPU the process spent per checkpoint
(``getrusage``, less sensitive to other jobs on the machine than wall time), and for
modelkeep the CPU time of its writer thread per save, and where each of its saves went: on the
training thread the wait for the save before and the snapshot, on the writer thread the wall
and CPU time of each step (``storage.phases``: CPU there is GIL time when the step runs in
Python or h5py, not when it runs in C with the GIL released). Then, on the same NumPy state without a
fit: Orbax's ``StandardCheckpointer`` (async save: time until it returns, and until it is
written), ``tf.train.CheckpointManager``, Keras ``save_weights`` and the raw disk (one
write + fsync).

Orbax comes from the benchmark's own venv (``benchmarks/peers_env.py``, ``make bench-peers``);
run under a python without ``orbax-checkpoint`` and with that venv made, the script runs itself
again there; without it the Orbax rows say "not installed". SIGTERM, SIGHUP and Ctrl-C stop
it and remove everything it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import modelkeep  # noqa: E402,F401  - before TensorFlow: keeps its start-up lines off stderr

MIB = 1 << 20


def _has_orbax() -> bool:
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------ floors
def copy_floor(nbytes: int, reps: int = 5) -> float:
    """One in-memory copy of ``nbytes`` into memory already mapped (median)."""
    src = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_write(nbytes: int, work: Path) -> float:
    """One buffered write + fsync of ``nbytes``: the disk floor of a synchronous save."""
    data = np.random.default_rng(1).standard_normal(nbytes // 4, dtype=np.float32)
    path = work / "raw.bin"
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.write(fd, view[done:])
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


# ------------------------------------------------------------------------ contenders
class Probe:
    """Wraps a checkpoint callback: times its hooks on the training thread, keeps modelkeep's
    writer history (CPU time per save) before the callback drops its writer."""

    def __init__(self, inner: Any) -> None:
        import keras

        class Wrapper(keras.callbacks.Callback):
            def __init__(w) -> None:
                super().__init__()
                w.blocked: list[float] = []
                w.history: list[Any] = []

            def set_model(w, model: Any) -> None:
                super().set_model(model)
                inner.set_model(model)

            def on_train_begin(w, logs: Any = None) -> None:
                inner.on_train_begin(logs)

            def on_train_batch_end(w, batch: int, logs: Any = None) -> None:
                inner.on_train_batch_end(batch, logs)

            def on_epoch_end(w, epoch: int, logs: Any = None) -> None:
                start = time.perf_counter()
                inner.on_epoch_end(epoch, logs)
                w.blocked.append(time.perf_counter() - start)

            def on_train_end(w, logs: Any = None) -> None:
                writer = getattr(inner, "_writer", None)
                start = time.perf_counter()
                inner.on_train_end(logs)
                w.drain = time.perf_counter() - start
                if writer is not None:
                    w.history = [r for r in writer.history if r.label != "snapshot buffer"]

        self.callback = Wrapper()


def contenders(work: Path, orbax: bool) -> dict[str, Callable[[], Any]]:
    import keras
    import tensorflow as tf

    import modelkeep as mk

    class TFManager(keras.callbacks.Callback):
        """tf.train.CheckpointManager.save() every epoch (synchronous, TF's own)."""

        def on_train_begin(self, logs: Any = None) -> None:
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
            self.manager = tf.train.CheckpointManager(checkpoint, str(work / "tfm"), max_to_keep=2)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.manager.save()

    table: dict[str, Callable[[], Any]] = {
        "modelkeep weights, TF checkpoint (async)": lambda: mk.ModelCheckpoint(str(work / "w-{epoch}"), save_weights_only=True),
        "modelkeep weights, .safetensors (async)": lambda: mk.ModelCheckpoint(str(work / "w-{epoch}.safetensors"), save_weights_only=True),
        "modelkeep BackupAndRestore ckpt-dir (async)": lambda: mk.BackupAndRestore(str(work / "backup")),
        "modelkeep whole model, SavedModel (async)": lambda: mk.ModelCheckpoint(str(work / "c-{epoch}")),
        "modelkeep whole model, .keras (async)": lambda: mk.ModelCheckpoint(str(work / "c-{epoch}.keras")),
        "Keras ModelCheckpoint .weights.h5 (sync)": lambda: keras.callbacks.ModelCheckpoint(
            str(work / "k-{epoch}.weights.h5"), save_weights_only=True),
        "tf.train.CheckpointManager (sync)": TFManager,
    }  # fmt: skip
    if orbax:
        table["Keras OrbaxCheckpoint (async)"] = lambda: keras.callbacks.OrbaxCheckpoint(str(work / "orbax"), save_freq="epoch")
    return table


def fit_runs(model: Any, work: Path, epochs: int, steps: int, orbax: bool, only: list[str] = (),
             rounds: int = 1) -> dict[str, Any]:  # fmt: skip
    """Each contender's fit between two fits without a checkpoint (other jobs on the machine come
    and go: each stall is taken against its own two neighbours, and their disagreement is the
    noise of that figure); ``rounds`` > 1 repeats the whole sequence, every other round in
    reverse order, and keeps the medians."""
    width = model.inputs[0].shape[-1]
    data = np.resize(np.random.default_rng(2).standard_normal((64, width), dtype=np.float32), (steps * 8, width))

    def fit(callbacks: list[Any]) -> tuple[float, float]:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        model.fit(data, data, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        return wall, (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)

    def one(name: str, make: Callable[[], Any]) -> dict[str, Any]:
        probe = Probe(make())
        print(f"    {name} ...", end="", flush=True)
        wall, cpu = fit([probe.callback])
        for entry in work.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        history, blocked = probe.callback.history, probe.callback.blocked
        later = statistics.median(blocked[1:]) if len(blocked) > 1 else blocked[0]
        print(f" fit {wall:.2f} s", flush=True)
        return {
            "fit_s": wall, "cpu_s": cpu, "blocked_s": later, "first_blocked_s": blocked[0],
            "once_s": max(0.0, blocked[0] - later),  # what only the first save costs (a SavedModel's trace)
            "drain_s": getattr(probe.callback, "drain", 0.0),
            "writer_cpu_s": statistics.median(r.cpu_seconds for r in history) if history else None,
            "writer_wall_s": statistics.median(r.seconds for r in history) if history else None,
            "breakdown": breakdown(history),
        }  # fmt: skip

    fit([])  # warm up
    base = [fit([])]
    table = {k: v for k, v in contenders(work, orbax).items() if not only or any(o.lower() in k.lower() for o in only)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in table}
    for number in range(rounds):
        for name in list(table) if number % 2 == 0 else list(reversed(table)):
            row = one(name, table[name])
            base.append(fit([]))
            (before_wall, before_cpu), (after_wall, after_cpu) = base[-2], base[-1]
            base_wall, base_cpu = (before_wall + after_wall) / 2, (before_cpu + after_cpu) / 2
            # fit_s already holds the final drain (Keras calls on_train_end inside fit): counted once
            row["stall_s"] = max(0.0, row["fit_s"] - base_wall) / epochs
            # what each save costs in a long run: the first save's one-time cost and the drain at
            # the end of the fit (paid once a run, not once a checkpoint) taken out
            row["steady_stall_s"] = max(0.0, row["fit_s"] - base_wall - row["once_s"] - row["drain_s"]) / epochs
            row["extra_cpu_s"] = max(0.0, row["cpu_s"] - base_cpu) / epochs
            row["noise_s"] = abs(before_wall - after_wall) / epochs  # how far the two fits without disagree
            runs[name].append(row)
    rows = {name: _median_row(found) for name, found in runs.items()}
    return {"baseline_fit_s": [b[0] for b in base], "baseline_cpu_s": [b[1] for b in base], "rounds": rounds, "rows": rows}


def _median_row(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of every figure (the last round's breakdown), each round's stall kept."""
    row: dict[str, Any] = {}
    for key, value in found[-1].items():
        numbers = [r[key] for r in found if isinstance(r[key], (int, float))]
        row[key] = statistics.median(numbers) if isinstance(value, (int, float)) and numbers else value
    row["stall_by_round_s"] = [r["stall_s"] for r in found]
    return row


def breakdown(history: list[Any]) -> dict[str, Any] | None:
    """Where a modelkeep save's time went (medians over the saves after the first, which also
    traces or makes the run's layout): on the training thread, the wait for the save before
    and the snapshot; on the writer thread, each phase's wall and CPU seconds."""
    if not history:
        return None
    later = history[1:] or history
    names = list(dict.fromkeys(name for r in history for name in r.phases))
    return {
        "waited_s": statistics.median(r.waited_seconds for r in later),
        "snapshot_s": statistics.median(r.snapshot_seconds for r in later),
        "first_snapshot_s": history[0].snapshot_seconds,
        "phases": {name: [statistics.median(r.phases.get(name, [0.0, 0.0])[i] for r in later) for i in (0, 1)]
                   for name in names},
        "first_phases": {name: list(v) for name, v in history[0].phases.items()},
    }  # fmt: skip


# ------------------------------------------------------------------------ NumPy state
def numpy_state_saves(model: Any, work: Path, orbax: bool) -> dict[str, Any]:
    """Save the same state without a fit: Orbax directly, TF, Keras, modelkeep."""
    import tensorflow as tf

    import modelkeep as mk

    arrays = {f"v{i}": v.numpy() for i, v in enumerate(model.weights)}
    out: dict[str, Any] = {}

    def timed(fn: Callable[[int], Any]) -> float:
        """Median of three saves (the first of each also pays one-time set-up: imports, allocations)."""
        times = []
        for i in range(3):
            start = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    if orbax:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()  # async: save() returns once the copy is taken
        returned, written = [], []
        for i in range(3):
            started = time.perf_counter()
            checkpointer.save((work / f"orbax-np-{i}").absolute(), arrays)
            returned.append(time.perf_counter() - started)
            checkpointer.wait_until_finished()
            written.append(time.perf_counter() - started)
        out["orbax StandardCheckpointer (async), returns"] = statistics.median(returned)
        out["orbax StandardCheckpointer (async), written"] = statistics.median(written)
        checkpointer.close()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(work / "tfm-np"), max_to_keep=1)
    out["tf.train.CheckpointManager.save"] = timed(lambda i: manager.save())
    out["Keras save_weights (.weights.h5)"] = timed(lambda i: model.save_weights(work / "k.weights.h5"))
    out["modelkeep save_weights (.safetensors)"] = timed(lambda i: mk.save_weights(model, work / "m.safetensors"))
    return out


# ------------------------------------------------------------------------ report
def run_size(size_mb: float, work: Path, epochs: int, orbax: bool, only: list[str] = (), rounds: int = 1,
             optimizer: str = "sgd") -> dict[str, Any]:  # fmt: skip
    from run import build_model

    model = build_model(size_mb / 1024, optimizer=optimizer)
    variables = list(model.weights) + list(model.optimizer.variables)
    nbytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)  # what a whole-model save holds
    print(f"\n{nbytes / MIB:.0f} MiB of state ({optimizer}: weights and optimizer variables), {len(variables)} variables",
          flush=True)  # fmt: skip
    copy_s, raw_s = copy_floor(nbytes), raw_write(nbytes, work)
    # an epoch should outlast a background write (about one raw write), or saves queue up
    width = model.inputs[0].shape[-1]
    x = np.zeros((16, width), np.float32)
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    step_s = (time.perf_counter() - start) / 2
    steps = max(3, min(200, int(1.2 * raw_s / step_s) + 1))
    print(f"  one copy {copy_s:.3f} s, raw write+fsync {raw_s:.3f} s, step {step_s:.3f} s -> {steps} steps an epoch", flush=True)
    fits = fit_runs(model, work, epochs, steps, orbax, only, rounds)
    saves = numpy_state_saves(model, work, orbax)
    for entry in work.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return {"state_bytes": nbytes, "copy_s": copy_s, "raw_write_fsync_s": raw_s, "steps_per_epoch": steps,
            "step_s": step_s, "epochs": epochs, "fits": fits, "numpy_state_saves": saves}  # fmt: skip


def print_report(results: dict[str, Any]) -> None:
    for size in results["sizes"]:
        copy_s = size["copy_s"]
        print(f"\n=== {size['state_bytes'] / MIB:.0f} MiB state: one in-memory copy {copy_s:.3f} s, raw write+fsync "
              f"{size['raw_write_fsync_s']:.3f} s; {size['epochs']} checkpoints x {size['steps_per_epoch']} steps; fit "
              f"without checkpoints {', '.join(f'{b:.2f}' for b in size['fits']['baseline_fit_s'])} s")  # fmt: skip
        head = (f"{'contender':44s} {'stall/ckpt':>10s} {'/copy':>6s} {'noise':>6s} {'drain':>6s} {'steady':>7s} {'/copy':>6s} "
                f"{'once':>6s} {'blocked':>7s} {'/copy':>6s} {'xcpu':>6s} {'/copy':>6s} {'writer':>6s}")  # fmt: skip
        print(head)
        for name, row in size["fits"]["rows"].items():
            writer = "" if row["writer_cpu_s"] is None else f"{row['writer_cpu_s']:6.3f}"
            print(f"{name[:44]:44s} {row['stall_s']:10.3f} {row['stall_s'] / copy_s:6.1f} {row['noise_s'] / copy_s:6.1f} "
                  f"{row['drain_s']:6.3f} {row['steady_stall_s']:7.3f} {row['steady_stall_s'] / copy_s:6.1f} {row['once_s']:6.2f} {row['blocked_s']:7.3f} "
                  f"{row['blocked_s'] / copy_s:6.1f} {row['extra_cpu_s']:6.3f} {row['extra_cpu_s'] / copy_s:6.1f} {writer}")  # fmt: skip
        print("where modelkeep's saves went (after the first save; training thread: waited for the save before + "
              "snapshot; writer thread: phase wall/CPU s):")  # fmt: skip
        for name, row in size["fits"]["rows"].items():
            parts = row.get("breakdown")
            if not parts:
                continue
            print(f"  {name}: waited {parts['waited_s']:.3f} + snapshot {parts['snapshot_s']:.3f} s "
                  f"(/copy {parts['snapshot_s'] / copy_s:.1f}; first save's snapshot {parts['first_snapshot_s']:.3f} s)")  # fmt: skip
            for phase_name, (wall, cpu) in parts["phases"].items():
                print(f"      {phase_name:60s} {wall:6.3f} {cpu:6.3f}")
        print("same state, no fit (median of 3 saves, seconds; / raw write+fsync):")
        for name, seconds in size["numpy_state_saves"].items():
            print(f"  {name:52s} {seconds:7.3f}  {seconds / size['raw_write_fsync_s']:5.2f}x")
    print("\nstall/ckpt: (fit with - the mean of the fits without just before and just after it) / checkpoints, the "
          "last save's drain included once (median over --rounds); noise: how far those two fits without disagree, per "
          "checkpoint, over one copy (a stall below it is not measurable on this run); drain: seconds the fit's end "
          "waited for the last save (on_train_end); steady: what each checkpoint costs in a long run, the stall "
          "without the first save's one-time extra (once: a SavedModel's trace, once a run) and without the final "
          "drain (once a fit); blocked: time in the "
          "callback's on_epoch_end, saves after the first; xcpu: process CPU per checkpoint above the fit without "
          "(less sensitive to other jobs than wall time); writer: CPU of modelkeep's writer thread per save (its CRC "
          "thread not counted). /copy: over one in-memory copy of the state.")
    print(f"machine: {results['cpus']} CPUs, load average at start {results['load_start']}, at end {results['load_end']}")


#: the signal that stopped the run, if one did
STOPPED_BY: list[int] = []


def _stop(signum: int, frame: Any) -> None:
    # SIGTERM / SIGHUP end the run like Ctrl-C does: through `finally`, which removes the files.
    # Raised inside a C callback (h5py's link iteration), the exit turns into another error;
    # STOPPED_BY lets main still end with 128 + signal.
    STOPPED_BY.append(signum)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", default="270,1024", help="float32 weights in MiB, comma-separated (default 270,1024; with --optimizer adam the state is 3x)")
    parser.add_argument("--epochs", type=int, default=2, help="checkpoints per fit (default 2)")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every fit this many times, keep medians (default 1)")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="sgd (default: the state is the weights) or adam (weights and two slots each)")
    parser.add_argument("--only", default="", help="contenders whose name holds one of these words, comma-separated")
    parser.add_argument("--no-peers-venv", action="store_true", help="do not re-run in the peers' venv")
    args = parser.parse_args(argv)
    if not _has_orbax() and not args.no_peers_venv:
        import peers_env

        if peers_env.ready():
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
            sys.stdout.flush()
            os.execve(str(peers_env.peers_python()), [str(peers_env.peers_python()), __file__, *sys.argv[1:], "--no-peers-venv"], env)
        print("orbax-checkpoint is not installed here; `make bench-peers` (benchmarks/peers_env.py) makes its venv.")
    orbax = _has_orbax()
    sizes = [float(s) for s in args.size_mb.split(",") if s]
    only = [o for o in args.only.split(",") if o]
    print(f"checkpoint benchmark: sizes {args.size_mb} MiB, {args.epochs} checkpoints a fit, 8 contenders; on a shared "
          "2-core machine (Dec 2 2026, load average 3.4-3.7 from other jobs) the default took 5.5 minutes; `--size-mb 270` "
          "about 1.5. Ctrl-C or SIGTERM stops it and removes its files.",
          flush=True)  # fmt: skip
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="modelkeep-ckpt-bench-", dir=args.dir))
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    results: dict[str, Any] = {"command": "python benchmarks/ckpt_bench.py " + " ".join(a for a in sys.argv[1:] if a != "--no-peers-venv"),
                               "cpus": os.cpu_count(), "load_start": os.getloadavg(), "orbax": orbax, "sizes": []}  # fmt: skip
    try:
        for size in sizes:
            results["sizes"].append(run_size(size, work, args.epochs, orbax, only, args.rounds, args.optimizer))
    except BaseException:
        if STOPPED_BY:
            raise SystemExit(128 + STOPPED_BY[0]) from None
        raise
    finally:
        try:
            from modelkeep.checkpoint.writer import wait_for_saves

            wait_for_saves(raise_errors=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    results["load_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    print_report(results)
    print(f"took {results['seconds'] / 60:.1f} minutes")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)

