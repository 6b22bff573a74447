"""TensorFlow Serving's message shapes, shared by the REST and gRPC front ends.

* ``parse_predict_json``: a REST predict body (``instances`` row form or ``inputs``
  columnar form, named or not) → named values;
* ``predict_json``: outputs → ``{"predictions": ...}`` or ``{"outputs": ...}``;
* ``status_proto`` / ``metadata_proto``: ``GetModelStatusResponse`` and
  ``GetModelMetadataResponse`` protobufs; the REST API answers their JSON form, as TF
  Serving does.

Example::

    named, row_form = parse_predict_json(body, predictor)
    arrays = predictor.check_inputs(named)
    answer = predict_json(predictor.run(arrays), predictor, row_form)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkeep.serving.predictor import PREDICT_METHOD, SIGNATURE_NAME, Predictor, RequestError


def check_signature(name: str | None) -> None:
    if name not in (None, "", SIGNATURE_NAME):
        raise RequestError(f"signature_name {name!r} not found; this model has [{SIGNATURE_NAME!r}].")


def parse_predict_json(body: Any, predictor: Predictor) -> tuple[dict[str, Any], bool]:
    """Named input values of a predict body, and whether it used the row (instances) form."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object with 'instances' or 'inputs', got {_kind(body)}.")
    extra = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if extra:
        raise RequestError(f"unknown field(s) {extra}; expected 'signature_name' and one of 'instances' or 'inputs'.")
    signature = body.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise RequestError(f"'signature_name' must be a string, got {_kind(signature)}.")
    check_signature(signature)
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("the request needs exactly one of 'instances' (row form) or 'inputs' (columnar form).")
    if "instances" in body:
        return _rows(body["instances"], predictor), True
    return _columns(body["inputs"], predictor), False


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _single_name(predictor: Predictor, form: str) -> str:
    if len(predictor.input_names) != 1:
        raise RequestError(
            f"this model has {len(predictor.input_names)} inputs {predictor.input_names}; "
            f"send {form} as objects keyed by input name."
        )
    return predictor.input_names[0]


def _rows(instances: Any, predictor: Predictor) -> dict[str, Any]:
    if not isinstance(instances, list):
        raise RequestError(f"'instances' must be a list of rows, got {_kind(instances)}.")
    if not instances:
        raise RequestError("'instances' is empty; send at least one row.")
    if not isinstance(instances[0], dict):
        if any(isinstance(row, dict) for row in instances):
            raise RequestError("'instances' mixes objects and plain rows; use one form for every row.")
        return {_single_name(predictor, "'instances'"): instances}
    keys = set(instances[0])
    for i, row in enumerate(instances):
        if not isinstance(row, dict) or set(row) != keys:
            raise RequestError(
                f"'instances'[{i}] must be an object with the same input names as 'instances'[0] {sorted(keys)}."
            )
    return {k: [row[k] for row in instances] for k in keys}


def _columns(inputs: Any, predictor: Predictor) -> dict[str, Any]:
    if isinstance(inputs, dict):
        if not inputs:
            raise RequestError(f"'inputs' is an empty object; the model's inputs are {predictor.input_names}.")
        return dict(inputs)
    return {_single_name(predictor, "'inputs'"): inputs}


def predict_json(outputs: list[np.ndarray], predictor: Predictor, row_form: bool) -> dict[str, Any]:
    """The answer in the form of the request: row → ``predictions``, columnar → ``outputs``."""
    names = predictor.output_names
    if row_form:
        if len(outputs) == 1:
            return {"predictions": outputs[0].tolist()}
        columns = [o.tolist() for o in outputs]
        return {"predictions": [dict(zip(names, row)) for row in zip(*columns)]}
    if len(outputs) == 1:
        return {"outputs": outputs[0].tolist()}
    return {"outputs": {n: o.tolist() for n, o in zip(names, outputs)}}


# ---------------------------------------------------------------------- protobufs
def signature_def(predictor: Predictor) -> Any:
    """The model's ``serving_default`` as a ``SignatureDef`` protobuf."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_shape_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    def info(spec: Any, tensor_name: str) -> Any:
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in spec.shape]
        )
        return meta_graph_pb2.TensorInfo(
            name=tensor_name, dtype=tf.as_dtype(spec.dtype).as_datatype_enum, tensor_shape=shape
        )

    sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for spec in predictor.inputs:
        sig.inputs[spec.name].CopyFrom(info(spec, f"serving_default_{spec.name}:0"))
    for i, spec in enumerate(predictor.outputs):
        sig.outputs[spec.name].CopyFrom(info(spec, f"StatefulPartitionedCall:{i}"))
    return sig


def metadata_proto(name: str, version: int, predictor: Predictor) -> Any:
    """``GetModelMetadataResponse`` with ``metadata['signature_def']`` packed, as TF Serving does."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig_map.signature_def[SIGNATURE_NAME].CopyFrom(signature_def(predictor))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = version
    response.metadata["signature_def"].Pack(sig_map)
    return response


def metadata_json(name: str, version: int, predictor: Predictor) -> dict[str, Any]:
    """The REST form of the metadata: the ``Any`` unpacked into its JSON, as TF Serving prints it."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig_map.signature_def[SIGNATURE_NAME].CopyFrom(signature_def(predictor))
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": _to_dict(json_format, sig_map)},
    }


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
