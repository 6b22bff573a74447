"""``http_fast``: predict requests answered by modelkeep's httptools protocol, not uvicorn's ASGI cycle.

Bytes go into ``FastHttpToolsProtocol`` over an in-memory transport, with a real model loaded
behind ``build_app``. A URL with a trailing ``?`` takes uvicorn's ASGI path (the protocol
leaves query strings to it), so each request is sent both ways and the answers compared byte
for byte (the ``date`` header aside); a spy on ``RestAPI.predict_answer`` shows which path ran.
Covered: answers and errors (bad JSON, bools, shapes, unknown model/version/label, NaN),
versions, metrics, the token (401 on the ASGI path, 200 here), 413, pipelining order,
``Connection: close``/HTTP/1.0, shut-down with an answer in flight, a client gone mid-request.
"""

from __future__ import annotations

import asyncio
import re

import pytest

pytest.importorskip("httptools")
uvicorn = pytest.importorskip("uvicorn")

from uvicorn.server import ServerState  # noqa: E402

from modelkeep.serving.http_fast import FastHttpToolsProtocol  # noqa: E402
from modelkeep.serving.rest import build_app  # noqa: E402
from modelkeep.serving.server import ServeConfig, build_context, http_protocol  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e39 (serve silences it)

TOKEN = "s3cret-token"
LIMIT = 4096


