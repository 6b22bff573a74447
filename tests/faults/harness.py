"""Fault-injection harness: SIGKILL a checkpointing training process at random instants.

For each kill, a child (``train_child.py``) trains a ~20M-parameter model, saving every
``save_freq`` batches into one directory (the same directory across kills, so each new
child also starts on the leftovers of the one before). The parent waits until the child
reported at least one finished save, sleeps a random time, SIGKILLs it, then checks:

* ``lost``: no checkpoint that verifies (modelkeep) / loads (Keras) is at least as new
  as the last save the child reported as finished;
* ``corrupt_loaded``: the checkpoint a user would load (the newest that verifies; for
  Keras the file at the name) fails to load, or loads with weights that were never the
  model's weights at the step it claims (fingerprints printed by the child);
* ``partial``: committed names that fail verification (a truncated or torn file).

Reusable: ``run_harness(Scenario(...), workdir, kills=5)``; extra callback keywords
(``async_save=True``) go in ``Scenario.callback_kwargs``.

Run the default set: ``python tests/faults/harness.py --kills 50``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHILD = HERE / "train_child.py"
sys.path.insert(0, str(HERE))


@dataclass
class Scenario:
    """One configuration to kill: implementation, path, and callback arguments."""

    name: str
    impl: str = "mk"  # "mk" or "keras"
    filepath: str = "ckpt.keras"
    weights_only: bool = False
    save_freq: int = 2
    params: float = 20.0
    callback_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class HarnessResult:
    scenario: str
    kills: int = 0
    lost: int = 0
    corrupt_loaded: int = 0
    partial: int = 0
    incomplete: int = 0
    mid_save: int = 0  # kills that landed while a save was being written
    saves_seen: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.scenario:<34} kills={self.kills:<3} lost={self.lost:<3} corrupt_loaded={self.corrupt_loaded:<3} "
            f"partial={self.partial:<3} incomplete={self.incomplete:<3} mid_save={self.mid_save:<3} "
            f"saves={self.saves_seen:<4} "
            f"({self.seconds:.0f} s)"
        )


# scenarios of the default run: fixed names (overwritten each save) and rotating names
OURS = [
    Scenario("mk .keras (fixed name)", filepath="ckpt.keras"),
    Scenario("mk .weights.h5 (fixed name)", filepath="ckpt.weights.h5", weights_only=True),
    Scenario(
        "mk TF prefix {epoch}-{batch}, keep 2",
        filepath="ckpt-{epoch}-{batch}",
        weights_only=True,
        callback_kwargs={"max_to_keep": 2},
    ),
    Scenario("mk .h5 whole model (fixed name)", filepath="model.h5"),
    Scenario("mk .safetensors {batch}, keep 2", "mk", "w-{epoch}-{batch}.safetensors", True, 2, 20.0, {"max_to_keep": 2}),
    Scenario("mk SavedModel dir (fixed name)", filepath="saved_model", params=8.0),
    # ModelCheckpoint writes in the background by default (async_save=True, every format but
    # .keras/.weights.h5/SavedModel, which Keras writes from the live model); one sync run too
    Scenario("mk .h5 weights {batch}, sync", "mk", "w-{epoch}-{batch}.h5", True, 2, 20.0,
             {"max_to_keep": 2, "async_save": False}),  # fmt: skip
]
KERAS = [
    Scenario("keras .keras (fixed name)", impl="keras", filepath="ckpt.keras"),
    Scenario("keras .weights.h5 (fixed name)", impl="keras", filepath="ckpt.weights.h5", weights_only=True),
]


class _Child:
    """A running child and the lines it printed."""

    def __init__(self, scenario: Scenario, directory: Path, seed: int) -> None:
        cmd = [
            sys.executable, str(CHILD), "--dir", str(directory), "--impl", scenario.impl,
            "--filepath", scenario.filepath, "--save-freq", str(scenario.save_freq),
            "--params", str(scenario.params), "--callback-kwargs", json.dumps(scenario.callback_kwargs),
            "--seed", str(seed),
        ]  # fmt: skip
        if scenario.weights_only:
            cmd.append("--weights-only")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def saves(self) -> list[int]:
        return [int(line.split()[1]) for line in list(self.lines) if line.startswith("saved ")]

    def saving_when_killed(self) -> bool:
        """True when the last save the child started had not returned."""
        events = [line.split()[0] for line in list(self.lines) if line.startswith(("saving ", "saved "))]
        return bool(events) and events[-1] == "saving"

    def fingerprints(self) -> dict[int, int]:
        out = {}
        for line in list(self.lines):
            if line.startswith("fp "):
                _, step, value = line.split()
                out[int(step)] = int(value)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=5)


def _wait_first_save(child: _Child, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.saves():
            return True
        if child.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _load_and_fingerprint(scenario: Scenario, path: Path) -> int:
    from train_child import build_model, fingerprint

    import modelkeep as mk

    if scenario.impl == "keras":
        import keras

        if scenario.weights_only:
            model = build_model(scenario.params)
            model.load_weights(path)
        else:
            model = keras.saving.load_model(path)
    elif scenario.weights_only:
        model = build_model(scenario.params)
        mk.load_weights(model, path)
    else:
        model = mk.load_model(path)
    return fingerprint(model)


def check_directory(scenario: Scenario, directory: Path, saves: list[int], fps: dict[int, int], result: HarnessResult) -> None:
    """After a kill: count lost, corrupt_loaded and partial for this kill."""
    if scenario.impl == "keras":
        _check_keras(scenario, directory, saves, fps, result)
        return
    from modelkeep.checkpoint import store

    infos = store.list_checkpoints(directory)
    bad = [i for i in infos if i.status == store.CORRUPT]
    result.partial += bool(bad)
    result.incomplete += any(i.status == store.INCOMPLETE for i in infos)
    for info in bad:
        result.notes.append(f"partial: {info.path.name}: {info.problem}")
    good = next((i for i in infos if i.status == store.OK), None)
    if good is None or good.step is None or good.step < max(saves):
        result.lost += 1
        result.notes.append(f"lost: newest good {good and good.step} < last finished save {max(saves)}")
        return
    try:
        value = _load_and_fingerprint(scenario, good.path)
    except Exception as exc:  # noqa: BLE001 - any failure to load a verified checkpoint counts
        result.corrupt_loaded += 1
        result.notes.append(f"corrupt_loaded: {good.path.name} verified but failed to load: {exc}")
        return
    if fps.get(good.step) != value:
        result.corrupt_loaded += 1
        result.notes.append(f"corrupt_loaded: {good.path.name} step {good.step} holds other weights")


def _check_keras(scenario: Scenario, directory: Path, saves: list[int], fps: dict[int, int], result: HarnessResult) -> None:
    path = directory / scenario.filepath
    try:
        value = _load_and_fingerprint(scenario, path)
    except Exception as exc:  # noqa: BLE001 - Keras's errors vary with the damage
        result.lost += 1
        result.notes.append(f"lost: {path.name} does not load: {type(exc).__name__}: {str(exc)[:120]}")
        return
    steps = [step for step, fp in fps.items() if fp == value]
    if not steps:
        result.corrupt_loaded += 1
        result.notes.append(f"corrupt_loaded: {path.name} holds weights the model never had")
    elif max(steps) < max(saves):
        result.lost += 1
        result.notes.append(f"lost: {path.name} holds step {max(steps)} < last finished save {max(saves)}")


def run_harness(
    scenario: Scenario,
    workdir: Path,
    *,
    kills: int = 5,
    seed: int = 0,
    max_delay: float = 6.0,
    start_timeout: float = 180.0,
    log: Any = None,
) -> HarnessResult:
    """Kill ``kills`` children of ``scenario`` at random instants; return the counts."""
    rng = random.Random(seed)
    directory = Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    result = HarnessResult(scenario.name)
    started = time.monotonic()
    for attempt in range(kills):
        child = _Child(scenario, directory, seed=seed + attempt)
        if not _wait_first_save(child, start_timeout):
            child.kill()
            raise RuntimeError(
                f"{scenario.name}: the child made no save (exit {child.proc.returncode}):\n"
                + "\n".join(child.stderr[-20:])
            )
        time.sleep(rng.uniform(0.0, max_delay))
        child.kill()
        result.kills += 1
        saves = child.saves()
        result.saves_seen += len(saves)
        result.mid_save += child.saving_when_killed()
        check_directory(scenario, directory, saves, child.fingerprints(), result)
        if log:
            log(f"  kill {attempt + 1}/{kills}: {result.line()}")
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="kills per modelkeep run (spread over scenarios)")
    parser.add_argument("--keras-kills", type=int, default=12, help="kills per Keras scenario")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    import tempfile

    root = Path(args.workdir or tempfile.mkdtemp(prefix="mk-faults-"))
    results = []
    per = max(1, -(-args.kills // len(OURS)))
    for index, scenario in enumerate(OURS + KERAS):
        count = per if scenario.impl == "mk" else args.keras_kills
        if count <= 0:
            continue
        results.append(run_harness(scenario, root / f"s{index}", kills=count, seed=args.seed + 1000 * index, log=print))
        print(results[-1].line(), flush=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    ours = [r for r in results if r.scenario.startswith("mk")]
    return 0 if all(r.lost == 0 and r.corrupt_loaded == 0 and r.partial == 0 for r in ours) else 1


def print_table(results: list[HarnessResult]) -> None:
    print("\nfault injection: SIGKILL at random instants during training with checkpoints")
    for r in results:
        print("  " + r.line())
    ours = [r for r in results if r.scenario.startswith("mk")]
    theirs = [r for r in results if not r.scenario.startswith("mk")]
    for label, group in (("modelkeep", ours), ("keras", theirs)):
        if group:
            print(
                f"  {label:<10} kills={sum(r.kills for r in group)} lost={sum(r.lost for r in group)} "
                f"corrupt_loaded={sum(r.corrupt_loaded for r in group)} partial={sum(r.partial for r in group)} "
                f"mid_save={sum(r.mid_save for r in group)}"
            )


if __name__ == "__main__":
    sys.exit(main())
