"""The OpenAPI 3 document of the REST API (served at ``/openapi.json``), per served model.

It says exactly what the server accepts, so that a schema-driven tester (Schemathesis with
``--checks all``) finds every schema-valid request accepted and every invalid one refused:

* ``:predict`` takes, per signature (``signature_name`` one of its keys, absent or ``""`` for
  ``serving_default``), the row form (``instances``) and, for one-input signatures, the columnar
  form (``inputs``, bare or keyed by the input's name), each value a nested list of the
  input's rank whose known dimensions have exactly that many items, of numbers (float32
  within its range), integers (within the dtype's range), booleans, or strings /
  ``{"b64": ...}``; classify and regress signatures (serialized ``tf.Example`` inputs) are
  left to ``:classify`` / ``:regress``;
* ``:classify`` / ``:regress`` are listed only when the model has a signature they can run,
  with the ``tf.Example`` features its ``ParseExample`` op reads (TF1 graphs: names, types,
  lengths, which are required);
* ``/labels/{label}`` paths only when the model has labels (the label one of them);
* every answer status the server gives is declared; errors are ``{"error": text}``.

``modelkeep serve`` answers a GET to a POST route (and the reverse) with 405 and ``Allow``,
which the document leaves undeclared; ``modelkeep-model-server`` answers 400 "Malformed
request" there, as TF Serving does, and the document declares those 400s.

Example::

    doc = openapi_document(ctx)
    sorted(doc["paths"])      # ['/healthz', ..., '/v1/models/half:predict', ...]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkeep.serving.protocol import tf_serving_exact
from modelkeep.serving.signature import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, STRING

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TEXT = {400: "bad input, or TF Serving's 'Malformed request'", 401: "missing or wrong bearer token",
         404: "unknown model or version, or none loaded yet", 413: "body over --max-request-bytes", 429: "resource exhausted",
         500: "internal error", 503: "not ready: no version loaded yet"}
# canonical base64, padding optional (the server also takes a few non-canonical paddings)
B64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$"
_B64 = {"type": "object", "properties": {"b64": {"type": "string", "pattern": B64_PATTERN}},
        "required": ["b64"], "additionalProperties": False}
# the smallest magnitude that rounds to infinity (finite below it: the server refuses infinities)
_FLOAT_LIMIT = {np.dtype(np.float16): 65520.0, np.dtype(np.float32): 3.4028235677973366e38}
_INT64 = (-(2**63), 2**63 - 1)


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": _TEXT[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _leaf(dtype: np.dtype, finite: bool = True) -> dict[str, Any]:
    if dtype == STRING:
        return {"anyOf": [{"type": "string"}, _B64]}
    kind = dtype.kind
    if kind == "f":
        top = _FLOAT_LIMIT.get(dtype) if finite else None  # --allow-non-finite: overflow to inf is accepted
        bounds = {"minimum": -top, "exclusiveMinimum": True, "maximum": top, "exclusiveMaximum": True} if top else {}
        return {"type": "number", **bounds}
    if kind in "iu":
        info = np.iinfo(dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    return {"type": "boolean"}


def _nested(leaf: dict[str, Any], dims: tuple[int | None, ...], batch: bool = False) -> dict[str, Any]:
    """Arrays of ``dims`` around ``leaf``: known sizes exact; an unknown one at least 1, except
    the innermost, which may be empty (an empty list higher up would lower the rank), and not a
    Keras batch (``batch``: the first dimension is one, never empty)."""
    schema = leaf
    for i in reversed(range(len(dims))):
        size = dims[i]
        if size is not None:
            bounds = {"minItems": size, "maxItems": size}
        else:
            bounds = {"minItems": 0 if i == len(dims) - 1 and not (batch and i == 0) else 1}
        schema = {"type": "array", "items": schema, **bounds}
    return schema


def _form(key: str, default: bool, field: str, value: dict[str, Any]) -> dict[str, Any]:
    """One body form: other top-level keys are ignored (as TF Serving ignores them), but not the other form's."""
    names = ["", DEFAULT_SIGNATURE] if default else [key]
    other = "inputs" if field == "instances" else "instances"
    return {
        "type": "object",
        "properties": {"signature_name": {"type": "string", "enum": names}, field: value},
        "required": [field] if default else [field, "signature_name"],
        "not": {"required": [other]},
    }


def _predictable(signature: Any) -> bool:
    return bool(signature.inputs) and signature.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD)


