"""The OpenAPI 3 document of the REST API (served at ``/openapi.json``).

Example::

    doc = openapi_document("tutorial")
    sorted(doc["paths"])      # ['/healthz', '/metrics', ..., '/v1/models/tutorial:predict', ...]
"""

from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_VALUE = {"description": "a number, or a nested list of numbers (a tensor)"}
_PREDICT_REQUEST = {
    "type": "object",
    "properties": {
        "signature_name": {"type": "string", "example": "serving_default"},
        "instances": {
            "type": "array",
            "minItems": 1,
            "description": "row form: one entry per example; an object keyed by input name for multi-input models",
            "items": _VALUE,
        },
        "inputs": {
            "description": "columnar form: a tensor (batch first), or an object keyed by input name",
            "oneOf": [{"type": "object", "additionalProperties": _VALUE}, {"type": "array"}],
        },
    },
    "additionalProperties": False,
}
_PREDICT_RESPONSE = {
    "type": "object",
    "properties": {"predictions": {"type": "array"}, "outputs": _VALUE},
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad input", 401: "missing or wrong bearer token", 404: "unknown model or version",
            413: "body over --max-request-bytes", 503: "no version loaded yet"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _version_param() -> dict[str, Any]:
    return {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}


def openapi_document(name: str) -> dict[str, Any]:
    """OpenAPI 3.0 description of every route for the model ``name``."""
    predict = {
        "post": {
            "summary": "Predict (TensorFlow Serving REST API)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _PREDICT_REQUEST}}},
            "responses": {
                "200": {
                    "description": "predictions (row form) or outputs (columnar form); header X-Model-Version",
                    "headers": {"X-Model-Version": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": _PREDICT_RESPONSE}},
                },
                **_errors(400, 401, 404, 413, 503),
            },
        }
    }
    status = {"get": {"summary": "Model version status (GetModelStatusResponse JSON)",
                      "responses": {"200": {"description": "model_version_status"}, **_errors(401, 404)}}}
    metadata = {"get": {"summary": "Signature def (GetModelMetadataResponse JSON)",
                        "responses": {"200": {"description": "model_spec and metadata.signature_def"},
                                      **_errors(401, 404, 503)}}}
    base = f"/v1/models/{name}"
    versioned = f"{base}/versions/{{version}}"
    with_param = lambda op: {m: {**o, "parameters": [_version_param()]} for m, o in op.items()}  # noqa: E731
    plain = {"get": {"summary": "", "responses": {"200": {"description": "ok"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"modelkeep serve: {name}", "version": "1"},
        "paths": {
            f"{base}:predict": predict,
            f"{versioned}:predict": with_param(predict),
            base: status,
            versioned: with_param(status),
            f"{base}/metadata": metadata,
            f"{versioned}/metadata": with_param(metadata),
            "/healthz": {"get": {**plain["get"], "summary": "alive (no token needed)"}},
            "/readyz": {"get": {"summary": "a version is loaded", "responses": {"200": {"description": "ready"}, **_errors(503)}}},
            "/metrics": {"get": {**plain["get"], "summary": "Prometheus metrics"}},
            "/openapi.json": {"get": {**plain["get"], "summary": "this document"}},
        },
    }
