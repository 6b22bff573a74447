"""Serving benchmark: ``modelkeep serve`` against the servers a user would pick instead.

One command prints, with wrk at c = 1, 32 and 256 (requests/s answered 200, p50, p99, errors):

* the tutorial model (``modelkeep.demo.tutorial_model``), one row per request;
* a 1M-parameter CNN on 32x32x3 images, 32 rows per request (~840 KB of JSON), at c = 1, 32;

for modelkeep REST, modelkeep gRPC (the same rows as ``tensor_content``; load from the
Python ``grpc.aio`` client of this file, ``--grpc-load``, since wrk speaks no gRPC),
MLServer (custom runtime calling the Keras model), BentoML, FastAPI + ``model.predict``,
FastAPI + a ``tf.function``, and two echo floors (the JSON body parsed and sent back):
modelkeep's own HTTP stack (uvicorn + httptools + uvloop + orjson) and granian (RSGI, the
fastest Python stack measured here). Then the ratios of issue 19's targets.

The peers run in the benchmark's own venv (``benchmarks/serve-peers-requirements.txt``, made on
first use under ``~/.cache/modelkeep-bench/``, TensorFlow/Keras shared from this venv by a
``.pth`` placed after the peers' own site-packages), never in modelkeep's dependencies.
Every server and temporary file is removed on any exit (Ctrl-C included).

wrk: ``apt-get install -y wrk`` (Debian/Ubuntu), ``brew install wrk`` (macOS).

Usage (about 9 minutes with the defaults on 2 cores, the peers' venv already made)::

    make bench-serve        # = .venv/bin/python benchmarks/serve_bench.py
    .venv/bin/python benchmarks/serve_bench.py --seconds 5 --servers modelkeep,echo-granian --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import modelkeep  # noqa: F401  - before TensorFlow: keeps its start-up lines off stderr

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_REQUIREMENTS = HERE / "serve-peers-requirements.txt"
CACHE = Path(os.environ.get("MODELKEEP_BENCH_CACHE", Path.home() / ".cache" / "modelkeep-bench"))
PEERS = ("mlserver", "bentoml", "fastapi-predict", "fastapi-tf", "echo-granian")
ALL_SERVERS = ("modelkeep", "modelkeep-grpc", "echo-modelkeep", *PEERS)
ECHOES = ("echo-modelkeep", "echo-granian")


# ---------------------------------------------------------------------- models and bodies
def make_models(directory: Path) -> dict[str, Path]:
    """The tutorial model (trained 2 epochs) and the CNN (random weights), as .keras files."""
    import keras

    import modelkeep as mk
    from modelkeep.demo import tutorial_data, tutorial_model

    keras.utils.set_random_seed(0)
    x, y, _ = tutorial_data()
    model = tutorial_model()
    model.fit(x, y, epochs=2, verbose=0)
    mk.save_model(model, directory / "tutorial.keras")
    cnn = cnn_model()
    mk.save_model(cnn, directory / "cnn.keras")
    return {"tutorial": directory / "tutorial.keras", "cnn": directory / "cnn.keras"}


def cnn_model():  # noqa: ANN201
    """1,031,498 parameters on 32x32x3 images, 10 classes."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(384, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="cnn")


def rows(workload: str):  # noqa: ANN201
    import numpy as np

    rng = np.random.default_rng(7)
    if workload == "tutorial":
        return np.round(rng.random((1, 10)), 6).astype(np.float32)
    return np.round(rng.random((32, 32, 32, 3)), 5).astype(np.float32)


def bodies(workload: str) -> dict[str, bytes]:
    """Each protocol's request body for the same rows (6 decimals; 5 for the CNN: ~840 KB)."""
    x = rows(workload)
    values = [round(float(v), 6 if workload == "tutorial" else 5) for v in x.ravel()]
    import numpy as np

    nested = np.asarray(values).reshape(x.shape).tolist()
    tfs = json.dumps({"instances": nested}, separators=(",", ":")).encode()
    v2 = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": values}]},
                    separators=(",", ":")).encode()
    return {"tfs": tfs, "v2": v2, "bento": tfs}


PATHS = {
    "modelkeep": ("/v1/models/{name}:predict", "tfs"),
    "echo-modelkeep": ("/v1/models/{name}:predict", "tfs"),
    "echo-granian": ("/v1/models/{name}:predict", "tfs"),
    "fastapi-predict": ("/v1/models/{name}:predict", "tfs"),
    "fastapi-tf": ("/v1/models/{name}:predict", "tfs"),
    "mlserver": ("/v2/models/tutorial/infer", "v2"),
    "bentoml": ("/predict", "bento"),
}
READY = {"mlserver": "/v2/health/ready", "bentoml": "/readyz"}


