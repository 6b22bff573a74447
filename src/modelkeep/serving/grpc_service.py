"""The gRPC front end: TensorFlow Serving's services on ``grpc.aio``.

``PredictionService`` (Predict, GetModelMetadata, Classify, Regress, MultiInference) and
``ModelService.GetModelStatus``, answering the official ``tensorflow-serving-api`` stubs.
Requests become the same (signature, named arrays) as REST ones; outputs come back in the
typed fields (``float_val``, ...) as TF Serving fills them, ``tensor_content`` only when
the server is started with it. Errors carry TF Serving's status code and text (unknown
signature: FAILED_PRECONDITION ``Serving signature key "x" not found.``); a wrong token is
``UNAUTHENTICATED``. The response's ``model_spec.version`` names the version that answered.

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
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from modelkeep.serving import examples
from modelkeep.serving.protocol import (
    infer,
    metadata_proto,
    off_loop,
    resolve,
    status_proto,
    status_states,
    tf_serving_exact,
)
from modelkeep.serving.signature import CLASSIFY_METHOD, REGRESS_METHOD, ServingError
from modelkeep.serving.tensors import array_to_proto, proto_to_array

log = logging.getLogger("modelkeep.serve")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _spec_of(spec: Any) -> tuple[str, int | None, str | None]:
    return spec.name, (spec.version.value if spec.HasField("version") else None), (spec.version_label or None)


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

    def _target(self, spec: Any) -> tuple[Any, Any]:

        return resolve(self.ctx, *_spec_of(spec))

    async def _call(self, method: str, context: grpc.aio.ServicerContext, body: Any, model: str = "") -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK

        try:
            self._auth(context)
            return await body()
        except _Abort as exc:
            code = exc.code
            self.metrics.errors.inc(("grpc", code.name.lower()))
            await context.abort(exc.code, exc.message)
        except ServingError as exc:
            code = exc.grpc_code
            self.metrics.errors.inc(("grpc", code.name.lower()))
            await context.abort(code, exc.message)
        except Exception as exc:  # noqa: BLE001 - answer INTERNAL and keep serving
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("serve: internal error in gRPC %s", method)
            self.metrics.errors.inc(("grpc", "internal"))
            await context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.inc(("grpc", method, code.name))
            self.metrics.latency.observe(("grpc", method), elapsed)
            if self.ctx.tfs_metrics is not None:
                self.ctx.tfs_metrics.record(model, method, "GRPC", code.name, elapsed)


def _model_spec(target: Any, name: str, version: int, signature: str) -> None:
    target.name = name
    target.version.value = version
    target.signature_name = signature


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - gRPC name
        return await self._call("predict", context, lambda: self._predict(request), request.model_spec.name)

    async def _predict(self, request: Any) -> Any:
        manager, entry = self._target(request.model_spec)
        predictor = entry.predictor
        signature = predictor.signature(request.model_spec.signature_name)
        signature.check_names(request.inputs)
        order = sorted(signature.inputs)
        raw = {k: proto_to_array(request.inputs[k], signature.inputs[k], order.index(k)) for k in order}
        named = predictor.prepare(
            signature, raw, allow_non_finite=self.ctx.allow_non_finite, check_shapes=not tf_serving_exact(self.ctx)
        )
        wanted = signature.check_output_filter(list(request.output_filter))
        outputs = await infer(manager, entry, signature, named)
        response = predict_pb2.PredictResponse()
        _model_spec(response.model_spec, request.model_spec.name, entry.version, signature.key)
        for name in wanted:
            response.outputs[name].CopyFrom(array_to_proto(outputs[name], tensor_content=self.ctx.tensor_content))
        self.metrics.predictions.inc((manager.name, str(entry.version)))
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("metadata", context, lambda: self._metadata(request), request.model_spec.name)

    async def _metadata(self, request: Any) -> Any:
        fields = list(request.metadata_field)
        if not fields:
            raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported (modelkeep: ask for 'signature_def')")
        _, entry = self._target(request.model_spec)
        return metadata_proto(request.model_spec.name, entry.version, entry.predictor)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("classify", context, lambda: self._one(request, "classify"), request.model_spec.name)

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("regress", context, lambda: self._one(request, "regress"), request.model_spec.name)

    def _signature(self, entry: Any, name: str) -> Any:
        key = name or "serving_default"
        if key not in entry.predictor.signatures:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"No signature was found with the name: {key} (modelkeep: this model has {sorted(entry.predictor.signatures)})",
            )
        return entry.predictor.signatures[key]

    async def _one(self, request: Any, method: str) -> Any:
        manager, entry = self._target(request.model_spec)
        signature = self._signature(entry, request.model_spec.signature_name)
        serialized = examples.examples_from_input(request.input)
        run = examples.classify if method == "classify" else examples.regress
        result = await off_loop(manager, run, signature, entry.predictor.call, serialized, entry.predictor.tf1)
        response = (classification_pb2.ClassificationResponse if method == "classify" else regression_pb2.RegressionResponse)()
        _model_spec(response.model_spec, request.model_spec.name, entry.version, signature.key)
        response.result.CopyFrom(result)
        return response

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("multi_inference", context, lambda: self._multi(request))

    async def _multi(self, request: Any) -> Any:
        if not request.tasks:
            raise ServingError("INVALID_ARGUMENT", "Inference request should contain at least one task. (modelkeep: add request.tasks)")
        names = {t.model_spec.name for t in request.tasks}
        if len(names) > 1:
            raise ServingError("INVALID_ARGUMENT", "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        seen: set[str] = set()
        for task in request.tasks:
            if task.model_spec.signature_name in seen:
                raise ServingError("INVALID_ARGUMENT", "Duplicate evaluation of signature: " + task.model_spec.signature_name)
            seen.add(task.model_spec.signature_name)
        manager, entry = self._target(request.tasks[0].model_spec)
        serialized = examples.examples_from_input(request.input)
        if self.ctx.tfs_metrics is not None:  # TF Serving's RecordRequestExampleCount (MultiInference)
            self.ctx.tfs_metrics.record_examples(manager.name, len(serialized))
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            signature = self._signature(entry, task.model_spec.signature_name)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
            if entry.predictor.tf1 and signature.method_name != task.method_name:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expected signature method_name to be {task.method_name}. Was: {signature.method_name}",
                )
            result = response.results.add()
            _model_spec(result.model_spec, task.model_spec.name, entry.version, signature.key)
            if task.method_name == CLASSIFY_METHOD:
                out = await off_loop(manager, examples.classify, signature, entry.predictor.call, serialized, entry.predictor.tf1)
                result.classification_result.CopyFrom(out)
            else:
                out = await off_loop(manager, examples.regress, signature, entry.predictor.call, serialized, entry.predictor.tf1)
                result.regression_result.CopyFrom(out)
        return response


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("status", context, lambda: self._status(request))

    async def _status(self, request: Any) -> Any:
        states = status_states(self.ctx, *_spec_of(request.model_spec))
        response: get_model_status_pb2.GetModelStatusResponse = status_proto(states)
        return response

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._call("reload_config", context, lambda: self._reload(request))

    async def _reload(self, request: Any) -> Any:
        from modelkeep.errors import ModelkeepError
        from modelkeep.serving.model_config import apply_entries, entries_from_proto

        try:
            entries = entries_from_proto(request.config, "HandleReloadConfigRequest")
            await apply_entries(self.ctx, entries)
        except ModelkeepError as exc:
            raise ServingError("INVALID_ARGUMENT", str(exc)) from None
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


def add_services(server: grpc.aio.Server, ctx: Any) -> None:
    """Register both TF Serving services on ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(ctx), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(ctx), server)
