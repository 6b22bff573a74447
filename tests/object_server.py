"""What the tests' object-storage servers share: start a binary on loopback, wait until it
answers, stop it, show the end of its log, make a bucket.

A subclass says how to run it (``command``), when it is ready (``ready``), its URL scheme and
its fsspec filesystem (``filesystem``). ``tests/s3_server.py`` (SeaweedFS) and
``tests/gcs_server.py`` (fake-gcs-server) are the two.

Example::

    class MyServer(ObjectServer):
        name, scheme = "my-server", "s3"
        def command(self): ...
        def ready(self): ...
        def filesystem(self): ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


class ObjectServer:
    """One server process in its own session, its output in ``root / log_name``."""

    name = "server"
    scheme = ""
    log_name = "server.log"
    poll_s = 0.25

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log = self.root / self.log_name

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def filesystem(self) -> Any:
        raise NotImplementedError

    def start(self, timeout: float = 60.0):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return self
            time.sleep(self.poll_s)
        self.stop(kill=True)
        raise RuntimeError(f"{self.name} did not answer on {self.endpoint} within {timeout} s:\n{self.tail()}")

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        """SIGTERM (``kill=True``: SIGKILL, a crash) to the whole process group, then wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def make_bucket(self, name: str) -> str:
        self.filesystem().mkdir(name)
        return f"{self.scheme}://{name}"