class Transport:
    """What uvicorn's protocol needs of a transport; keeps every byte written."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):  # noqa: ANN201
        return {"sockname": ("127.0.0.1", 8501), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol) -> None:  # noqa: ANN001
        raise AssertionError("no upgrade expected")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    import modelkeep as mk

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="sigmoid")])
    path = tmp_path_factory.mktemp("fast") / "m.keras"
    mk.save_model(model, path)
    return path


class Server:
    """One app (a loaded model) and a way to open connections to it."""

    def __init__(self, model_file, token: str | None):  # noqa: ANN001
        self.ctx = build_context(ServeConfig(path=model_file, name="m", grpc_port=None, api_key=token, max_request_bytes=LIMIT))
        self.app = build_app(self.ctx)
        self.api = self.app.fast_predict
        self.fast_calls = 0
        answer = self.api.predict_answer

        async def spy(*args):  # noqa: ANN002, ANN202
            self.fast_calls += 1
            return await answer(*args)

        self.api.predict_answer = spy
        self.config = uvicorn.Config(self.app, http=FastHttpToolsProtocol, lifespan="off", proxy_headers=False, log_level="warning")
        self.config.load()
        self.state = ServerState()
        self.state.default_headers = [(b"date", b"Wed, 02 Dec 2026 07:00:00 GMT"), (b"server", b"uvicorn")]

    def connect(self) -> tuple[FastHttpToolsProtocol, Transport]:
        proto = FastHttpToolsProtocol(config=self.config, server_state=self.state, app_state={}, _loop=asyncio.get_running_loop())
        transport = Transport()
        proto.connection_made(transport)
        return proto, transport


async def _server(model_file, token=None) -> Server:  # noqa: ANN001
    server = Server(model_file, token)
    await server.ctx.manager.poll_once()
    return server


def request(path: str, body: bytes | None = None, *, method: str = "POST", extra: str = "", version: str = "1.1") -> bytes:
    head = f"{method} {path} HTTP/{version}\r\nhost: t\r\n{extra}"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each HTTP response in ``data`` (Content-Length framed)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head)[1])
        out.append((head, rest[:length]))
        data = rest[length:]
    return out


async def exchange(server: Server, raw: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
    proto, transport = server.connect()
    proto.data_received(raw)
    for _ in range(400):
        if transport.data.count(b"HTTP/1.") >= count and len(responses(transport.data)) >= count:
            break
        await asyncio.sleep(0.005)
    return responses(transport.data)


BODIES = [
    b'{"instances": [[0.5, -1.25, 3.0]]}',
    b'{"instances": [[1, 2, 3], [4, 5, 6]]}',
    b'{"inputs": [[0.1, 0.2, 0.3]]}',
    b'{"instances": [[true, false, true]]}',
    b'{"instances": [[1.0, 2.0]]}',
    b'{"instances": [[1.0, NaN, 2.0]]}',
    b'{"instances": ',
    b"",
    b'{"instances": [[1e39, 0, 0]]}',
    b'{"signature_name": "nope", "instances": [[1, 2, 3]]}',
]
PATHS = ["/v1/models/m:predict", "/v1/models/m/versions/1:predict", "/v1/models/m/versions/9:predict",
         "/v1/models/other:predict", "/v1/models/m/labels/stable:predict"]


def test_fast_path_answers_byte_for_byte_as_the_asgi_path(model_file):
    async def run() -> None:
        server = await _server(model_file)
        for path in PATHS:
            for body in BODIES:
                before = server.fast_calls
                (fast,) = await exchange(server, request(path, body))
                assert server.fast_calls == before + 1, path
                (slow,) = await exchange(server, request(path + "?", body))
                assert server.fast_calls == before + 1, "a query string goes the ASGI way"
                assert fast == slow, (path, body, fast, slow)
        ok = (await exchange(server, request(PATHS[0], BODIES[0])))[0]
        assert ok[0].startswith(b"HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 07:00:00 GMT\r\nserver: uvicorn\r\n")
        assert b"\r\nx-model-version: 1" in ok[0] and ok[1].startswith(b'{"predictions":[[')
        metrics = server.ctx.metrics
        # every request counted once, whichever path: 2 x (5 paths x 10 bodies) + 1
        assert sum(v for k, v in metrics.requests.values.items() if k[1] == "predict") == 2 * len(PATHS) * len(BODIES) + 1
        assert metrics.requests.values[("rest", "predict", "200")] == 2 * 2 * 3 + 1  # 3 good bodies on 2 good paths
        assert metrics.predictions.values[("m", "1")] == 2 * 2 * 3 + 1

    asyncio.run(run())


def test_token_size_limit_and_non_predict_routes_stay_on_the_asgi_path(model_file):
    async def run() -> None:
        server = await _server(model_file, TOKEN)
        body = BODIES[0]
        (denied,) = await exchange(server, request(PATHS[0], body))
        assert denied[0].startswith(b"HTTP/1.1 401") and b"www-authenticate: Bearer" in denied[0]
        (wrong,) = await exchange(server, request(PATHS[0], body, extra="authorization: Bearer nope\r\n"))
        assert wrong[0].startswith(b"HTTP/1.1 401") and server.fast_calls == 0
        auth = f"authorization: Bearer {TOKEN}\r\n"
        (ok,) = await exchange(server, request(PATHS[0], body, extra=auth))
        assert ok[0].startswith(b"HTTP/1.1 200") and server.fast_calls == 1
        big = b'{"instances": [' + b",".join([b"[0.5, 0.5, 0.5]"] * 400) + b"]}"
        assert len(big) > LIMIT
        (too_big,) = await exchange(server, request(PATHS[0], big, extra=auth))
        assert too_big[0].startswith(b"HTTP/1.1 413") and f"the limit is {LIMIT}".encode() in too_big[1]
        (status,) = await exchange(server, request("/v1/models/m", method="GET", extra=auth))
        assert status[0].startswith(b"HTTP/1.1 200") and b'"state":"AVAILABLE"' in status[1]
        (get_predict,) = await exchange(server, request(PATHS[0], method="GET", extra=auth))
        assert get_predict[0].startswith(b"HTTP/1.1 405")
        (health,) = await exchange(server, request("/healthz", method="GET"))
        assert health[0].startswith(b"HTTP/1.1 200")
        assert server.fast_calls == 1
        assert server.ctx.metrics.errors.values[("rest", "too_large")] == 1

    asyncio.run(run())


def test_pipelined_requests_are_answered_in_order(model_file):
    async def run() -> None:
        server = await _server(model_file)
        raw = (request(PATHS[0], b'{"instances": [[1, 2, 3]]}') + request("/healthz", method="GET")
               + request(PATHS[0], b'{"instances": [[4, 5, 6]]}') + request(PATHS[3], BODIES[0]))
        got = await exchange(server, raw, count=4)
        assert [h.split(b"\r\n")[0] for h, _ in got] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
                                                       b"HTTP/1.1 404 Not Found"]
        singles = [(await exchange(server, request(PATHS[0], b'{"instances": [[%d, %d, %d]]}' % t)))[0][1]
                   for t in ((1, 2, 3), (4, 5, 6))]
        assert [got[0][1], got[1][1], got[2][1]] == [singles[0], b'{"status":"alive"}', singles[1]]

    asyncio.run(run())


def test_connection_close_http10_shutdown_and_a_client_gone(model_file):
    async def run() -> None:
        server = await _server(model_file)
        for raw in (request(PATHS[0], BODIES[0], extra="connection: close\r\n"), request(PATHS[0], BODIES[0], version="1.0")):
            proto, transport = server.connect()
            proto.data_received(raw)
            for _ in range(400):
                if transport.closed:
                    break
                await asyncio.sleep(0.005)
            ((head, body),) = responses(transport.data)
            assert transport.closed and b"\r\nconnection: close" in head and body.startswith(b'{"predictions"')
        # shut-down while the answer is in flight: the answer is written, then the connection closes
        before = server.fast_calls
        proto, transport = server.connect()
        proto.data_received(request(PATHS[0], BODIES[0]))
        proto.shutdown()
        assert not transport.closed
        await asyncio.gather(*server.state.tasks)
        ((head, body),) = responses(transport.data)
        assert transport.closed and head.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close" in head
        assert server.fast_calls == before + 1
        # the client goes before the answer: nothing written, nothing raised, the task ends
        proto, transport = server.connect()
        proto.data_received(request(PATHS[0], BODIES[0]))
        proto.connection_lost(None)
        await asyncio.gather(*server.state.tasks)
        assert transport.data == b""

    asyncio.run(run())


def test_serve_uses_the_fast_protocol():
    assert http_protocol() is FastHttpToolsProtocol


def test_fast_path_only_on_the_uvicorn_release_it_was_tested_on(monkeypatch):
    """Another uvicorn release gets uvicorn's own httptools protocol, not a subclass of internals
    that may have changed."""
    import uvicorn

    from modelkeep.serving import server
    from modelkeep.serving.http_fast import FastHttpToolsProtocol

    assert uvicorn.__version__.startswith(server.FAST_PATH_UVICORN)  # pyproject pins the serve extra to it
    assert server.http_protocol() is FastHttpToolsProtocol
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    assert server.http_protocol() == "httptools"


NUMBER_BODIES = [
    *BODIES,
    b'{"instances":[[0.5,-1.25,3.0]]}',
    b'\n{ "instances" : [ [ 1e-3 , 2E+2 , -0 ] ,\n\t[ 1.5e1, 9007199254740993, -0.0 ] ] }\r\n',
    b'{"instances": [[1, 2, 3], [4, 5]]}',  # ragged
    b'{"instances": [[1, 2, [3]]]}',
    b'{"instances": [[1, 2, 3]], "instances": [[4, 5, 6]]}',  # a key twice
    b'{"instances1": [[1, 2, 3]]}',  # a digit and a blank vanish from the skeleton: the key is read back
    b'{"in stances": [[1, 2, 3]]}',
    b'{"\\u0069nstances": [[1, 2, 3]]}',
    b'\xef\xbb\xbf{"instances": [[1, 2, 3]]}',  # a byte-order mark
    b'{"instances": [[1, 2, null]]}',
    b'{"instances": [[1, 2, "3"]]}',
    b'{"instances": [[01, 2, 3]]}',
    b'{"instances": [[1, 2, 3]]} x',
    b'{"instances": [[1e400, 2, 3]]}',
    b'{"instances": [[184467440737095516150, 2, 3]]}',
    b'{"instances": []}',
    b'{"instances": [[]]}',
    b'{"inputs": {"x": [[1, 2, 3]]}}',
]


def test_numbers_read_straight_into_numpy_answer_as_the_general_path(model_file, monkeypatch):
    """``json_numbers`` (simdjson into one buffer) changes the cost only: every answer, error
    text and count is the one the general path gives for the same bytes."""
    from modelkeep.serving import json_numbers, rest

    if not json_numbers.available():
        pytest.skip("pysimdjson is not installed (the serve extra brings it)")
    taken = []
    read = json_numbers.read_numeric_body
    monkeypatch.setattr(rest, "read_numeric_body", lambda *a, **k: taken.append(read(*a, **k)) or taken[-1])

    async def answers(direct: bool) -> list:
        monkeypatch.setattr(rest, "NUMBERS_DIRECT_BYTES", 0 if direct else 1 << 62)
        server = await _server(model_file)
        out = []
        for path in PATHS:
            for body in NUMBER_BODIES:
                (answer,) = await exchange(server, request(path, body))
                out.append(answer)
        return out, dict(server.ctx.metrics.requests.values)

    direct, direct_counts = asyncio.run(answers(True))
    general, general_counts = asyncio.run(answers(False))
    assert direct == general and direct_counts == general_counts
    # taken (not None) for the 5 bodies of finite numbers, on the 2 paths that resolve; refused for the rest
    assert sum(t is not None for t in taken) == 5 * 2
