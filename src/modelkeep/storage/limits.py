"""Every cap modelkeep applies to untrusted files, in one place.

``storage.guard`` reads them through ``current()``; nothing else hard-codes a size limit for
reading. The defaults admit every file Keras, tf-keras and modelkeep write (uncompressed
weights, configs of a few MB) and refuse the bombs of SECURITY.md. ``override`` changes them
for a block (a very large model, a test)::

    with limits.override(max_json_bytes=1 << 30):
        mk.load_model("huge.keras")
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """The caps; sizes in bytes."""

    #: JSON documents: manifests, ``modelkeep.json``, ``config.json``, headers in attributes
    max_json_bytes: int = 64 * MiB
    #: nesting of JSON arrays/objects (a Keras config nests ~20 deep)
    max_json_depth: int = 100
    #: the ``checkpoint`` state file TensorFlow writes (a few hundred bytes)
    max_state_file_bytes: int = 1 * MiB
    #: safetensors JSON header (the format's own spec says 100 MB)
    max_safetensors_header: int = 100_000_000
    #: ``saved_model.pb``, ``keras_metadata.pb``, ``fingerprint.pb`` (protobuf's own limit is 2 GiB)
    max_protobuf_bytes: int = 2 * GiB - 1
    #: members of a zip archive (.keras)
    max_zip_members: int = 10_000
    #: a zip member declaring more than this, and more than ``max_zip_expansion`` times its
    #: compressed size, is a decompression bomb (Keras writes members stored, ratio 1)
    zip_bomb_floor: int = 64 * MiB
    max_zip_expansion: int = 100
    #: one zip member read into memory (config.json, a safetensors member)
    max_member_read: int = 1 * GiB
    #: HDF5 objects (groups + datasets + committed types) in one file
    max_h5_objects: int = 200_000
    #: one HDF5 attribute (``model_config`` of a large model is a few MB)
    max_h5_attr_bytes: int = 64 * MiB
    #: a dataset declaring more than this, and more than ``max_h5_expansion`` times the bytes
    #: it stores, is a shape or compression bomb (Keras writes datasets uncompressed)
    h5_bomb_floor: int = 64 * MiB
    max_h5_expansion: int = 200
    #: every dataset of a file together: at most this many times the file's size (plus the floor)
    max_h5_total_expansion: int = 200
    #: HDF5 filters a dataset may use (deflate, shuffle, fletcher32, szip, lzf); others
    #: (scale-offset, n-bit, plugins) can inflate without bound or run plugin code
    h5_filters: frozenset[int] = frozenset({1, 2, 3, 4, 32000})
    #: tensors in one TF checkpoint
    max_tf_tensors: int = 1_000_000
    #: the keys of a TF checkpoint's ``.index`` (prefix-compressed) together: at most this many
    #: times the index's size (plus 1 MiB); more is a key-expansion bomb
    max_tf_key_expansion: int = 16
    #: entries walked in a SavedModel or checkpoint directory
    max_tree_entries: int = 100_000


_DEFAULT = Limits()
_local = threading.local()


def current() -> Limits:
    """The caps in force (the defaults unless ``override`` is active in this thread)."""
    return getattr(_local, "limits", _DEFAULT)


@contextlib.contextmanager
def override(**changes: object) -> Iterator[Limits]:
    """Change some caps for the block, in this thread. Example: ``override(h5_bomb_floor=1 << 34)``."""
    previous = current()
    _local.limits = dataclasses.replace(previous, **changes)
    try:
        yield _local.limits
    finally:
        _local.limits = previous
