"""Serving benchmark: ``modelkeep serve`` against a ``model.predict`` server and an echo floor.

Starts three HTTP servers on loopback, each in its own process, all on the same stack
(Starlette + uvicorn, one worker, asyncio):

* ``modelkeep``: ``modelkeep serve model.keras`` (TF Serving REST API);
* ``predict``: a minimal server whose handler calls ``model.predict`` per request;
* ``echo``: a handler that parses the JSON body and answers it back (the server's floor).

A bounded load generator (a minimal HTTP/1.1 keep-alive client on asyncio, one connection
per concurrent client, fixed duration) sends the same one-row ``instances`` request to each
at concurrency 1 and 32, in interleaved rounds (the machine's load drifts; every server
sees the same drift), and prints the medians of requests/s, p50/p99 latency and the server
process's CPU time per request (Linux; the figure least moved by other load), then the ratios against
the targets (c=32: modelkeep >= 60% of echo throughput; c=1: modelkeep p50 < 2 ms).

Usage::

    .venv/bin/python benchmarks/serve_bench.py [--seconds 2] [--rounds 5] [--json out.json]
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


def combine(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Median of the rounds (throughput and latency percentiles), totals of counts."""
    med = lambda key: sorted(r[key] for r in rounds)[len(rounds) // 2]  # noqa: E731
    out = {
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "rps_rounds": [round(r["rps"]) for r in rounds],
    }
    if all("cpu_us_per_request" in r for r in rounds):
        out["cpu_us_per_request"] = med("cpu_us_per_request")
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def measure(port: int, path: str, concurrency: int, seconds: float, pid: int | None = None) -> dict[str, float]:
    asyncio.run(_load(port, path, concurrency, min(0.5, seconds / 6)))  # warm-up
    before = cpu_seconds(pid) if pid else None
    result = asyncio.run(_load(port, path, concurrency, seconds))
    after = cpu_seconds(pid) if pid else None
    if before is not None and after is not None and result["requests"]:
        result["cpu_us_per_request"] = (after - before) / result["requests"] * 1e6
    return result


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


def forward_passes(model_path: Path) -> dict[str, dict[str, float]]:
    """Per-call time of one row through model.predict, the tf.function path and the NumPy path."""
    import numpy as np

    import modelkeep as mk
    from modelkeep.serving.predictor import Predictor

    model = mk.load_model(model_path, compile=False)
    x = np.random.default_rng(1).random((1, 10), dtype=np.float32)
    expected = model.predict(x, verbose=0)
    paths = {
        "model.predict": (lambda: model.predict(x, verbose=0), 20),
        "tf.function": (lambda p=Predictor.from_model(model, allow_numpy=False): p.run([x])[0], 2000),
        "numpy": (lambda p=Predictor.from_model(model): p.run([x])[0], 20000),
    }
    out = {}
    for name, (call, n) in paths.items():
        call()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            got = call()
            times.append(time.perf_counter() - started)
        times.sort()
        out[name] = {"median_ms": times[len(times) // 2] * 1000, "max_abs_diff": float(np.abs(got - expected).max())}
        print(f"forward pass, 1 row: {name:>13} {out[name]['median_ms']:9.4f} ms (median of {n})   "
              f"max |diff| to model.predict {out[name]['max_abs_diff']:.1e}", flush=True)
    return out


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
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per round and point (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per point; medians reported (default 5)")
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
    kinds = args.servers.split(",")
    results: dict[str, dict[int, dict[str, float]]] = {k: {} for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = make_model(Path(tmp))
        results["forward"] = forward_passes(model_path)  # type: ignore[assignment]
        procs: dict[str, tuple[int, subprocess.Popen]] = {}
        try:
            for kind in kinds:  # all up at once; an idle asyncio server costs no CPU
                port = free_port()
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
                cmd = server_command(kind, port, model_path, args.serve_args.split())
                procs[kind] = (port, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
            for port, proc in procs.values():
                wait_ready(port, proc)
            for c in levels:
                rounds: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
                for _ in range(args.rounds):  # interleaved, so drifting machine load hits all alike
                    for kind in kinds:
                        if kind == "predict" and rounds[kind]:
                            continue  # ~200 ms a request: one round says enough
                        port, proc = procs[kind]
                        rounds[kind].append(measure(port, "/v1/models/tutorial:predict", c, args.seconds, proc.pid))
                for kind in kinds:
                    results[kind][c] = r = combine(rounds[kind])
                    print(
                        f"{kind:>10}  c={c:<3} {r['rps']:9.0f} req/s   p50 {r['p50_ms']:7.2f} ms   "
                        f"p99 {r['p99_ms']:7.2f} ms   server CPU {r.get('cpu_us_per_request', float('nan')):6.0f} us/req   "
                        f"({r['requests']} requests, {r['errors']} errors, {len(rounds[kind])} rounds)",
                        flush=True,
                    )
        finally:
            for _, proc in procs.values():
                proc.terminate()
                proc.wait(30)
    report(results, levels)
    if args.json:
        Path(args.json).write_text(json.dumps({k: {str(c): r for c, r in v.items()} for k, v in results.items()}, indent=2))

    return 0


def report(results: dict, levels: list[int]) -> None:
    mk, echo, pred = results.get("modelkeep"), results.get("echo"), results.get("predict")
    if "forward" in results:
        fw = results["forward"]
        print(f"forward pass: model.predict / numpy = {fw['model.predict']['median_ms'] / fw['numpy']['median_ms']:.0f}x, "
              f"tf.function / numpy = {fw['tf.function']['median_ms'] / fw['numpy']['median_ms']:.0f}x")
    if mk and echo and 32 in levels:
        ratio = mk[32]["rps"] / echo[32]["rps"]
        print(f"c=32: modelkeep / echo throughput = {ratio:.0%} (target >= 60%): {'met' if ratio >= 0.6 else 'MISSED'}")
        if "cpu_us_per_request" in mk[32] and "cpu_us_per_request" in echo[32]:
            cpu = echo[32]["cpu_us_per_request"] / mk[32]["cpu_us_per_request"]
            print(f"c=32: echo / modelkeep server CPU per request = {cpu:.0%} (the throughput ratio a CPU-bound server would reach)")
    if mk and pred and 32 in levels:
        print(f"c=32: modelkeep / model.predict server throughput = {mk[32]['rps'] / pred[32]['rps']:.0f}x")
    if mk and 1 in levels:
        p50 = mk[1]["p50_ms"]
        print(f"c=1: modelkeep p50 = {p50:.2f} ms (target < 2 ms): {'met' if p50 < 2 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