# ---------------------------------------------------------------------- the peers' venvs
VENV_OF = {"bentoml": "bentoml"}  # every other peer runs in the [mlserver] venv


def requirement_sections() -> dict[str, list[str]]:
    """``# [name]`` sections of serve-peers-requirements.txt: one venv each."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in PEERS_REQUIREMENTS.read_text().splitlines():
        line = line.strip()
        if m := re.fullmatch(r"#\s*\[(\w+)\].*", line):
            current = sections.setdefault(m[1], [])
        elif line and not line.startswith("#") and current is not None:
            current.append(line.split(" #")[0].strip())
    return sections


def peers_python(section: str) -> Path:
    """The venv of one section (made once per pinned list), its site-packages before this venv's."""
    wanted = requirement_sections()[section]
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]
    venv = CACHE / f"peers-{section}-{digest}"
    python = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return python
    print(f"peers: making {venv} ({', '.join(wanted)}; once, a few minutes)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # zz-: read after the peers' own packages, so their pinned versions win and TF/Keras are found here
    (Path(site) / "zz-modelkeep-tf.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (venv / ".ready").touch()
    return python


# ---------------------------------------------------------------------- servers
class Servers:
    """Child processes in their own process groups, all stopped on exit."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, tuple[subprocess.Popen, int, int | None]] = {}

    def start(self, kind: str, model: Path, name: str, peers: dict[str, Path]) -> None:
        port, grpc_port = free_port(), None
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
        if kind == "modelkeep":
            grpc_port = free_port()
            cmd = [sys.executable, "-m", "modelkeep.cli.main", "serve", str(model), "--name", name,
                   "--port", str(port), "--grpc-port", str(grpc_port)]
        elif kind == "echo-modelkeep":
            cmd = [sys.executable, str(HERE / "serve_peers.py"), kind, "--port", str(port)]
        else:
            env.pop("PYTHONPATH")
            cmd = [str(peers[VENV_OF.get(kind, "mlserver")]), str(HERE / "serve_peers.py"), kind, "--port", str(port), "--model", str(model)]
        log = open(self.tmp / f"{kind}-{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=self.tmp)
        log.close()
        self.procs[kind] = (proc, port, grpc_port)

    def wait(self, kind: str, timeout: float = 240.0) -> bool:
        proc, port, _ = self.procs[kind]
        path = READY.get(kind, "/readyz")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                with socket.create_connection((HOST, port), timeout=2) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return True
            time.sleep(0.3)
        print(f"  {kind}: not ready (see its log below); left out", flush=True)
        with contextlib.suppress(OSError):
            name = next(self.tmp.glob(f"{kind}-*.log"))
            print("    " + "\n    ".join(name.read_text(errors="replace").splitlines()[-8:]), flush=True)
        self.stop(kind)
        return False

    def stop(self, kind: str) -> None:
        proc = self.procs.pop(kind)[0]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for kind in list(self.procs):
            self.stop(kind)


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) of every live process of session ``sid`` (Linux /proc; 0 elsewhere)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- load: wrk
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
"""


def wrk(port: int, path: str, body: Path, concurrency: int, seconds: float, tmp: Path, timeout: float = 5.0) -> dict:
    script = tmp / f"{body.stem}.lua"
    script.write_text(LUA.replace("{body}", str(body)))
    threads = 1 if concurrency == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", f"{timeout:g}s",
           "-s", str(script), f"http://{HOST}:{port}{path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 60)
    found = parse_wrk(done.stdout)
    if not found["requests"]:  # nothing answered in time: every connection counts as failed
        found["errors"] = max(found["errors"], concurrency - found["timeouts"])
        found["wrk"] = (done.stdout + done.stderr)[-400:]
    return found


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> dict:
    """requests, req/s, p50/p99 (ms) and errors (socket errors + timeouts + non-2xx) from wrk's text."""
    found = {"requests": 0, "rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": 0, "timeouts": 0}
    if m := re.search(r"(\d+) requests in", out):
        found["requests"] = int(m[1])
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        found["rps"] = float(m[1])
    for q, key in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{q}%\s+(\S+)", out, re.M):
            found[key] = _ms(m[1])
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        found["errors"] += int(m[1]) + int(m[2]) + int(m[3])
        found["timeouts"] = int(m[4])
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        found["errors"] += int(m[1])
    return found


# ---------------------------------------------------------------------- load: gRPC
def grpc_load(port: int, name: str, workload: str, concurrency: int, seconds: float) -> dict:
    """Closed-loop gRPC Predict load: ``concurrency`` calls in flight on one channel (Python grpc.aio)."""
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    x = rows(workload)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=x.tobytes())
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in x.shape]))
    request.inputs[GRPC_INPUT[workload]].CopyFrom(proto)
    latencies: list[float] = []
    errors = [0, 0]

    async def one_client(stub, deadline: float) -> None:  # noqa: ANN001
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await stub.Predict(request, timeout=5)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                errors[1 if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else 0] += 1

    async def run() -> float:
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(f"{HOST}:{port}", options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            await stub.Predict(request, timeout=30)
            warm = time.perf_counter() + (1.0 if workload == "tutorial" else 3.0)
            await asyncio.gather(*(one_client(stub, warm) for _ in range(concurrency)))
            latencies.clear()
            started = time.perf_counter()
            await asyncio.gather(*(one_client(stub, started + seconds) for _ in range(concurrency)))
            return time.perf_counter() - started

    elapsed = asyncio.run(run())
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "errors": errors[0], "timeouts": errors[1]}


