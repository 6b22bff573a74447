"""The REST front end: TensorFlow Serving's API on Starlette, plus health, metrics, OpenAPI.

Routes::

    POST /v1/models/{name}[/versions/{v}]:predict    instances / inputs → predictions / outputs
    GET  /v1/models/{name}[/versions/{v}]            version status (GetModelStatusResponse JSON)
    GET  /v1/models/{name}[/versions/{v}]/metadata   signature def (GetModelMetadataResponse JSON)
    GET  /healthz   /readyz   /metrics   /openapi.json

Every answer to a predict carries ``X-Model-Version``. Errors are ``{"error": "..."}`` with
400 (bad input), 401 (token), 404 (unknown model or version), 405, 413 (body too large) or
503 (no version loaded yet); a bug answers 500 with the same shape and is counted, never
crashing the server.

Example::

    app = build_app(context)      # context: ServeContext (manager, metrics, limits, token)
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelkeep.serving.openapi import openapi_document
from modelkeep.serving.predictor import RequestError
from modelkeep.serving.protocol import metadata_json, parse_predict_json, predict_json, status_json

log = logging.getLogger("modelkeep.serve")

_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:[A-Za-z]+)?$"
)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "bad_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class JSONBody:
    """A JSON answer sent with two ASGI messages (Starlette's Response costs more per request)."""

    def __init__(self, content: bytes, status: int = 200, extra: list[tuple[bytes, bytes]] | None = None):
        self.status_code = status
        self.body = content
        self.headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        if extra:
            self.headers.extend(extra)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONBody:
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()] if headers else None
    return JSONBody(json.dumps(body, separators=(",", ":")).encode(), status, extra)


def _error(status: int, message: str) -> JSONBody:
    return _json({"error": message}, status)


