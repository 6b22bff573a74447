"""TensorFlow's checkpoint protobuf messages, without importing TensorFlow.

``tensorflow.core.protobuf.*_pb2`` lives inside the ``tensorflow`` package, so importing it runs
TensorFlow's ``__init__`` (seconds). The messages a checkpoint needs are few and small; this
module declares them again, field for field (same numbers, types and names as TensorFlow's
``.proto`` files, proto3), in a private descriptor pool, and parses them with the ``protobuf``
runtime TensorFlow itself uses: a message parses here exactly when it parses there.

* ``BundleHeaderProto``, ``BundleEntryProto`` (``tensor_bundle.proto``, with ``TensorShapeProto``,
  ``TensorSliceProto``, ``VersionDef``): the values of a bundle's ``.index`` table;
* ``TrackableObjectGraph`` (``trackable_object_graph.proto``): the ``_CHECKPOINTABLE_OBJECT_GRAPH``
  tensor;
* ``CheckpointState`` (``checkpoint_state.proto``): the text of a directory's ``checkpoint`` file.

The pool is private, so nothing collides with TensorFlow's own classes when both are loaded.

Example::

    entry = message("BundleEntryProto")
    entry.ParseFromString(value)          # google.protobuf.message.DecodeError if malformed
    entry.dtype, [d.size for d in entry.shape.dim], entry.offset, entry.size
"""

from __future__ import annotations

from functools import cache
from typing import Any

_PACKAGE = "modelkeep_tf"
_O, _R = 1, 3  # LABEL_OPTIONAL, LABEL_REPEATED
_TYPES = {"double": 1, "int64": 3, "int32": 5, "fixed32": 7, "bool": 8, "string": 9, "message": 11, "bytes": 12}

#: message -> [(field name, number, type, label, message type or None)], as in TensorFlow's protos
#: (enum fields declared int32: the same varint on the wire, and proto3 enums are open)
MESSAGES: dict[str, list[tuple[str, int, str, int, str | None]]] = {
    "VersionDef": [("producer", 1, "int32", _O, None), ("min_consumer", 2, "int32", _O, None),
                   ("bad_consumers", 3, "int32", _R, None)],
    "Dim": [("size", 1, "int64", _O, None), ("name", 2, "string", _O, None)],
    "TensorShapeProto": [("dim", 2, "message", _R, "Dim"), ("unknown_rank", 3, "bool", _O, None)],
    "Extent": [("start", 1, "int64", _O, None), ("length", 2, "int64", _O, None)],
    "TensorSliceProto": [("extent", 1, "message", _R, "Extent")],
    "BundleHeaderProto": [("num_shards", 1, "int32", _O, None), ("endianness", 2, "int32", _O, None),
                          ("version", 3, "message", _O, "VersionDef")],
    "BundleEntryProto": [("dtype", 1, "int32", _O, None), ("shape", 2, "message", _O, "TensorShapeProto"),
                         ("shard_id", 3, "int32", _O, None), ("offset", 4, "int64", _O, None),
                         ("size", 5, "int64", _O, None), ("crc32c", 6, "fixed32", _O, None),
                         ("slices", 7, "message", _R, "TensorSliceProto")],
    "ObjectReference": [("node_id", 1, "int32", _O, None), ("local_name", 2, "string", _O, None)],
    "SerializedTensor": [("name", 1, "string", _O, None), ("full_name", 2, "string", _O, None),
                         ("checkpoint_key", 3, "string", _O, None), ("optional_restore", 4, "bool", _O, None)],
    "SlotVariableReference": [("original_variable_node_id", 1, "int32", _O, None), ("slot_name", 2, "string", _O, None),
                              ("slot_variable_node_id", 3, "int32", _O, None)],
    "RegisteredSaver": [("name", 1, "string", _O, None), ("object_name", 2, "string", _O, None)],
    "BoolValue": [("value", 1, "bool", _O, None)],
    "TrackableObject": [("children", 1, "message", _R, "ObjectReference"),
                        ("attributes", 2, "message", _R, "SerializedTensor"),
                        ("slot_variables", 3, "message", _R, "SlotVariableReference"),
                        ("registered_saver", 4, "message", _O, "RegisteredSaver"),
                        ("has_checkpoint_values", 5, "message", _O, "BoolValue")],
    "TrackableObjectGraph": [("nodes", 1, "message", _R, "TrackableObject")],
    "CheckpointState": [("model_checkpoint_path", 1, "string", _O, None),
                        ("all_model_checkpoint_paths", 2, "string", _R, None),
                        ("all_model_checkpoint_timestamps", 3, "double", _R, None),
                        ("last_preserved_timestamp", 4, "double", _O, None)],
}


@cache
def _classes() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="modelkeep_tf_checkpoint.proto", package=_PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=_TYPES[kind], label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in MESSAGES}


def message(name: str) -> Any:
    """An empty message of one of :data:`MESSAGES` (``message("BundleEntryProto")``)."""
    return _classes()[name]()


def parse(name: str, data: bytes) -> Any:
    """``data`` parsed as message ``name``; ``google.protobuf.message.DecodeError`` if malformed."""
    out = message(name)
    out.ParseFromString(data)
    return out


__all__ = ["MESSAGES", "message", "parse"]