GRPC_INPUT: dict[str, str] = {}


def measure_grpc(port: int, name: str, workload: str, concurrency: int, seconds: float) -> dict:
    """The gRPC load in its own process, so the client's CPU is not the orchestrator's."""
    cmd = [sys.executable, __file__, "--grpc-load", json.dumps([port, name, workload, concurrency, seconds, GRPC_INPUT[workload]])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=env)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"  grpc load failed: {out.stderr[-600:]}", flush=True)
        return {"requests": 0, "rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": -1, "timeouts": 0}


def input_key(model_path: Path) -> str:
    import modelkeep as mk
    from modelkeep.formats.savedmodel import signature_keys

    return signature_keys(mk.load_model(model_path, compile=False))[0][0]


# ---------------------------------------------------------------------- orchestration
def run_workload(workload: str, model: Path, kinds: list[str], levels: list[int], seconds: float, tmp: Path,
                 peers: dict[str, Path], results: dict) -> None:
    print(f"\n== {workload}: {'one row' if workload == 'tutorial' else '32 rows of 32x32x3'} per request", flush=True)
    body_files = {}
    for key, data in bodies(workload).items():
        body_files[key] = tmp / f"{workload}-{key}.json"
        body_files[key].write_bytes(data)
    print(f"   request body: {len(bodies(workload)['tfs']):,} bytes (TF Serving JSON)", flush=True)
    servers = Servers(tmp)
    try:
        http_kinds = [k for k in kinds if k != "modelkeep-grpc"]
        if "modelkeep-grpc" in kinds and "modelkeep" not in http_kinds:
            http_kinds.insert(0, "modelkeep")
        for kind in http_kinds:
            servers.start(kind, model, workload, peers)
        up = [k for k in http_kinds if servers.wait(k)]
        order = [k for k in kinds if k in up or (k == "modelkeep-grpc" and "modelkeep" in up)]
        for c in levels:
            for kind in order:
                server = servers.procs["modelkeep" if kind == "modelkeep-grpc" else kind][0].pid
                if kind == "modelkeep-grpc":
                    before = session_cpu(server)  # (includes the client's warm-up second)
                    r = measure_grpc(servers.procs["modelkeep"][2], workload, workload, c, seconds)
                else:
                    path, body = PATHS[kind]
                    port = servers.procs[kind][1]
                    warm = 1.0 if workload == "tutorial" else 3.0
                    limit = 5.0 if workload == "tutorial" else 30.0  # wrk's --timeout: a 32-deep CNN queue takes seconds
                    wrk(port, path.format(name=workload), body_files[body], c, warm, tmp, limit)  # warm-up
                    before = session_cpu(server)
                    r = wrk(port, path.format(name=workload), body_files[body], c, seconds, tmp, limit)
                r["cpu_us"] = (session_cpu(server) - before) / r["requests"] * 1e6 if r["requests"] else float("nan")
                r["ok_rps"] = r["rps"] * max(0, r["requests"] - r["errors"]) / r["requests"] if r["requests"] else 0.0
                results.setdefault(workload, {}).setdefault(kind, {})[c] = r
                print(f"   {kind:>16}  c={c:<3} {r['ok_rps']:9.1f} req/s   p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms"
                      f"   errors {r['errors']}  timeouts {r['timeouts']}   server CPU {r['cpu_us']:8.0f} us/req", flush=True)
    finally:
        servers.stop_all()


