"""The OpenAPI 3 document of the REST API (served at ``/openapi.json``), per served model.

For each model: predict / classify / regress (latest, ``/versions/{version}``,
``/labels/{label}``), status and metadata. The predict body's schema is the model's
signatures: ``signature_name`` one of its keys, ``inputs`` keyed by the default signature's
input keys, each value a nested list of that input's rank (when known) of numbers,
integers, booleans, strings or ``{"b64": ...}``. Every error answer is ``{"error": text}``;
a GET to a POST route is documented as TF Serving answers it (400 "Malformed request").

Example::

    doc = openapi_document(ctx)
    sorted(doc["paths"])      # ['/healthz', ..., '/v1/models/half:predict', ...]
"""

from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TEXT = {400: "bad input, or TF Serving's 'Malformed request'", 401: "missing or wrong bearer token",
         404: "unknown model or version", 405: "method not allowed (Allow header)", 413: "body over --max-request-bytes",
         429: "resource exhausted", 500: "internal error", 501: "unimplemented", 503: "no version loaded yet"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": _TEXT[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _leaf(spec: Any) -> dict[str, Any]:
    kind = spec.dtype.kind
    if kind == "f":
        return {"type": "number"}
    if kind in "iu":
        return {"type": "integer"}
    if kind == "b":
        return {"type": "boolean"}
    b64 = {"type": "object", "properties": {"b64": {"type": "string"}}, "required": ["b64"], "additionalProperties": False}
    return {"oneOf": [{"type": "string"}, b64]}


def _nested(spec: Any, rank: int | None) -> dict[str, Any]:
    if rank is None:
        return {"description": f"a tensor of {spec.describe()}"}
    schema = _leaf(spec)
    for _ in range(rank):
        schema = {"type": "array", "items": schema}
    return schema


def _predict_schema(predictor: Any) -> dict[str, Any]:
    default = predictor.signatures.get("serving_default") or next(iter(predictor.signatures.values()))
    specs = default.inputs
    rank = {k: (None if s.shape is None else len(s.shape)) for k, s in specs.items()}
    row = {k: _nested(s, None if rank[k] is None else max(rank[k] - 1, 0)) for k, s in specs.items()}
    column = {k: _nested(s, rank[k]) for k, s in specs.items()}
    if len(specs) == 1:
        (key,) = specs
        row_items, columns = row[key], column[key]
        if rank[key] is None:
            columns = {}
    else:
        row_items = {"type": "object", "properties": row, "required": sorted(specs)}
        columns = {"type": "object", "properties": column, "required": sorted(specs)}
    signatures = sorted(k for k, s in predictor.signatures.items() if s.inputs)
    return {
        "type": "object",
        "properties": {
            "signature_name": {"type": "string", "enum": ["", *signatures]},
            "instances": {"type": "array", "minItems": 1, "items": row_items, "description": "row form"},
            "inputs": {**columns, "description": "columnar form"},
        },
        "description": f"exactly one of 'instances' or 'inputs'; the default signature takes {default.describe_inputs()}",
    }


_EXAMPLES = {
    "type": "object",
    "properties": {
        "signature_name": {"type": "string"},
        "context": {"type": "object"},
        "examples": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
    "required": ["examples"],
}


def _model_paths(name: str, predictor: Any | None) -> dict[str, Any]:
    body = _predict_schema(predictor) if predictor is not None else {"type": "object"}
    json_ok = {"content": {"application/json": {"schema": {"type": "object"}}}}
    malformed = {"get": {"summary": "TF Serving answers a GET here with 400 'Malformed request'", "responses": _errors(400, 401)}}

    def post(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                "responses": {
                    "200": {"description": "the answer; header X-Model-Version", **json_ok,
                            "headers": {"X-Model-Version": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 404, 413, 500, 503),
                },
            },
            **malformed,
        }

    get = {"get": {"summary": "", "responses": {"200": {"description": "ok", **json_ok}, **_errors(400, 401, 404, 503)}}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}
    label = {"name": "label", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/:]+$"}}
    paths: dict[str, Any] = {}
    base = f"/v1/models/{name}"
    for prefix, params in ((base, []), (f"{base}/versions/{{version}}", [version]), (f"{base}/labels/{{label}}", [label])):
        with_params = _adder(params)
        paths[f"{prefix}:predict"] = with_params(post("Predict (TF Serving REST API)", body))
        paths[f"{prefix}:classify"] = with_params(post("Classify tf.Examples", _EXAMPLES))
        paths[f"{prefix}:regress"] = with_params(post("Regress tf.Examples", _EXAMPLES))
        paths[prefix] = with_params({"get": {**get["get"], "summary": "Model version status (GetModelStatusResponse JSON)"}})
        paths[f"{prefix}/metadata"] = with_params({"get": {**get["get"], "summary": "Signature defs (GetModelMetadataResponse JSON)"}})
    return paths


def _adder(params: list[dict[str, Any]]) -> Any:
    def add(ops: dict[str, Any]) -> dict[str, Any]:
        return {m: {**op, "parameters": params} for m, op in ops.items()} if params else ops

    return add


def openapi_document(ctx: Any) -> dict[str, Any]:
    """OpenAPI 3.0 description of every route, for every model ``ctx`` serves."""
    plain = {"200": {"description": "ok"}}
    paths: dict[str, Any] = {}
    for name, manager in ctx.managers.items():
        latest = manager.latest
        paths.update(_model_paths(name, latest.predictor if latest is not None else None))
    paths.update({
        "/healthz": {"get": {"summary": "alive (no token needed)", "responses": plain}},
        "/readyz": {"get": {"summary": "every model has a version loaded", "responses": {**plain, **_errors(401, 503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {**plain, **_errors(401)}}},
        "/openapi.json": {"get": {"summary": "this document", "responses": {**plain, **_errors(401)}}},
    })
    if ctx.tfs_metrics is not None and ctx.tfs_metrics.path:
        paths[ctx.tfs_metrics.path] = {"get": {"summary": "TF Serving's metrics", "responses": {**plain, **_errors(401)}}}
    return {"openapi": "3.0.3", "info": {"title": f"modelkeep serve: {', '.join(ctx.managers)}", "version": "1"}, "paths": paths}
