"""Kill harness for exact resume: run ``train_child.py``, SIGKILL it at chosen points, rerun.

``chain(scenario, workdir, points)`` runs the child once per kill point (each run resumes
from what the previous ones left in ``workdir``), then once to the end, and returns the
final variables and history; ``baseline(scenario, workdir)`` runs it uninterrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHILD = Path(__file__).with_name("train_child.py")
TIMEOUT = 600


@dataclass
class Run:
    returncode: int
    killed_at: str | None
    lines: list[str]
    stderr: str = ""


@dataclass
class Outcome:
    variables: dict[str, np.ndarray]
    history: dict
    steps: int
    runs: list[Run] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(1 for r in self.runs if r.killed_at)


def run_child(scenario: str, workdir: Path, *, kill_at: str | None = None, kill_after: float | None = None,
              extra: tuple[str, ...] = ()) -> Run:
    """One child run; killed with SIGKILL when it reports its kill point (or after ``kill_after`` s)."""
    cmd = [sys.executable, str(CHILD), scenario, str(workdir), *extra]
    if kill_at:
        cmd += ["--kill-at", kill_at]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed: list[str] = []
    timer = None
    if kill_after is not None:
        def _kill() -> None:
            if proc.poll() is None:
                killed.append(f"after {kill_after:.2f}s")
                proc.send_signal(signal.SIGKILL)
        timer = threading.Timer(kill_after, _kill)
        timer.start()
    lines = []
    err_chunks: list[str] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("KILLPOINT"):
            killed.append(line.split()[1])
            proc.send_signal(signal.SIGKILL)
            break
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait()
    if timer is not None:
        timer.cancel()
    reader.join(timeout=10)
    run = Run(proc.returncode, killed[0] if killed else None, lines, "".join(err_chunks))
    if run.killed_at is None and run.returncode != 0:
        raise RuntimeError(f"child {cmd} failed ({run.returncode}):\n{run.stderr[-4000:]}")
    return run


def load_result(workdir: Path) -> tuple[dict[str, np.ndarray], dict, int]:
    with np.load(workdir / "result.npz") as data:
        variables = {k: data[k] for k in data.files}
    doc = json.loads((workdir / "history.json").read_text())
    return variables, doc, int(doc["steps"])


def baseline(scenario: str, workdir: Path, extra: tuple[str, ...] = ()) -> Outcome:
    workdir.mkdir(parents=True, exist_ok=True)
    run = run_child(scenario, workdir, extra=extra)
    return Outcome(*load_result(workdir), runs=[run])


def chain(scenario: str, workdir: Path, points: list, extra: tuple[str, ...] = ()) -> Outcome:
    """Kill at each point in turn (a ``str`` point or a ``float`` delay in seconds), then finish."""
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for point in points:
        if isinstance(point, str):
            runs.append(run_child(scenario, workdir, kill_at=point, extra=extra))
        else:
            runs.append(run_child(scenario, workdir, kill_after=point, extra=extra))
    runs.append(run_child(scenario, workdir, extra=extra))
    return Outcome(*load_result(workdir), runs=runs)


def mismatches(a: Outcome, b: Outcome) -> list[str]:
    """Names of the variables (and 'history', 'steps') where two outcomes differ."""
    bad = [k for k in a.variables if k not in b.variables or not np.array_equal(a.variables[k], b.variables[k])]
    bad += [k for k in b.variables if k not in a.variables]
    if a.history["history"] != b.history["history"] or a.history["epoch"] != b.history["epoch"]:
        bad.append("history")
    if a.steps != b.steps:
        bad.append("steps")
    return bad


def max_abs_diff(a: Outcome, b: Outcome) -> float:
    diffs = [float(np.max(np.abs(a.variables[k].astype(np.float64) - b.variables[k].astype(np.float64))))
             for k in a.variables if k in b.variables and a.variables[k].shape == b.variables[k].shape
             and a.variables[k].size and np.issubdtype(a.variables[k].dtype, np.floating)
             and k.startswith("model/")]
    return max(diffs) if diffs else 0.0