def report(results: dict) -> None:
    print("\n== issue 19 targets", flush=True)
    tut = results.get("tutorial", {})
    floors = {k: tut[k][32]["ok_rps"] for k in ECHOES if 32 in tut.get(k, {})}
    if "modelkeep" in tut and 32 in tut["modelkeep"]:
        mk = tut["modelkeep"][32]
        print(f"   tutorial c=32: modelkeep p99 {mk['p99_ms']:.1f} ms (target < 20 ms): {'met' if mk['p99_ms'] < 20 else 'MISSED'}")
        if floors:
            best = max(floors, key=floors.get)
            ratio = mk["ok_rps"] / floors[best]
            print(f"   tutorial c=32: modelkeep / fastest echo floor ({best}, {floors[best]:.0f} req/s) = {ratio:.2f}x "
                  f"(target >= 0.66x): {'met' if ratio >= 0.66 else 'MISSED'}")
            for k, v in floors.items():
                cpu = tut[k][32]["cpu_us"] / mk["cpu_us"]
                print(f"      modelkeep / {k} = {mk['ok_rps'] / v:.2f}x req/s; {k} / modelkeep server CPU per request = "
                      f"{cpu:.2f}x (what a CPU-bound modelkeep would reach: the steadier figure on a loaded machine)")
    if "modelkeep" in tut and 256 in tut["modelkeep"]:
        r = tut["modelkeep"][256]
        bad = r["errors"] + r["timeouts"]
        print(f"   tutorial c=256: modelkeep errors {r['errors']}, timeouts {r['timeouts']} (target 0): {'met' if bad == 0 else 'MISSED'}")
    cnn = results.get("cnn", {})
    for c in (1, 32):
        peers = {k: v[c]["ok_rps"] for k, v in cnn.items() if k in PEERS and c in v and not k.startswith("echo")}
        for kind in ("modelkeep", "modelkeep-grpc"):
            if kind in cnn and c in cnn[kind] and peers:
                best = max(peers, key=peers.get)
                ratio = cnn[kind][c]["ok_rps"] / peers[best] if peers[best] else float("inf")
                print(f"   cnn c={c}: {kind} {cnn[kind][c]['ok_rps']:.1f} req/s / best peer ({best}, {peers[best]:.1f}) = "
                      f"{ratio:.2f}x (target >= 1x): {'met' if ratio >= 1 else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point (default 5; 1 s warm-up first)")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS), help=f"comma list of {','.join(ALL_SERVERS)}")
    parser.add_argument("--cnn-seconds", type=float, default=8.0,
                        help="measured seconds per CNN point (default 8, after 3 s of warm-up: 32 big requests take seconds to reach a steady state)")
    parser.add_argument("--workloads", default="tutorial,cnn")
    parser.add_argument("--concurrency", default="1,32,256", help="tutorial levels (default 1,32,256)")
    parser.add_argument("--cnn-concurrency", default="1,32", help="CNN levels (default 1,32)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--make-peers", action="store_true", help="only make the peers' venvs, then stop")
    parser.add_argument("--grpc-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.grpc_load:
        port, name, workload, c, seconds, key = json.loads(args.grpc_load)
        GRPC_INPUT[workload] = key
        print(json.dumps(grpc_load(port, name, workload, c, seconds)))
        return 0
    if shutil.which("wrk") is None:
        print("serve_bench: wrk is not installed; install it with `apt-get install -y wrk` (Debian/Ubuntu) "
              "or `brew install wrk` (macOS), then run again.", file=sys.stderr)
        return 2
    kinds = [k for k in args.servers.split(",") if k]
    unknown = sorted(set(kinds) - set(ALL_SERVERS))
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {','.join(ALL_SERVERS)}")
    sections = {VENV_OF.get(k, "mlserver") for k in kinds if k in PEERS}
    peers = {section: peers_python(section) for section in sorted(sections)}
    if args.make_peers:
        return 0
    print(f"machine: {os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    started = time.monotonic()
    results: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="mk-serve-bench-"))
    previous = signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        models = make_models(tmp)
        for workload in args.workloads.split(","):
            GRPC_INPUT[workload] = input_key(models[workload])
            levels = [int(c) for c in (args.concurrency if workload == "tutorial" else args.cnn_concurrency).split(",")]
            wanted = [k for k in kinds if workload == "tutorial" or not k.startswith("echo")]
            seconds = args.seconds if workload == "tutorial" else args.cnn_seconds
            run_workload(workload, models[workload], wanted, levels, seconds, tmp, peers, results)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)
    print(f"\nran {time.monotonic() - started:.0f} s; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