def _signature_forms(signature: Any, default: bool, finite: bool) -> list[dict[str, Any]]:
    specs = signature.inputs
    if any(s.shape is None or len(s.shape) == 0 for s in specs.values()):
        # unknown rank or scalars: the columnar form with one input, as a flat value
        if len(specs) != 1:
            return []
        (key, spec), = specs.items()
        leaf = _leaf(spec.dtype, finite)
        value = {"anyOf": [leaf, {"type": "array", "items": leaf}]} if spec.shape is None else leaf
        return [_form(signature.key, default, "inputs", value)]
    rows = {k: _nested(_leaf(s.dtype, finite), s.shape[1:]) for k, s in specs.items()}
    columns = {k: _nested(_leaf(s.dtype, finite), s.shape, batch=signature.strict_shapes) for k, s in specs.items()}
    keyed = {"type": "object", "properties": rows, "required": sorted(specs), "additionalProperties": False}
    forms = [_form(signature.key, default, "instances", {"type": "array", "minItems": 1, "items": keyed})]
    if len(specs) == 1:
        (key,) = specs
        forms.append(_form(signature.key, default, "instances", {"type": "array", "minItems": 1, "items": rows[key]}))
        keyed_column = {"type": "object", "properties": columns, "required": [key]}  # other keys: ignored
        forms.append(_form(signature.key, default, "inputs", {"anyOf": [columns[key], keyed_column]}))
    return forms


def predict_schema(predictor: Any, finite: bool = True) -> dict[str, Any] | None:
    """The ``:predict`` body: one alternative per signature and form; None if nothing is predictable."""
    forms = []
    for key, signature in sorted(predictor.signatures.items()):
        if _predictable(signature):
            forms.extend(_signature_forms(signature, key == DEFAULT_SIGNATURE, finite))
    if not forms:
        return None
    names = sorted(k for k, s in predictor.signatures.items() if _predictable(s))
    return {"anyOf": forms, "description": f"exactly one of 'instances' or 'inputs'; signatures {names}"}


# ---------------------------------------------------------------- classify / regress
def _parse_spec(predictor: Any, tensor_name: str) -> dict[str, tuple[np.dtype, int, bool]] | None:
    """``{feature: (dtype, values per example, required)}`` from the TF1 graph's ParseExampleV2 of
    ``tensor_name``; None when it cannot be read (not a TF1 graph, another parser, sparse features)."""
    graph = getattr(getattr(predictor, "model", None), "graph", None)
    if not predictor.tf1 or graph is None:
        return None
    try:
        import tensorflow as tf

        consumers = graph.get_tensor_by_name(tensor_name).consumers()
        ops = [op for op in consumers if op.type == "ParseExampleV2"]
        if len(ops) != 1 or len(consumers) != 1:
            return None
        op = ops[0]
        if op.get_attr("num_sparse") or op.get_attr("ragged_value_types"):
            return None
        keys = tf.make_ndarray(op.inputs[3].op.get_attr("value")).reshape(-1)
        dtypes, shapes = op.get_attr("Tdense"), op.get_attr("dense_shapes")
        spec = {}
        for i, key in enumerate(keys):
            size = int(np.prod([d.size for d in shapes[i].dim])) if shapes[i].dim else 1
            default = op.inputs[5 + i]
            required = default.op.type == "Const" and tf.make_ndarray(default.op.get_attr("value")).size == 0
            spec[key.decode()] = (np.dtype(tf.as_dtype(dtypes[i]).as_numpy_dtype), size, required)
        return spec
    except Exception:  # noqa: BLE001 - an unreadable graph: the operation is not listed
        return None


def _feature_leaf(kind: str) -> dict[str, Any]:
    if kind == "f":  # a JSON number with a fraction is a float_list; a whole one is int64 (uint64 refused),
        # and a whole one beyond 64 bits is read as a double, as TF Serving's parser reads it
        return {"type": "number", "not": {"type": "integer", "minimum": _INT64[0], "maximum": 2**64 - 1}}
    if kind in "iu":
        return {"anyOf": [{"type": "integer", "minimum": _INT64[0], "maximum": _INT64[1]}, {"type": "boolean"}]}
    return {"anyOf": [{"type": "string"}, _B64]}


def _feature(dtype: np.dtype, size: int) -> dict[str, Any]:
    leaf = _feature_leaf(dtype.kind)
    array = {"type": "array", "items": leaf, "minItems": size, "maxItems": size}
    return {"anyOf": [leaf, array]} if size == 1 else array


# a feature the parser does not read: any value that makes a tf.Example feature
_ANY_FEATURE = {"anyOf": [x for k in "fiO" for x in (_feature_leaf(k), {"type": "array", "items": _feature_leaf(k)})]}
_EMPTY = {"type": "array", "maxItems": 0}  # an empty feature: the context's value stands


def _capable(predictor: Any, signature: Any, method: str) -> bool:
    inputs, outputs = signature.inputs, set(signature.outputs)
    if set(inputs) != {"inputs"} or inputs["inputs"].dtype != STRING:
        return False
    if predictor.tf1 and signature.method_name != method:
        return False
    if method == CLASSIFY_METHOD:
        return 1 <= len(outputs) <= 2 and bool(outputs & {"classes", "scores"}) and outputs <= {"classes", "scores"}
    return outputs == {"outputs"}


