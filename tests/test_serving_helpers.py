"""Shared helpers of the serving tests: start ``modelkeep serve`` in a subprocess, talk to it.

(No tests here; the name keeps it among the serving test files.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODELKEEP = ROOT / ".venv" / "bin" / "modelkeep"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def command() -> list[str]:
    if MODELKEEP.exists():
        return [str(MODELKEEP)]
    return [sys.executable, "-m", "modelkeep.cli.main"]


class ChildServer:
    """A server command in a subprocess, its output in ``log_path``: wait until ready, stop with SIGTERM."""

    name = "server"

    def __init__(self, args: list[str], log_path: Path, url: str, grpc_target: str):
        self.args, self.log_path, self.url, self.grpc_target = args, log_path, url, grpc_target
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait(self, path: str = "/readyz", timeout: float = 90.0, headers: dict | None = None):
        """Until GET ``path`` answers 200; returns self."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class ServerProcess(ChildServer):
    """``modelkeep serve PATH ...`` on free loopback ports; stop() sends SIGTERM."""

    def __init__(self, path: Path, *args: str, log_dir: Path, grpc: bool = True):
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        command_line = [*command(), "serve", str(path), "--port", str(self.port), "--grpc-port", str(self.grpc_port), *args]
        super().__init__(command_line, log_dir / f"serve-{self.port}.log", f"http://{HOST}:{self.port}",
                         f"{HOST}:{self.grpc_port}")


def tutorial_rows(n: int, seed: int = 7):
    import numpy as np

    return np.random.default_rng(seed).random((n, 10), dtype=np.float32)
