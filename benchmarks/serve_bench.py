"""Serving benchmark: ``modelkeep serve`` against a ``model.predict`` server and an echo floor.

Starts three HTTP servers on loopback, each in its own process, all on the same stack
(Starlette + uvicorn, one worker, asyncio):

* ``modelkeep``: ``modelkeep serve model.keras`` (TF Serving REST API);
* ``predict``: a minimal server whose handler calls ``model.predict`` per request;
* ``echo``: a handler that parses the JSON body and answers it back (the server's floor).

A bounded load generator (a minimal HTTP/1.1 keep-alive client on asyncio, one connection
per concurrent client, fixed duration) sends the same one-row ``instances`` request to each
at concurrency 1 and 32 and prints requests/s and p50/p99 latency, then the ratios against
the targets (c=32: modelkeep >= 60% of echo throughput; c=1: modelkeep p50 < 2 ms).

Usage::

    .venv/bin/python benchmarks/serve_bench.py [--seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}).encode()


# ---------------------------------------------------------------------- baseline servers
def run_baseline(kind: str, port: int, model_path: str) -> None:
    """The ``predict`` or ``echo`` server (runs in a child process)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    model = None
    if kind == "predict":
        import numpy as np

        import modelkeep as mk

        model = mk.load_model(model_path, compile=False)

    async def handle(request):  # noqa: ANN001
        body = json.loads(await request.body())
        if model is None:
            answer = body
        else:
            answer = {"predictions": model.predict(np.asarray(body["instances"], np.float32), verbose=0).tolist()}
        return Response(json.dumps(answer, separators=(",", ":")).encode(), media_type="application/json")

    async def ready(request):  # noqa: ANN001
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route("/v1/models/tutorial:predict", handle, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host=HOST, port=port, loop="asyncio", lifespan="off", access_log=False, log_level="warning")


# ---------------------------------------------------------------------- load generator
async def _client(port: int, path: str, deadline: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


async def _load(port: int, path: str, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_client(port, path, deadline, latencies, errors) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
    }


def measure(port: int, path: str, concurrency: int, seconds: float) -> dict[str, float]:
    asyncio.run(_load(port, path, concurrency, min(1.0, seconds / 3)))  # warm-up
    return asyncio.run(_load(port, path, concurrency, seconds))


# ---------------------------------------------------------------------- orchestration
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def make_model(directory: Path) -> Path:
    import keras

    import modelkeep as mk
    from modelkeep.demo import tutorial_data, tutorial_model

    keras.utils.set_random_seed(0)
    x, y, _ = tutorial_data()
    model = tutorial_model()
    model.fit(x, y, epochs=2, verbose=0)
    path = directory / "tutorial.keras"
    mk.save_model(model, path)
    return path


def server_command(kind: str, port: int, model_path: Path, extra: list[str]) -> list[str]:
    if kind == "modelkeep":
        exe = ROOT / ".venv" / "bin" / "modelkeep"
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "modelkeep.cli.main"]
        return [*head, "serve", str(model_path), "--name", "tutorial", "--port", str(port), "--grpc-port", "0", *extra]
    return [sys.executable, __file__, "--serve-baseline", kind, "--port", str(port), "--model", str(model_path)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point (default 5)")
    parser.add_argument("--servers", default="echo,modelkeep,predict")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--serve-args", default="", help="extra arguments for modelkeep serve")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--serve-baseline", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.serve_baseline:
        run_baseline(args.serve_baseline, args.port, args.model)
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = make_model(Path(tmp))
        for kind in args.servers.split(","):
            port = free_port()
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            proc = subprocess.Popen(
                server_command(kind, port, model_path, args.serve_args.split()),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            )
            try:
                wait_ready(port, proc)
                results[kind] = {}
                for c in levels:
                    seconds = args.seconds if kind != "predict" else max(args.seconds, 3.0)
                    results[kind][c] = r = measure(port, "/v1/models/tutorial:predict", c, seconds)
                    print(
                        f"{kind:>10}  c={c:<3} {r['rps']:9.0f} req/s   p50 {r['p50_ms']:7.2f} ms   "
                        f"p99 {r['p99_ms']:7.2f} ms   ({r['requests']} requests, {r['errors']} errors)",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait(30)
    report(results, levels)
    if args.json:
        Path(args.json).write_text(json.dumps({k: {str(c): r for c, r in v.items()} for k, v in results.items()}, indent=2))
    return 0


def report(results: dict, levels: list[int]) -> None:
    mk, echo, pred = results.get("modelkeep"), results.get("echo"), results.get("predict")
    if mk and echo and 32 in levels:
        ratio = mk[32]["rps"] / echo[32]["rps"]
        print(f"c=32: modelkeep / echo throughput = {ratio:.0%} (target >= 60%): {'met' if ratio >= 0.6 else 'MISSED'}")
    if mk and pred and 32 in levels:
        print(f"c=32: modelkeep / model.predict server throughput = {mk[32]['rps'] / pred[32]['rps']:.0f}x")
    if mk and 1 in levels:
        p50 = mk[1]["p50_ms"]
        print(f"c=1: modelkeep p50 = {p50:.2f} ms (target < 2 ms): {'met' if p50 < 2 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