def examples_schema(predictor: Any, method: str) -> dict[str, Any] | None:
    """The ``:classify`` or ``:regress`` body, or None when no signature can run it (or its
    features cannot be read from the graph)."""
    forms = []
    for key, signature in sorted(predictor.signatures.items()):
        if not _capable(predictor, signature, method):
            continue
        spec = _parse_spec(predictor, signature.inputs["inputs"].tensor_name)
        if spec is None:
            continue
        features = {name: _feature(dtype, size) for name, (dtype, size, _) in spec.items()}
        required = sorted(name for name, (_, _, req) in spec.items() if req)
        default = key == DEFAULT_SIGNATURE
        # the required features in every example, or all of them in the context (merged into each)
        for in_context in ([False, True] if required else [False]):
            own = {n: {"anyOf": [f, _EMPTY]} for n, f in features.items()} if in_context else features
            example = {"type": "object", "properties": own, "required": [] if in_context else required,
                       "additionalProperties": _ANY_FEATURE}
            # without the features in the context, every example's own override it: any feature goes
            context = ({"type": "object", "properties": features, "additionalProperties": _ANY_FEATURE, "required": required}
                       if in_context else {"type": "object", "additionalProperties": _ANY_FEATURE})
            forms.append({
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string", "enum": ["", key] if default else [key]},
                    "context": context,
                    "examples": {"type": "array", "minItems": 1, "items": example},
                },
                "required": (["examples"] if default else ["examples", "signature_name"]) + (["context"] if in_context else []),
            })
    return {"anyOf": forms} if forms else None


# ---------------------------------------------------------------- paths
def _post(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    ok = {"description": "the answer; header X-Model-Version", "headers": {"X-Model-Version": {"schema": {"type": "string"}}},
          "content": {"application/json": {"schema": {"type": "object"}}}}
    return {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {"200": ok, **_errors(400, 401, 404, 413, 429, 500)}}


def _get(summary: str) -> dict[str, Any]:
    ok = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {"summary": summary, "responses": {"200": ok, **_errors(400, 401, 404)}}


def _malformed(verb: str) -> dict[str, Any]:
    return {verb: {"summary": f"TF Serving answers a {verb.upper()} here with 400 'Malformed request'",
                   "responses": _errors(400, 401)}}


def _model_paths(name: str, predictor: Any | None, labels: list[str], exact: bool, finite: bool) -> dict[str, Any]:
    posts: dict[str, dict[str, Any] | None] = {"predict": {"type": "object"}}
    if predictor is not None:
        posts = {"predict": predict_schema(predictor, finite), "classify": examples_schema(predictor, CLASSIFY_METHOD),
                 "regress": examples_schema(predictor, REGRESS_METHOD)}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": _INT64[1]}}
    label = {"name": "label", "in": "path", "required": True, "schema": {"type": "string", "enum": labels}}
    base = f"/v1/models/{name}"
    prefixes = [(base, []), (f"{base}/versions/{{version}}", [version])]
    if labels:
        prefixes.append((f"{base}/labels/{{label}}", [label]))
    paths: dict[str, Any] = {}
    for prefix, params in prefixes:
        def add(path: str, ops: dict[str, Any], params: list = params) -> None:
            paths[path] = {m: {**op, "parameters": params} if params else op for m, op in ops.items()}

        for method, schema in posts.items():
            if schema is not None:
                add(f"{prefix}:{method}", {"post": _post(f"{method} (TF Serving REST API)", schema),
                                           **(_malformed("get") if exact else {})})
        add(prefix, {"get": _get("Model version status (GetModelStatusResponse JSON)"), **(_malformed("post") if exact else {})})
        add(f"{prefix}/metadata", {"get": _get("Signature defs (GetModelMetadataResponse JSON)"),
                                   **(_malformed("post") if exact else {})})
    return paths


def openapi_document(ctx: Any) -> dict[str, Any]:
    """OpenAPI 3.0 description of every route, for every model ``ctx`` serves."""
    plain = {"200": {"description": "ok"}}
    exact = tf_serving_exact(ctx)
    paths: dict[str, Any] = {}
    for name, manager in ctx.managers.items():
        latest = manager.latest
        labels = sorted(ctx.labels.get(name, {}))
        predictor = latest.predictor if latest is not None else None
        paths.update(_model_paths(name, predictor, labels, exact, not ctx.allow_non_finite))
    paths.update({
        "/healthz": {"get": {"summary": "alive (no token needed)", "responses": plain}},
        "/readyz": {"get": {"summary": "every model has a version loaded", "responses": {**plain, **_errors(401, 503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {**plain, **_errors(401)}}},
        "/openapi.json": {"get": {"summary": "this document", "responses": {**plain, **_errors(401)}}},
    })
    if ctx.tfs_metrics is not None and ctx.tfs_metrics.path:
        paths[ctx.tfs_metrics.path] = {"get": {"summary": "TF Serving's metrics", "responses": {**plain, **_errors(401)}}}
    return {"openapi": "3.0.3", "info": {"title": f"modelkeep serve: {', '.join(ctx.managers)}", "version": "1"}, "paths": paths}
