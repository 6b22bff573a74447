"""Run ``train_worker.py`` as a cluster of processes on loopback, kill one, time the rest.

``free_ports(n)`` picks ports the OS says are free; ``run(...)`` starts one process per
worker with its ``TF_CONFIG``, SIGKILLs the worker that prints ``KILLPOINT`` and measures
how long each survivor takes to exit; ``load(workdir, task)`` reads a worker's result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("train_worker.py")
TIMEOUT = 900


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    stderr: str = ""
    exited_at: float | None = None


@dataclass
class ClusterRun:
    workers: list[Worker]
    killed: int | None = None  # index of the worker killed
    killed_at: float | None = None
    point: str | None = None

    @property
    def returncodes(self) -> list[int]:
        return [w.proc.returncode for w in self.workers]

    def survivor_seconds(self) -> list[float]:
        """Seconds from the kill to each survivor's exit."""
        if self.killed_at is None:
            return []
        return [w.exited_at - self.killed_at for w in self.workers if w.index != self.killed and w.exited_at]


def _env(extra: dict | None, ports: list[int] | None, index: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0", **(extra or {})}
    if ports is not None:
        env["TF_CONFIG"] = tf_config(ports, index)
    return env


def run(strategy: str, data: str, workdir: Path, *, ports: list[int] | None = None,
        kill: tuple[int, str] | None = None, args: tuple[str, ...] = (), env: dict | None = None,
        freeze: bool = False) -> ClusterRun:
    """One run of the cluster (one process when ``ports`` is None); ``kill=(worker, point)``.

    ``freeze``: SIGSTOP the worker instead (a machine that stops answering but keeps its
    connections open), and SIGKILL it once every other worker has exited."""
    workdir.mkdir(parents=True, exist_ok=True)
    count = 1 if ports is None else len(ports)
    workers = []
    for index in range(count):
        cmd = [sys.executable, str(WORKER), strategy, data, str(workdir), *args]
        if kill is not None and kill[0] == index:
            cmd += ["--kill-at", kill[1]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(env, ports, index))
        workers.append(Worker(index, proc))
    result = ClusterRun(workers)
    lock = threading.Lock()

    def read(worker: Worker) -> None:
        for line in worker.proc.stdout:
            worker.lines.append(line.rstrip("\n"))
            if line.startswith("KILLPOINT"):
                with lock:
                    result.killed, result.point = worker.index, line.split()[1]
                    worker.proc.send_signal(signal.SIGSTOP if freeze else signal.SIGKILL)
                    result.killed_at = time.monotonic()
        worker.proc.wait()
        worker.exited_at = time.monotonic()

    def read_err(worker: Worker) -> None:
        worker.stderr = worker.proc.stderr.read()

    threads = [threading.Thread(target=f, args=(w,), daemon=True) for w in workers for f in (read, read_err)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        time.sleep(0.2)
        if freeze and result.killed is not None and all(
                w.exited_at for w in workers if w.index != result.killed):
            workers[result.killed].proc.send_signal(signal.SIGKILL)
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
            w.stderr += f"\n[harness] worker {w.index} killed after the {TIMEOUT} s timeout"
    return result


def failure(run_: ClusterRun) -> str:
    return "\n".join(f"--- worker {w.index} rc={w.proc.returncode}\n{w.stderr[-3000:]}" for w in run_.workers)


def load(workdir: Path, task: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(workdir / f"result-{task}.npz") as data:
        variables = {k: data[k] for k in data.files}
    return variables, json.loads((workdir / f"history-{task}.json").read_text())


def mismatches(a: tuple[dict, dict], b: tuple[dict, dict]) -> list[str]:
    """Variables (and 'history', 'steps') where two results differ; empty when bitwise equal."""
    (va, ha), (vb, hb) = a, b
    bad = [k for k in va if k not in vb or not np.array_equal(va[k], vb[k])]
    bad += [k for k in vb if k not in va]
    if ha["history"] != hb["history"] or ha["epoch"] != hb["epoch"]:
        bad.append("history")
    if ha["steps"] != hb["steps"]:
        bad.append("steps")
    return bad


def max_abs_diff(a: tuple[dict, dict], b: tuple[dict, dict]) -> float:
    va, vb = a[0], b[0]
    diffs = [float(np.max(np.abs(va[k].astype(np.float64) - vb[k].astype(np.float64))))
             for k in va if k in vb and va[k].shape == vb[k].shape and va[k].size
             and np.issubdtype(va[k].dtype, np.floating)]
    return max(diffs) if diffs else 0.0
