"""The REST front end: TensorFlow Serving's API on Starlette, plus health, metrics, OpenAPI.

Routes::

    POST /v1/models/{name}[/versions/{v}]:predict    instances / inputs → predictions / outputs
    GET  /v1/models/{name}[/versions/{v}]            version status (GetModelStatusResponse JSON)
    GET  /v1/models/{name}[/versions/{v}]/metadata   signature def (GetModelMetadataResponse JSON)
    GET  /healthz   /readyz   /metrics   /openapi.json

    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify|:regress   tf.Example JSON → results

Paths, status codes and error texts are TF Serving's (``http_rest_api_util.cc``): a GET to a
POST route (or the reverse) is "Malformed request: GET /v1/models/m:predict", 405 with
``Allow`` from ``modelkeep serve`` (RFC 9110; its /openapi.json leaves it undeclared), 400 from
``modelkeep-model-server`` (TF Serving's code); other methods are 405 with ``Allow``. Errors are ``{"error": "<TF Serving's text> (modelkeep: ...)"}``
with TF Serving's HTTP mapping of the status code (400, 404, 503, ...), plus 401 (token) and
413 (body too large); a bug answers 500 with the same shape and is counted, never crashing
the server. Every successful answer carries ``X-Model-Version``.

Example::

    app = build_app(context)      # context: ServeContext (manager, metrics, limits, token)
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import re
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelkeep.serving.json_numbers import read_numeric_body
from modelkeep.serving.openapi import openapi_document
from modelkeep.serving.protocol import (
    infer,
    metadata_json,
    off_loop,
    parse_predict_json,
    resolve,
    status_json,
    status_states,
    tf_serving_exact,
)
from modelkeep.serving.signature import ServingError
from modelkeep.serving.tensors import numeric_request, predict_json

log = logging.getLogger("modelkeep.serve")

try:
    from orjson import loads as _orjson_loads
except ImportError:  # the serve extra without orjson: the stdlib parser alone
    _orjson_loads = None


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "bad_request", allow: str = "GET, POST"):
        super().__init__(message)
        self.status, self.message, self.kind, self.allow = status, message, kind, allow


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

    def __init__(self, app: Any, api: RestAPI):
        self.app, self.api = app, api
        self.fast_predict = api  # for the HTTP protocol (``http_fast``): the API behind this app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.api.expected_token is None or scope["type"] != "http" or scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        if self.api.authorized(scope["headers"]):
            return await self.app(scope, receive, send)
        await unauthorized()(scope, receive, send)


def unauthorized() -> JSONBody:
    """401 with TF Serving-style JSON and ``WWW-Authenticate``."""
    return _json(
        {"error": "missing or wrong bearer token; send 'Authorization: Bearer <token from --api-key-file>'."},
        401,
        {"WWW-Authenticate": "Bearer"},
    )


async def read_body(scope: dict, receive: Any, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes (413) before reading it all."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            if not value.isdigit():
                raise HTTPError(400, f"Content-Length must be a number, got {value.decode(errors='replace')!r}.")
            if int(value) > limit:
                raise HTTPError(413, f"request body is {int(value)} bytes; the limit is {limit} (--max-request-bytes).", "too_large")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the whole body at once
        body = message.get("body", b"")
        if len(body) > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-request-bytes).", "too_large")
        return body
    chunks, size = [], 0
    while True:
        if message["type"] != "http.request":
            raise HTTPError(400, "the client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-request-bytes).", "too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = await receive()


_POST_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:(?:/versions/(?P<version>\d+))|(?:/labels/(?P<label>[^/:]+)))?"
    r":(?P<method>classify|regress|predict)",
    re.IGNORECASE,
)
_GET_PATH = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?(?:(?:/versions/(?P<version>\d+))|(?:/labels/(?P<label>[^/:]+)))?"
    r"(?:/(?P<metadata>metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1
_ROUTES_KEPT = 1024
_STATUS_TEXT = {200: "200", 400: "400", 404: "404", 413: "413", 503: "503"}


def _name_of(path: str) -> str:
    parts = path.split("/")
    return parts[3].split(":")[0] if len(parts) > 3 else ""


# Bodies this large are parsed (and turned into arrays) on a parser thread, not the loop's.
# orjson and np.asarray hold the GIL, so this buys no parallelism; measured by serve_bench
# (CNN, 840 KB bodies) to decide. Environment override for that measurement only.
OFF_LOOP_BYTES = int(os.environ.get("MODELKEEP_PARSE_OFF_LOOP_BYTES", str(1 << 62)))
#: Bodies from this size try ``json_numbers`` first (numbers straight into NumPy); below it,
#: orjson and ``numeric_request`` cost less than a second parse of a refused body would.
NUMBERS_DIRECT_BYTES = int(os.environ.get("MODELKEEP_NUMBERS_DIRECT_BYTES", str(16 * 1024)))
_PARSER: Any = None
_NO_GC_BYTES = 64 * 1024


async def _off_loop(fn: Any, *args: Any) -> Any:
    global _PARSER
    if _PARSER is None:
        from concurrent.futures import ThreadPoolExecutor

        _PARSER = ThreadPoolExecutor(2, thread_name_prefix="modelkeep-parse")
    return await asyncio.get_running_loop().run_in_executor(_PARSER, fn, *args)


def _parse_json(raw: bytes) -> Any:
    """The request body as Python values: orjson (C, strict RFC 8259) first, then the stdlib.

    orjson refuses what TF Serving's parser takes beyond RFC 8259 (``NaN``/``Infinity``,
    numbers beyond a double, UTF-16/32 bodies) and everything malformed; the stdlib then
    reads the first or words the error as before. Integers beyond 64 bits become doubles,
    as rapidjson (TF Serving's parser) reads them."""
    if _orjson_loads is not None:
        collecting = len(raw) > _NO_GC_BYTES and gc.isenabled()
        if collecting:  # tens of thousands of fresh lists, none garbage: no collection while they are made
            gc.disable()
        try:
            return _orjson_loads(raw)
        except ValueError:
            pass
        finally:
            if collecting:
                gc.enable()
    if not raw.strip():
        raise ServingError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ServingError("INVALID_ARGUMENT", "JSON Parse error: nesting too deep (modelkeep: over Python's limit)") from None
    except ValueError as exc:
        pos, msg = getattr(exc, "pos", 0), getattr(exc, "msg", str(exc))
        raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: Invalid value. at offset: {pos} (modelkeep: {msg})") from None


class RestAPI:
    """The handlers; ``ctx`` is the server's ``ServeContext``."""

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.manager = ctx.manager
        self.metrics = ctx.metrics
        self._routes: dict[tuple[str, str], tuple[str, str, int | None, str | None]] = {}
        self.expected_token = f"Bearer {ctx.api_key}".encode() if ctx.api_key else None
        self.fast_urls: dict[bytes, Any] = {}  # http_fast's URL -> (predict spec, path) or None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """``/v1/models/...`` as a plain ASGI endpoint: the hot path skips Request/Response objects."""
        response = await self.models(scope, receive)
        await response(scope, receive, send)

    def _match(self, verb: str, path: str) -> tuple[str, re.Match]:
        """TF Serving's ParseModelInfo: which handler, or 400 'Malformed request'."""
        pattern = _POST_PATH if verb == "POST" else _GET_PATH if verb == "GET" else None
        match = pattern.fullmatch(path) if pattern is not None else None
        if match is None:
            allow = "POST" if _POST_PATH.fullmatch(path) else "GET" if _GET_PATH.fullmatch(path) else None
            if verb not in ("GET", "POST"):
                allow = "GET, POST" if tf_serving_exact(self.ctx) else allow  # model-server: both get TF Serving's answer
                raise HTTPError(405, f"Malformed request: {verb} {path} (modelkeep: use {allow or 'GET or POST'})", "method", allow or "GET, POST")
            if allow and not tf_serving_exact(self.ctx):  # RFC 9110; modelkeep-model-server: TF Serving's 400
                raise HTTPError(405, f"Malformed request: {verb} {path} (modelkeep: this path takes {allow})", "method", allow)
            raise HTTPError(400, f"Malformed request: {verb} {path} (modelkeep: see /openapi.json for the routes)")
        if match["version"] is not None and int(match["version"]) > _INT64_MAX:
            raise HTTPError(400, f"Failed to convert version: {match['version']} to numeric.")
        if verb == "POST":
            return match["method"].lower(), match
        if match["name"] is None:
            raise HTTPError(400, "Missing model name in request.")
        return ("metadata" if match["metadata"] else "status"), match

    def _route(self, verb: str, path: str) -> tuple[str, str, int | None, str | None]:
        """(handler, model name, version, label) of a request line; remembered once matched.

        A path is parsed (regular expression, percent-decoding) the first time only: clients
        send the same few paths again and again. Refused paths raise and are not remembered;
        at most ``_ROUTES_KEPT`` are, so a client sending endless new paths costs no memory."""
        found = self._routes.get((verb, path))
        if found is None:
            method, match = self._match(verb, path)
            found = (method, *self._spec(match))
            if len(self._routes) < _ROUTES_KEPT:
                self._routes[(verb, path)] = found
        return found

    @staticmethod
    def _spec(match: re.Match) -> tuple[str, int | None, str | None]:
        from urllib.parse import unquote

        version = match["version"]
        return unquote(match["name"]), (int(version) if version is not None else None), match["label"] and unquote(match["label"])

    async def models(self, scope: dict, receive: Any) -> JSONBody:
        started = time.perf_counter()
        path, verb = scope["path"], scope["method"]
        method, code = "unknown", "OK"
        try:
            method, name, version, label = self._route(verb, path)
            if method == "status":
                response = _json(status_json(status_states(self.ctx, name, version, label)))
            elif method == "metadata":
                _, entry = resolve(self.ctx, name, version, label)
                response = _json(metadata_json(name, entry.version, entry.predictor))
            else:
                raw = await read_body(scope, receive, self.ctx.max_request_bytes)
                response = await self._post(method, raw, name, version, label)
        except Exception as exc:  # noqa: BLE001 - answered by _failure (counted, logged when a bug)
            response, code = self._failure(exc, path)
        self._count(method, response.status_code, code, started, path)
        return response

    async def predict_answer(self, spec: tuple[str, int | None, str | None], raw: bytes, path: str) -> JSONBody:
        """The answer to ``POST <path>`` (a predict route, ``spec`` = its model, version, label) with body ``raw``.

        What ``models`` answers for the same request, byte for byte and counted the same; the
        server's HTTP protocol calls it directly for predict requests it read whole."""
        started = time.perf_counter()
        code = "OK"
        try:
            response = await self._post("predict", raw, *spec)
        except Exception as exc:  # noqa: BLE001 - answered by _failure (counted, logged when a bug)
            response, code = self._failure(exc, path)
        self._count("predict", response.status_code, code, started, path)
        return response

    async def _post(self, method: str, raw: bytes, name: str, version: int | None, label: str | None) -> JSONBody:
        if method == "predict" and len(raw) >= NUMBERS_DIRECT_BYTES:
            try:
                manager, entry = resolve(self.ctx, name, version, label)
            except ServingError:  # the general way answers it, in its order (the body's errors first)
                inputs = None
            else:
                inputs = read_numeric_body(raw, entry.predictor, allow_non_finite=self.ctx.allow_non_finite)
            if inputs is not None:  # else the general way below, from the same bytes
                del raw
                content = await self._predict(manager, entry, *inputs)
                return JSONBody(content, 200, [(b"x-model-version", entry.version_header)])
        large = len(raw) >= OFF_LOOP_BYTES
        body = await _off_loop(_parse_json, raw) if large else _parse_json(raw)
        has_bool = b"true" in raw or b"false" in raw  # a JSON bool cannot hide among numbers
        del raw
        manager, entry = resolve(self.ctx, name, version, label)  # after any await: the version it runs on
        if method == "predict":
            inputs = await _off_loop(self._inputs, entry, body, has_bool) if large else self._inputs(entry, body, has_bool)
            # The parsed lists go now, not after the pass: 32 requests of 32 images in flight
            # held a million lists for the collector to walk again and again.
            del body
            content = await self._predict(manager, entry, *inputs)
        else:
            content = await self._classify_regress(manager, entry, body, method)
        return JSONBody(content, 200, [(b"x-model-version", entry.version_header)])

    def _failure(self, exc: Exception, path: str) -> tuple[JSONBody, str | int]:
        """The error answer to a failed request and its TF status code (or HTTP status); counted."""
        if isinstance(exc, HTTPError):
            headers = [(b"allow", exc.allow.encode())] if exc.status == 405 else None
            self.metrics.errors.inc(("rest", exc.kind))
            return JSONBody(json.dumps({"error": exc.message}).encode(), exc.status, headers), exc.status
        if isinstance(exc, ServingError):
            self.metrics.errors.inc(("rest", exc.code.lower()))
            return _error(exc.http_status, exc.message), exc.code
        log.error("serve: internal error on %s", path, exc_info=exc)
        self.metrics.errors.inc(("rest", "internal"))
        return _error(500, f"internal error: {type(exc).__name__}: {exc}"), "INTERNAL"

    def _count(self, method: str, status: int, code: str | int, started: float, path: str) -> None:
        self.metrics.requests.inc(("rest", method, _STATUS_TEXT.get(status) or str(status)))
        self.metrics.latency.observe(("rest", method), time.perf_counter() - started)
        if self.ctx.tfs_metrics is not None:
            self.ctx.tfs_metrics.record(_name_of(path), method, "REST", code, time.perf_counter() - started)

    def predict_route(self, path: str) -> tuple[str, int | None, str | None] | None:
        """(model, version, label) when ``POST path`` is a predict request, else None (any other
        route, or a refused path: ``models`` answers those)."""
        try:
            method, name, version, label = self._route("POST", path)
        except HTTPError:
            return None
        return (name, version, label) if method == "predict" else None

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request's headers carry the bearer token (always, when none is set)."""
        if self.expected_token is None:
            return True
        given = next((v for k, v in headers if k == b"authorization"), b"")
        return hmac.compare_digest(given, self.expected_token)

    def _inputs(self, entry: Any, body: Any, has_bool: bool | None = None) -> tuple[Any, dict[str, Any], bool]:
        """(signature, checked arrays, row form) of a predict body: the NumPy fast path, else the general one."""
        predictor = entry.predictor
        fast = numeric_request(body, predictor, allow_non_finite=self.ctx.allow_non_finite, has_bool=has_bool)
        if fast is not None:
            return fast
        signature, raw_named, row_form = parse_predict_json(body, predictor)
        named = predictor.prepare(
            signature, raw_named, allow_non_finite=self.ctx.allow_non_finite, check_shapes=not tf_serving_exact(self.ctx)
        )
        return signature, named, row_form

    async def _predict(self, manager: Any, entry: Any, signature: Any, named: dict[str, Any], row_form: bool) -> bytes:
        outputs = await infer(manager, entry, signature, named)
        self.metrics.predictions.inc((manager.name, str(entry.version)))
        return predict_json(outputs, row_form).encode()

    async def _classify_regress(self, manager: Any, entry: Any, body: Any, method: str) -> bytes:
        from modelkeep.serving import examples

        if not isinstance(body, dict):
            raise ServingError("INVALID_ARGUMENT", f"JSON Value: {json.dumps(body)[:200]} Is not object")
        name = body.get("signature_name", "")
        if not isinstance(name, str):
            raise ServingError("INVALID_ARGUMENT", "JSON Value: not formatted correctly. 'signature_name' key must be a string value.")
        serialized = examples.examples_from_json(body, method)
        key = name or "serving_default"
        if key not in entry.predictor.signatures:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"No signature was found with the name: {key} (modelkeep: this model has {sorted(entry.predictor.signatures)})",
            )
        signature = entry.predictor.signatures[key]
        if method == "classify":
            result = await off_loop(manager, examples.classify, signature, entry.predictor.call, serialized, entry.predictor.tf1)
            return examples.classification_json(result).encode()
        result = await off_loop(manager, examples.regress, signature, entry.predictor.call, serialized, entry.predictor.tf1)
        return examples.regression_json(result).encode()

    async def healthz(self, request: Request) -> JSONBody:
        return _json({"status": "alive"})

    async def readyz(self, request: Request) -> JSONBody:
        managers = self.ctx.managers.values()
        ready = all(m.ready for m in managers)
        first = self.ctx.manager
        body = {"status": "ready" if ready else "loading", "model": first.name, "versions": sorted(first.loaded)}
        if len(self.ctx.managers) > 1:
            body["models"] = {m.name: sorted(m.loaded) for m in managers}
        return _json(body, 200 if ready else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.ctx))

    async def not_found(self, request: Request, exc: Exception) -> JSONBody:
        return _error(404, f"no such endpoint {request.url.path!r}; see /openapi.json.")

    async def not_allowed(self, request: Request, exc: Exception) -> JSONBody:
        status = getattr(exc, "status_code", 405)
        headers = dict(getattr(exc, "headers", None) or {})
        allow = ", ".join(sorted(m.strip() for m in (headers.get("Allow") or headers.get("allow") or "GET").split(",")))
        body = json.dumps({"error": f"{request.method} {request.url.path}: method not allowed; use {allow}."}).encode()
        return JSONBody(body, status, [(b"allow", allow.encode())] if status == 405 else None)

    async def tfs_prometheus(self, request: Request) -> Response:
        return Response(self.ctx.tfs_metrics.render(), media_type="text/plain; version=0.0.4")


class FrontDoor:
    """``/v1/...`` straight to the API handler; every other path through Starlette's router.

    The model routes are one ASGI endpoint in Starlette's table too; skipping its three
    layers (error middleware, exception middleware, router) saves ~25 us a request."""

    def __init__(self, api: RestAPI, app: Any):
        self.api, self.app = api, app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            return await self.api(scope, receive, send)
        return await self.app(scope, receive, send)


def build_app(ctx: Any) -> Any:
    """The ASGI application (Starlette, wrapped in the token check when a token is set)."""
    api = RestAPI(ctx)
    routes = [
        Route("/v1/models", api),
        Route("/v1/models/{rest:path}", api),  # an ASGI endpoint: every method reaches it
        Route("/v1/{rest:path}", api),  # TF Serving's handler takes every /v1/ path ("Malformed request")
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    if ctx.tfs_metrics is not None and ctx.tfs_metrics.path:
        routes.append(Route(ctx.tfs_metrics.path, api.tfs_prometheus, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={404: api.not_found, 405: api.not_allowed})
    return AuthMiddleware(FrontDoor(api, app), api)