class AuthMiddleware:
    """Bearer token on every path except ``/healthz`` (pure ASGI: no per-request objects)."""

    def __init__(self, app: Any, token: str | None):
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        response = _json(
            {"error": "missing or wrong bearer token; send 'Authorization: Bearer <token from --api-key-file>'."},
            401,
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


async def read_body(scope: dict, receive: Any, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) before reading it all."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            if not value.isdigit():
                raise HTTPError(400, f"Content-Length must be a number, got {value.decode(errors='replace')!r}.")
            if int(value) > limit:
                raise HTTPError(413, f"request body is {int(value)} bytes; the limit is {limit} (--max-request-bytes).", "too_large")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise HTTPError(400, "the client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-request-bytes).", "too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class RestAPI:
    """The handlers; ``ctx`` is the server's ``ServeContext``."""

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.manager = ctx.manager
        self.metrics = ctx.metrics

    def _target(self, match: re.Match) -> tuple[Any, int | None]:
        name, version, label = match["name"], match["version"], match["label"]
        if name != self.manager.name:
            raise HTTPError(404, f"Servable not found: no model named {name!r}; this server serves {self.manager.name!r}.", "not_found")
        if label is not None:
            raise HTTPError(404, f"version labels are not supported (got label {label!r}); use /versions/<number>.", "not_found")
        if version is not None and not version.isdigit():
            raise HTTPError(400, f"version must be a non-negative integer, got {version!r}.")
        number = int(version) if version is not None else None
        if not self.manager.ready:
            raise HTTPError(503, f"model {name!r} has no version loaded yet; see GET /v1/models/{name}.", "unavailable")
        entry = self.manager.resolve(number)
        if entry is None:
            loaded = sorted(self.manager.loaded)
            raise HTTPError(404, f"Servable not found for request: version {number} of {name!r}; loaded versions: {loaded}.", "not_found")
        return entry, number

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """``/v1/models/...`` as a plain ASGI endpoint: the hot path skips Request/Response objects."""
        response = await self.models(scope, receive)
        await response(scope, receive, send)

    async def models(self, scope: dict, receive: Any) -> JSONBody:
        started = time.perf_counter()
        path, verb = scope["path"], scope["method"]
        match = _MODEL_PATH.match(path)
        method = "unknown"
        try:
            if match is None:
                raise HTTPError(404, f"no such endpoint {path!r}; see /openapi.json.", "not_found")
            tail = match["tail"] or ""
            method = {"": "status", "/metadata": "metadata"}.get(tail, tail.lstrip(":"))
            if method in ("status", "metadata"):
                if verb != "GET":
                    raise HTTPError(405, f"{verb} not allowed here; use GET.", "method")
                response = self._status(match) if method == "status" else self._metadata(match)
            elif method == "predict":
                if verb != "POST":
                    raise HTTPError(405, f"{verb} not allowed here; use POST.", "method")
                response = await self._predict(scope, receive, match)
            else:
                raise HTTPError(404, f"unsupported method {tail!r}; this server supports :predict.", "not_found")
        except HTTPError as exc:
            response = _error(exc.status, exc.message)
            self.metrics.errors.inc(("rest", exc.kind))
        except Exception as exc:  # noqa: BLE001 - answer, count and log; never take the server down
            log.exception("serve: internal error on %s", path)
            response = _error(500, f"internal error: {type(exc).__name__}: {exc}")
            self.metrics.errors.inc(("rest", "internal"))
        self.metrics.requests.inc(("rest", method, str(response.status_code)))
        self.metrics.latency.observe(("rest", method), time.perf_counter() - started)
        return response

    def _status(self, match: re.Match) -> JSONBody:
        name, version = match["name"], match["version"]
        if name != self.manager.name:
            raise HTTPError(404, f"Servable not found: no model named {name!r}; this server serves {self.manager.name!r}.", "not_found")
        states = self.manager.model_states()
        if version is not None:
            if not version.isdigit() or int(version) not in states:
                raise HTTPError(404, f"version {version!r} of {name!r} is not known; known: {sorted(states)}.", "not_found")
            states = {int(version): states[int(version)]}
        return _json(status_json(states))

    def _metadata(self, match: re.Match) -> JSONBody:
        entry, _ = self._target(match)
        return _json(metadata_json(self.manager.name, entry.version, entry.predictor))

    async def _predict(self, scope: dict, receive: Any, match: re.Match) -> JSONBody:
        raw = await read_body(scope, receive, self.ctx.max_request_bytes)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise HTTPError(400, f"malformed JSON body: {exc}; expected an object with 'instances' or 'inputs'.") from None
        entry, _ = self._target(match)  # after any await: the version this request runs on
        predictor = entry.predictor
        try:
            named, row_form = parse_predict_json(body, predictor)
            arrays = predictor.check_inputs(named, allow_non_finite=self.ctx.allow_non_finite)
        except RequestError as exc:
            raise HTTPError(400, str(exc)) from None
        outputs = await entry.batcher.submit(arrays)
        self.metrics.predictions.inc((self.manager.name, str(entry.version)))
        content = json.dumps(predict_json(outputs, predictor, row_form), separators=(",", ":")).encode()
        return JSONBody(content, 200, [(b"x-model-version", entry.version_header)])

    async def healthz(self, request: Request) -> JSONBody:
        return _json({"status": "alive"})

    async def readyz(self, request: Request) -> JSONBody:
        if self.manager.ready:
            return _json({"status": "ready", "model": self.manager.name, "versions": sorted(self.manager.loaded)})
        return _json({"status": "loading", "model": self.manager.name, "versions": []}, 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.manager.name))

    async def not_found(self, request: Request, exc: Exception) -> JSONBody:
        return _error(404, f"no such endpoint {request.url.path!r}; see /openapi.json.")

    async def not_allowed(self, request: Request, exc: Exception) -> JSONBody:
        return _error(getattr(exc, "status_code", 405), f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not allowed')}.")


def build_app(ctx: Any) -> Any:
    """The ASGI application (Starlette, wrapped in the token check when a token is set)."""
    api = RestAPI(ctx)
    routes = [
        Route("/v1/models/{rest:path}", api),  # an ASGI endpoint: every method reaches it
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: api.not_found, 405: api.not_allowed})
    return AuthMiddleware(app, ctx.api_key)
