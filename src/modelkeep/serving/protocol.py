"""TensorFlow Serving's requests and answers, shared by the REST and gRPC front ends.

* ``resolve``: a model spec (name, version or label) → the loaded version, or a
  ``ServingError`` with TF Serving's code and text (``Servable not found for request:
  Latest(half)``);
* ``parse_predict_json``: a REST predict body → ``(signature, {key: array}, row_form)``,
  the same request model a gRPC ``PredictRequest`` becomes;
* ``infer``: run one signature of one version (the micro-batcher for a Keras model's
  default signature, a worker thread otherwise);
* ``status_proto`` / ``metadata_proto`` (+ JSON forms): ``GetModelStatusResponse`` and
  ``GetModelMetadataResponse``, every signature listed with its stored tensor names.

Example::

    manager, entry = resolve(ctx, "half", None, None)
    signature, named, row_form = parse_predict_json(body, entry.predictor)
    outputs = await infer(manager, entry, signature, named)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from modelkeep.serving.signature import DEFAULT_SIGNATURE, ServingError, Signature, invalid
from modelkeep.serving.tensors import columns_to_arrays, rows_to_arrays


def tf_serving_exact(ctx: Any) -> bool:
    """``modelkeep-model-server``: TF Serving's answers where ``modelkeep serve`` is stricter
    (a GET to a POST route is 400, not 405; stored signatures' shapes are left to the model)."""
    return bool(getattr(ctx.serve_config, "tf_serving_exact", False))


def _label_version(ctx: Any, name: str, label: str) -> int:
    version = ctx.labels.get(name, {}).get(label)
    if version is None:
        known = sorted(ctx.labels.get(name, {}))
        raise invalid(f"Unrecognized servable version label: {label} (modelkeep: labels of {name!r}: {known})")
    return version


def resolve(ctx: Any, name: str, version: int | None, label: str | None) -> tuple[Any, Any]:
    """The (``VersionManager``, ``ModelVersion``) a request names, as TF Serving's ServerCore finds it."""
    if label:
        version = _label_version(ctx, name, label)
    request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    manager = ctx.managers.get(name)
    if manager is None:
        raise ServingError("NOT_FOUND", f"Servable not found for request: {request} (modelkeep: this server serves {sorted(ctx.managers)})")
    if not manager.ready:
        raise ServingError(  # TF Serving's BasicManager: a configured model with no version loaded yet is NOT_FOUND
            "NOT_FOUND", f"Servable not found for request: {request} (modelkeep: no version of {name!r} is loaded yet; see GET /v1/models/{name})"
        )
    entry = manager.resolve(version)
    if entry is None:
        raise ServingError(
            "NOT_FOUND", f"Servable not found for request: {request} (modelkeep: loaded versions are {sorted(manager.loaded)})"
        )
    return manager, entry


def parse_predict_json(body: Any, predictor: Any) -> tuple[Signature, dict[str, Any], bool]:
    """A parsed REST predict body as (signature, {input key: array}, row form?)."""
    if not isinstance(body, dict):
        raise invalid(f"JSON Value: {_short(body)} Is not object")
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {_short(body)} not formatted correctly. 'signature_name' key must be a string value.")
    key = name or DEFAULT_SIGNATURE
    if key not in predictor.signatures:
        raise invalid(
            f'Serving signature name: "{key}" not found in signature def (modelkeep: this model has '
            f"{sorted(predictor.signatures)})"
        )
    signature = predictor.signatures[key]
    if not signature.inputs:
        raise invalid(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    if "instances" in body:
        if "inputs" in body:
            raise invalid(f"JSON Value: {_short(body)} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
        instances = body["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {_short(body)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {_short(body)} No values in 'instances' array")
        return signature, rows_to_arrays(instances, signature), True
    if "inputs" in body:
        return signature, columns_to_arrays(body["inputs"], signature), False
    raise invalid("Missing 'inputs' or 'instances' key")


def _short(body: Any) -> str:
    import json

    text = json.dumps(body, separators=(",", ":"))
    return text if len(text) < 200 else text[:200] + "..."


async def infer(manager: Any, entry: Any, signature: Signature, named: dict[str, Any]) -> dict[str, Any]:
    """Outputs of ``signature`` on ``named`` (already prepared), keyed by output key."""
    predictor = entry.predictor
    started = time.perf_counter()
    if predictor.batchable and signature.key == DEFAULT_SIGNATURE:
        outputs = await entry.batcher.submit([named[k] for k in predictor.input_names])
        result = dict(zip(predictor.output_names, outputs))
    else:
        result = await asyncio.get_running_loop().run_in_executor(manager._compute, predictor.call, signature.key, named)
    _runtime(manager, "predict", started)
    return result


def _runtime(manager: Any, api: str, started: float) -> None:
    tfs = getattr(manager.metrics, "tfs", None)
    if tfs is not None:  # TF Serving's runtime_latency: the model's run alone
        tfs.record_runtime(manager.name, api, time.perf_counter() - started)


async def off_loop(manager: Any, fn: Any, *args: Any) -> Any:
    """A blocking call (classify/regress) on the inference thread."""
    started = time.perf_counter()
    result = await asyncio.get_running_loop().run_in_executor(manager._compute, fn, *args)
    if fn.__name__ in ("classify", "regress"):
        _runtime(manager, fn.__name__, started)
    return result


# ---------------------------------------------------------------------- protobufs
def signature_map(predictor: Any) -> Any:
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in predictor.signatures.items():
        sig_map.signature_def[key].CopyFrom(sig.to_proto())
    return sig_map


def metadata_proto(name: str, version: int, predictor: Any) -> Any:
    """``GetModelMetadataResponse`` with ``metadata['signature_def']`` packed, as TF Serving does."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.metadata["signature_def"].Pack(signature_map(predictor))
    return response


def metadata_json(name: str, version: int, predictor: Any) -> dict[str, Any]:
    """The REST form of the metadata: the ``Any`` unpacked into its JSON, as TF Serving prints it."""
    from google.protobuf import json_format

    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": _to_dict(json_format, signature_map(predictor))},
    }


def status_states(ctx: Any, name: str, version: int | None, label: str | None) -> dict[int, Any]:
    """The versions a GetModelStatus request asks about, with TF Serving's errors."""
    if label:
        version = _label_version(ctx, name, label)
    manager = ctx.managers.get(name)
    states = manager.model_states() if manager is not None else {}
    if not states:
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {name} (modelkeep: this server serves {sorted(ctx.managers)})")
    if version is not None:
        if version not in states:
            raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name} (modelkeep: known versions {sorted(states)})")
        states = {version: states[version]}
    return states


def status_proto(states: dict[int, Any]) -> Any:
    """``GetModelStatusResponse`` for ``{version: VersionState}``."""
    from tensorflow.core.protobuf import error_codes_pb2
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for version, st in states.items():
        entry = response.model_version_status.add()
        entry.version = version
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(st.state)
        entry.status.error_code = error_codes_pb2.Code.Value(st.error_code)
        entry.status.error_message = st.error_message
    return response


def status_json(states: dict[int, Any]) -> dict[str, Any]:
    from google.protobuf import json_format

    return _to_dict(json_format, status_proto(states))


def _to_dict(json_format: Any, message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
