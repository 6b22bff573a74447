"""The gRPC front end: TensorFlow Serving's services on ``grpc.aio``.

``PredictionService.Predict`` and ``GetModelMetadata`` and ``ModelService.GetModelStatus``,
answering the official ``tensorflow-serving-api`` client stubs. Tensors are converted
with ``tf.make_ndarray`` / ``tf.make_tensor_proto``. Bad input gets ``INVALID_ARGUMENT``
with the same messages as the REST API; an unknown model or version ``NOT_FOUND``; no
version yet ``UNAVAILABLE``; a wrong token ``UNAUTHENTICATED``. The response's
``model_spec.version`` names the version that answered.

Example::

    server = grpc.aio.server()
    add_services(server, context)
    server.add_insecure_port("127.0.0.1:8500")
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from modelkeep.serving.predictor import SIGNATURE_NAME, RequestError
from modelkeep.serving.protocol import check_signature, metadata_proto, status_proto

log = logging.getLogger("modelkeep.serve")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Base:
    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.manager = ctx.manager
        self.metrics = ctx.metrics
        self._expected = f"Bearer {ctx.api_key}" if ctx.api_key else None

    def _auth(self, context: grpc.aio.ServicerContext) -> None:
        if self._expected is None:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(str(given).encode(), self._expected.encode()):
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in the 'authorization' metadata.")

    def _target(self, spec: Any) -> Any:
        if spec.name != self.manager.name:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: no model named {spec.name!r}; this server serves {self.manager.name!r}.")
        if spec.version_label:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"version labels are not supported (got {spec.version_label!r}); set model_spec.version.")
        if not self.manager.ready:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, f"model {spec.name!r} has no version loaded yet.")
        number = spec.version.value if spec.HasField("version") else None
        entry = self.manager.resolve(number)
        if entry is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: version {number} of {spec.name!r}; loaded versions: {sorted(self.manager.loaded)}.")
        return entry

    async def _call(self, method: str, context: grpc.aio.ServicerContext, body: Any) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self._auth(context)
            return await body()
        except _Abort as exc:
            code = exc.code
            self.metrics.errors.inc(("grpc", code.name.lower()))
            await context.abort(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - answer INTERNAL and keep serving
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("serve: internal error in gRPC %s", method)
            self.metrics.errors.inc(("grpc", "internal"))
            await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.metrics.requests.inc(("grpc", method, code.name))
            self.metrics.latency.observe(("grpc", method), time.perf_counter() - started)


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - gRPC name
        return await self._call("predict", context, lambda: self._predict(request))

    async def _predict(self, request: Any) -> Any:
        import tensorflow as tf

        entry = self._target(request.model_spec)
        predictor = entry.predictor
        try:
            check_signature(request.model_spec.signature_name)
            named = {}
            for key, proto in request.inputs.items():
                try:
                    named[key] = tf.make_ndarray(proto)
                except Exception as exc:  # noqa: BLE001 - any undecodable TensorProto is bad input
                    raise RequestError(f"input '{key}': the TensorProto cannot be decoded ({exc}).") from None
            arrays = predictor.check_inputs(named, allow_non_finite=self.ctx.allow_non_finite)
            wanted = list(request.output_filter) or predictor.output_names
            unknown = sorted(set(wanted) - set(predictor.output_names))
            if unknown:
                raise RequestError(f"output_filter names unknown output(s) {unknown}; outputs are {predictor.output_names}.")
        except RequestError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        outputs = await entry.batcher.submit(arrays)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.manager.name
        response.model_spec.version.value = entry.version
        response.model_spec.signature_name = SIGNATURE_NAME
        for name, value in zip(predictor.output_names, outputs):
            if name in wanted:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        self.metrics.predictions.inc((self.manager.name, str(entry.version)))
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("metadata", context, lambda: self._metadata(request))

    async def _metadata(self, request: Any) -> Any:
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"metadata_field must be ['signature_def'], got {fields}.")
        entry = self._target(request.model_spec)
        return metadata_proto(self.manager.name, entry.version, entry.predictor)


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("status", context, lambda: self._status(request))

    async def _status(self, request: Any) -> Any:
        spec = request.model_spec
        if spec.name != self.manager.name:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: no model named {spec.name!r}; this server serves {self.manager.name!r}.")
        states = self.manager.model_states()
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"version {spec.version.value} of {spec.name!r} is not known; known: {sorted(states)}.")
            states = {spec.version.value: states[spec.version.value]}
        response: get_model_status_pb2.GetModelStatusResponse = status_proto(states)
        return response


def add_services(server: grpc.aio.Server, ctx: Any) -> None:
    """Register both TF Serving services on ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(ctx), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(ctx), server)
