"""The servers ``serve_bench.py`` compares modelkeep with, one per process (no tests here).

Each runs in the benchmark's own environment (``serve-peers-requirements.txt``, made by
``serve_bench.py``), never in modelkeep's dependencies; TensorFlow and Keras come from the
project's venv through a ``.pth`` file placed after the peers' own site-packages.

Kinds (``python serve_peers.py KIND --port P --model M.keras``):

* ``mlserver``: MLServer with a custom runtime that loads the ``.keras`` file and calls the
  model (``model(x, training=False)``), V2 inference protocol;
* ``bentoml``: a BentoML service whose API takes ``instances`` and calls the model;
* ``fastapi-predict``: FastAPI (uvicorn) answering with ``model.predict`` per request;
* ``fastapi-tf``: FastAPI with a ``tf.function`` of the model traced once (batch dim free);
* ``echo-granian``: granian (RSGI, Rust HTTP) parsing the JSON body with orjson and answering
  it back: the fastest Python echo floor measured here;
* ``echo-modelkeep``: modelkeep's own stack (uvicorn + httptools + uvloop, orjson), same echo.

Every model server answers ``GET /readyz`` once the model is loaded.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def _load(path: str):  # noqa: ANN202
    import keras

    return keras.models.load_model(path, compile=False)


def _rows(body: dict):  # noqa: ANN202
    import numpy as np

    return np.asarray(body["instances"], dtype=np.float32)


# ---------------------------------------------------------------------- echo floors
async def echo_asgi(scope, receive, send):  # noqa: ANN001, ANN201
    """A raw ASGI echo: read the body, orjson round trip, answer."""
    import orjson

    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    out = orjson.dumps(orjson.loads(body)) if body else b"{}"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


class EchoRSGI:
    """The same echo as an RSGI app (granian's native interface)."""

    async def __rsgi__(self, scope, proto):  # noqa: ANN001, ANN204
        import orjson

        body = await proto()
        out = orjson.dumps(orjson.loads(body)) if body else b"{}"
        proto.response_bytes(200, [("content-type", "application/json")], out)


echo_rsgi = EchoRSGI()


# ---------------------------------------------------------------------- FastAPI
def fastapi_app(model_path: str, kind: str):  # noqa: ANN201
    import numpy as np
    import tensorflow as tf
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    model = _load(model_path)
    if kind == "fastapi-tf":
        spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        fn(np.zeros([1, *model.inputs[0].shape[1:]], np.float32))
        run = lambda x: fn(x).numpy()  # noqa: E731
    else:
        run = lambda x: model.predict(x, verbose=0)  # noqa: E731
    app = FastAPI()

    @app.post("/v1/models/{spec:path}")  # "{name}:predict"
    async def predict(spec: str, request: Request):  # noqa: ANN202
        body = await request.json()
        return JSONResponse({"predictions": run(_rows(body)).tolist()})

    @app.get("/readyz")
    async def ready():  # noqa: ANN202
        return {"status": "ready"}

    return app


# ---------------------------------------------------------------------- MLServer
RUNTIME = '''
import os
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class KerasRuntime(MLModel):
    async def load(self) -> bool:
        import keras
        self.model = keras.models.load_model(os.environ["PEER_MODEL"], compile=False)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = np.asarray(self.model(x, training=False))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", y)])
'''


def run_mlserver(model_path: str, port: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mk-bench-mlserver-"))
    (work / "keras_runtime.py").write_text(RUNTIME)
    (work / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": 0, "metrics_port": 0, "metrics_endpoint": None, "host": "127.0.0.1",
        "debug": False, "parallel_workers": 0,
    }))
    (work / "model-settings.json").write_text(json.dumps({
        "name": "tutorial", "implementation": "keras_runtime.KerasRuntime", "parameters": {"version": "1"},
    }))
    os.environ["PEER_MODEL"] = model_path
    os.chdir(work)
    sys.argv = ["mlserver", "start", str(work)]
    from mlserver.cli.main import main

    main()


# ---------------------------------------------------------------------- BentoML
BENTO = '''
import os
import numpy as np
import bentoml


@bentoml.service(workers=1)
class Keras:
    def __init__(self) -> None:
        import keras
        self.model = keras.models.load_model(os.environ["PEER_MODEL"], compile=False)

    @bentoml.api
    def predict(self, instances: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(instances.astype(np.float32, copy=False), training=False))
'''


def run_bentoml(model_path: str, port: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="mk-bench-bentoml-"))
    (work / "service.py").write_text(BENTO)
    os.environ["PEER_MODEL"] = model_path
    os.chdir(work)
    sys.path.insert(0, str(work))
    sys.argv = ["bentoml", "serve", "service:Keras", "--host", "127.0.0.1", "--port", str(port)]
    from bentoml_cli.cli import cli

    cli()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    if args.kind == "mlserver":
        return run_mlserver(args.model, args.port)
    if args.kind == "bentoml":
        return run_bentoml(args.model, args.port)
    if args.kind == "echo-granian":
        from granian import Granian
        from granian.constants import Interfaces

        sys.path.insert(0, str(Path(__file__).parent))
        Granian("serve_peers:echo_rsgi", address="127.0.0.1", port=args.port, interface=Interfaces.RSGI,
                workers=1, log_enabled=False).serve()
        return None
    import uvicorn

    app = echo_asgi if args.kind == "echo-modelkeep" else fastapi_app(args.model, args.kind)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", lifespan="off",
                access_log=False, log_level="warning")
    return None


if __name__ == "__main__":
    main()
