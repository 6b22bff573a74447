"""``serve()``: REST (uvicorn) and gRPC (grpc.aio) on one event loop, plus the version poller.

One asyncio loop runs everything: uvicorn's HTTP server, the gRPC server, each version's
micro-batcher and the poller. Loading runs on a worker thread, so a reload never stalls
requests beyond the swap of one dict.

The stack is chosen for speed when its packages are installed (the ``serve`` extra):
uvloop for the loop and httptools for HTTP/1.1 parsing (an echo server on them answered
10,751 req/s against 2,230 on the default asyncio loop with the pure-Python h11 parser, wrk
at c=32 on the 2-core machine); without them it falls back to asyncio and h11. With
httptools, uvicorn runs modelkeep's protocol (``http_fast``): predict requests read whole
skip uvicorn's ASGI cycle (~38 us a request), every other request is uvicorn's own.

Example::

    serve(ServeConfig(path="runs/exp1", name="tutorial", port=8501, grpc_port=8500))
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.errors import ModelkeepError
from modelkeep.serving import batching
from modelkeep.serving.metrics import Metrics, TFServingMetrics
from modelkeep.serving.model_config import ModelEntry
from modelkeep.serving.versions import ModelSource
from modelkeep.serving.watcher import Policy, VersionManager

log = logging.getLogger("modelkeep.serve")

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024


@dataclass
class ServeConfig:
    """Every ``modelkeep serve`` option."""

    path: str | Path
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8501
    grpc_port: int | None = 8500  # None or 0: no gRPC server
    policy: str = "latest"
    max_batch_size: int = 64
    batch_timeout_ms: float = 0.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    api_key: str | None = None
    poll_seconds: float = 2.0
    allow_non_finite: bool = False
    allow_unsafe_ops: bool = False  # run SavedModel graphs holding file-system/network/Python ops
    models: list[ModelEntry] | None = None  # several models (a model config file); else path/name/policy
    monitoring_path: str | None = None  # TF Serving's Prometheus path (``--monitoring_config_file``)
    tensor_content: bool = False
    grpc_options: list[tuple[str, Any]] | None = None
    rest: bool = True  # False: gRPC only (TF Serving's --rest_api_port=0)
    model_config_file: str | None = None  # re-read every config_poll_seconds (TF Serving's poll wait; 0: never)
    config_poll_seconds: float = 0.0
    tf_serving_exact: bool = False  # modelkeep-model-server: a wrong method is 400, stored signatures' shapes unchecked


@dataclass
class ServeContext:
    """What the front ends share."""

    manager: VersionManager
    metrics: Metrics
    max_request_bytes: int
    api_key: str | None
    allow_non_finite: bool
    tfs_metrics: Any = None  # TF Serving's Prometheus metrics (``modelkeep-model-server``)
    tensor_content: bool = False  # gRPC outputs in tensor_content (TF Serving's enable_serialization_as_tensor_content)
    managers: dict[str, VersionManager] = field(default_factory=dict)  # by model name; ``manager`` is the first
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # model → version label → version
    entries: dict[str, ModelEntry] = field(default_factory=dict)  # what each manager was made from
    serve_config: Any = None
    pollers: dict[str, Any] = field(default_factory=dict)  # model → its poller task
    stop: Any = None  # asyncio.Event set at shut-down

    def __post_init__(self) -> None:
        if not self.managers:
            self.managers = {self.manager.name: self.manager}


def default_name(path: Path) -> str:
    """TF Serving's habit: the model is named after its directory (or file stem)."""
    stem = path.name
    for suffix in (".keras", ".h5", ".hdf5"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem or "model"


def read_api_key(path: str | Path) -> str:
    """The bearer token: the file's content, stripped; an empty file is an error."""
    token = Path(path).read_text().strip()
    if not token or any(c.isspace() for c in token):
        raise ModelkeepError(f"--api-key-file {path}: expected one token without spaces, found {'nothing' if not token else 'whitespace in it'}.")
    return token


def build_context(config: ServeConfig) -> ServeContext:
    metrics = Metrics()
    entries = config.models or [
        ModelEntry(config.name or default_name(Path(config.path)), config.path, config.policy)
    ]
    managers = {}
    for entry in entries:
        managers[entry.name] = VersionManager(
            entry.name,
            ModelSource.detect(entry.path),
            Policy.parse(entry.policy),
            metrics,
            max_batch_size=config.max_batch_size,
            batch_timeout_s=config.batch_timeout_ms / 1000.0,
            allow_unsafe_ops=config.allow_unsafe_ops,
        )
    first = next(iter(managers.values()))
    tfs = TFServingMetrics(config.monitoring_path, metrics) if config.monitoring_path else None
    return ServeContext(
        first, metrics, config.max_request_bytes, config.api_key, config.allow_non_finite, tfs,
        config.tensor_content, managers, {e.name: dict(e.labels or {}) for e in entries},
        {e.name: e for e in entries}, config,
    )


async def serve_async(config: ServeConfig, ctx: ServeContext | None = None) -> None:
    """Run until SIGINT/SIGTERM (uvicorn's handlers), then drain and stop everything."""
    import numpy as np
    import uvicorn

    from modelkeep.serving.rest import build_app

    np.seterr(over="ignore", invalid="ignore")  # request values that overflow float32 are refused, not warned about
    ctx = ctx or build_context(config)
    stop = asyncio.Event()
    _STOPPING.clear()
    batching.STOPPING.clear()
    http_socket = _listen(config.host, config.port, "--port") if config.rest else None
    try:
        grpc_server = await _start_grpc(config, ctx) if config.grpc_port else None
    except BaseException:
        if http_socket is not None:
            http_socket.close()
        raise
    loop = asyncio.get_running_loop()
    ctx.stop, ctx.serve_config = stop, ctx.serve_config or config
    ctx.pollers = {name: loop.create_task(m.run(config.poll_seconds, stop)) for name, m in ctx.managers.items()}
    watcher = None
    if config.model_config_file and config.config_poll_seconds > 0:
        from modelkeep.serving.model_config import watch_config

        watcher = loop.create_task(watch_config(ctx, config.model_config_file, config.config_poll_seconds))
    if http_socket is not None:
        uv_config = uvicorn.Config(
            build_app(ctx),
            host=config.host,
            port=config.port,
            loop="none",
            http=http_protocol(),
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            backlog=2048,
            proxy_headers=False,  # nothing reads the client's address; its middleware cost ~2 us a request
        )
        server: Any = uvicorn.Server(uv_config)
    else:
        server = _GrpcOnly()
    _RUNNING[:] = [server]
    if _STOPPING:  # a signal came while starting
        server.should_exit = True
    for manager in ctx.managers.values():
        log.warning(
            "serve: model '%s' from %s (%s)%s%s", manager.name, manager.source.path, manager.source.kind,
            f" on http://{config.host}:{config.port}" if http_socket is not None else "",
            f" and grpc {config.host}:{config.grpc_port}" if grpc_server else "",
        )
    try:
        await server.serve(sockets=[http_socket])
    finally:
        stop.set()
        if watcher is not None:
            await watcher
        for poller in list(ctx.pollers.values()):
            try:
                await poller
            except asyncio.CancelledError:
                pass
        if grpc_server is not None:
            await grpc_server.stop(grace=2.0)
        batching.STOPPING.append(True)  # the process ends: no full collection per closed version
        for manager in ctx.managers.values():
            await manager.close()


class _GrpcOnly:
    """No REST port (TF Serving's ``--rest_api_port=0``): wait for the signal that stops the server."""

    should_exit = False

    async def serve(self, sockets: list) -> None:
        while not self.should_exit:
            await asyncio.sleep(0.1)


async def _start_grpc(config: ServeConfig, ctx: ServeContext) -> object:
    """The gRPC server with both TF Serving services, listening; a clear error if it cannot."""
    import grpc

    from modelkeep.serving.grpc_service import add_services

    options = {"grpc.max_receive_message_length": config.max_request_bytes, "grpc.so_reuseport": 0}
    options.update(dict(config.grpc_options or []))  # --grpc_channel_arguments override (gRPC keeps a key's first value)
    server = grpc.aio.server(options=list(options.items()))
    add_services(server, ctx)
    try:
        bound = server.add_insecure_port(f"{_grpc_host(config.host)}:{config.grpc_port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ModelkeepError(
            f"serve: cannot listen for gRPC on {config.host}:{config.grpc_port} (in use, or not an address "
            "of this machine). Choose another --grpc-port, or --grpc-port 0 for no gRPC."
        )
    await server.start()
    return server


def _listen(host: str, port: int, option: str) -> socket.socket:
    """Bind the HTTP socket before anything slow, so a taken port fails at once and clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it a response's second write waits for a delayed ACK (~40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ModelkeepError(
            f"serve: cannot listen on {host}:{port}: {exc.strerror}. Is another server running there? "
            f"Choose another {option}."
        ) from None
    sock.set_inheritable(True)
    return sock


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


#: the uvicorn release series ``http_fast`` was tested against (pyproject pins the serve extra to it)
FAST_PATH_UVICORN = "0.54."


def http_protocol() -> Any:
    """uvicorn's HTTP protocol: httptools (C, llhttp) with modelkeep's predict fast path
    (``http_fast``) when installed, else ``"h11"``."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    import uvicorn

    if not uvicorn.__version__.startswith(FAST_PATH_UVICORN):
        return "httptools"  # http_fast leans on uvicorn's internals: only the release it was tested on
    try:
        from modelkeep.serving.http_fast import FastHttpToolsProtocol
    except ImportError:  # a uvicorn whose httptools module is laid out otherwise: uvicorn's own protocol
        return "httptools"
    return FastHttpToolsProtocol


def run_loop(main: Any) -> None:
    """Run coroutine ``main`` on uvloop's event loop when installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def serve(config: ServeConfig) -> None:
    """Blocking entry point used by ``modelkeep serve``; returns after SIGINT/SIGTERM.

    uvicorn re-raises the signal it caught once it has shut down; the handlers set here
    receive it, so the process drains, stops and exits 0 instead of dying on the signal.
    """
    import signal

    previous = {sig: signal.signal(sig, _note_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_loop(serve_async(config))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_RUNNING: list = []
_STOPPING: list = []


def _note_signal(signum: int, frame: object) -> None:
    """Outside uvicorn's own handlers (start-up, shut-down): ask the server to stop."""
    _STOPPING.append(signum)
    for server in _RUNNING:
        server.should_exit = True
