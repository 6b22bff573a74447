"""uvicorn's httptools protocol, with predict requests answered without the ASGI round trip.

uvicorn turns every request into an ASGI scope, a request-response cycle object, an
``asyncio.Event``, a task, and two ``send`` calls that check every header with regular
expressions: about 38 us a request on the 2-core machine (a constant answer: 49 us a request
through uvicorn, 11 us from a bare httptools protocol). For ``POST
/v1/models/<name>[/versions/<v>|/labels/<l>]:predict`` read whole, this protocol hands the
body to ``RestAPI.predict_answer`` (the same code the ASGI route runs: same bytes, same
metrics) in one task and writes the answer in one write, with uvicorn's default headers.

Everything else is uvicorn's, unchanged: any other request, and a predict request with a query
string, a ``%`` escape, no ``Content-Length``, a body over the limit, ``Expect: 100-continue``,
HTTP/1.0, a wrong token, or one pipelined behind an unanswered request. Keep-alive, the
keep-alive timer, pipelining, shut-down (the answer in flight is written, then the connection
closes) and the server's drain (it waits for these tasks) work through uvicorn's own state: a
request in flight here is a ``_FastCycle`` where uvicorn keeps its cycle.

Example::

    uvicorn.Config(app, http=FastHttpToolsProtocol, ...)   # app: rest.build_app(ctx)
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class _NoEvent:
    """uvicorn sets its cycle's event when the connection goes; nothing waits on it here."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()
_KEPT = 1024  # URLs remembered (predict or not): a client sending endless new ones costs no memory


class _FastCycle:
    """The state uvicorn reads from its cycle, for a predict request answered here."""

    __slots__ = ("response_complete", "disconnected", "keep_alive", "chunks")
    message_event = _NO_EVENT

    def __init__(self, keep_alive: bool):
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []


class FastHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` answering whole predict requests through ``RestAPI.predict_answer``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.api = getattr(self.app, "fast_predict", None)  # None (a wrapped app): plain uvicorn
        self.fast: tuple[Any, str] | None = None

    def on_headers_complete(self) -> None:
        spec = self._fast_spec()
        if spec is None:
            self.fast = None
            return super().on_headers_complete()
        self.fast = spec
        self.cycle = _FastCycle(self.parser.should_keep_alive())  # type: ignore[assignment]

    def _fast_spec(self) -> tuple[Any, str] | None:
        api = self.api
        if api is None or self.parser.get_method() != b"POST" or self.expect_100_continue or self.root_path:
            return None
        if self.parser.should_upgrade():
            return None
        if self.parser.get_http_version() != "1.1" or self.limit_concurrency is not None:
            return None
        if self.cycle is not None and not self.cycle.response_complete:  # pipelined: uvicorn queues it
            return None
        routes = api.fast_urls
        found = routes.get(self.url, False)
        if found is False:
            found = None
            url = self.url
            if url.startswith(b"/v1/") and url.isascii() and b"?" not in url and b"%" not in url and b"#" not in url:
                path = self.url.decode("ascii", "replace")
                spec = api.predict_route(path)
                found = (spec, path) if spec is not None else None
            if len(routes) < _KEPT:
                routes[self.url] = found
        if found is None:
            return None
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit() or int(length) > api.ctx.max_request_bytes:
            return None  # uvicorn's path words these (no length, or 413 before reading)
        if not api.authorized(self.headers):
            return None  # the ASGI path answers 401
        return found

    def on_body(self, body: bytes) -> None:
        if self.fast is None:
            return super().on_body(body)
        self.cycle.chunks.append(body)  # type: ignore[attr-defined]

    def on_message_complete(self) -> None:
        if self.fast is None:
            return super().on_message_complete()
        (spec, path), self.fast = self.fast, None
        cycle = self.cycle
        chunks = cycle.chunks  # type: ignore[attr-defined]
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        cycle.chunks = []  # type: ignore[attr-defined]
        task = self.loop.create_task(self._answer(cycle, spec, path, raw))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _default_head(self) -> bytes:
        """uvicorn's default header lines (server, date), joined once each time uvicorn renews
        them (its ``on_tick`` assigns a new list when the date changes); kept on its state."""
        state = self.server_state
        headers = state.default_headers
        cached = getattr(state, "_modelkeep_head", None)
        if cached is None or cached[0] is not headers:
            cached = (headers, b"".join(name + b": " + value + b"\r\n" for name, value in headers))
            state._modelkeep_head = cached  # type: ignore[attr-defined]
        return cached[1]

    async def _answer(self, cycle: _FastCycle, spec: Any, path: str, raw: bytes) -> None:
        response = await self.api.predict_answer(spec, raw, path)
        if cycle.disconnected or self.transport.is_closing():
            cycle.response_complete = True
            return
        parts = [STATUS_LINE[response.status_code], self._default_head()]
        for name, value in response.headers:
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", response.body)
        self.transport.write(b"".join(parts))
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
