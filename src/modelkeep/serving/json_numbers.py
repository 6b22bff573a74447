"""A large numeric predict body read straight into NumPy, with no Python list or float made.

``{"instances": [[[...]]]}`` of 32 images of 32x32x3 is 98,304 numbers in 33,000 nested
lists: orjson makes those objects (20 ms for 2 MB here) and ``np.asarray`` walks them again
(17 ms). simdjson (``pysimdjson``, strict RFC 8259, numbers read exactly as a correctly
rounded ``strtod``) parses the same bytes and hands every number to one float64 buffer
(``Array.as_buffer``) in about 4 ms.

``as_buffer`` flattens whatever nesting it finds, so regularity is proven from the bytes: with
every number, blank and sign deleted, a body of shape ``(n, a, b)`` must be exactly the
skeleton ``{"instances":[[[,,],...],...]}`` (``e`` deleted from the key as well), which no
ragged array, bool, string, null, second key, nested object or byte-order mark matches; the
one key is then read back by name (a blank or digit in a key would vanish from the skeleton).
Anything else returns None and takes the general way (orjson, ``numeric_request``, the
general path and its error texts), so this path changes only the cost: the arrays are the ones
``numeric_request`` gives (``tests/test_serving_fastpath.py`` compares them byte for byte).

Example::

    read_numeric_body(b'{"instances": [[1.0, 2.0, 3.0]]}', predictor)   # (sig, {"x": (1, 3) float32}, True)
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np

from modelkeep.serving.tensors import finish_numeric, fits_numeric_target, numeric_target

try:
    import simdjson
except ImportError:  # the serve extra installs it; without it every body goes the general way
    simdjson = None

#: What a skeleton keeps: brackets, braces, commas, quotes, colons and any other character.
_NUMBER_BYTES = b"0123456789.eE+- \t\n\r"
_KEYS = {"instances": True, "inputs": False}  # key -> row form
_HEADS = {key: b'{"' + key.encode().translate(None, _NUMBER_BYTES) + b'":' for key in _KEYS}
_CACHED_SKELETON_BYTES = 1 << 20  # larger skeletons are made again each time: a client cannot fill memory
_local = threading.local()  # a simdjson parser holds one document at a time: one per thread


def available() -> bool:
    """Whether simdjson is installed (the serve extra brings it)."""
    return simdjson is not None


def read_numeric_body(
    raw: bytes, predictor: Any, *, allow_non_finite: bool = False
) -> tuple[Any, dict[str, np.ndarray], bool] | None:
    """``(signature, {key: array}, row_form)`` for a ``{"instances"|"inputs": <numbers>}`` body of
    the predictor's one float input, as ``numeric_request`` gives it; None for anything else."""
    if simdjson is None:
        return None
    target = numeric_target(predictor)
    if target is None:
        return None
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        document = parser.parse(raw)
        if not isinstance(document, simdjson.Object) or len(document) != 1:
            return None
        (key,) = document.keys()
        row_form = _KEYS.get(key)
        value = document[key]
        if row_form is None or not isinstance(value, simdjson.Array):
            return None
        shape = _first_shape(value)
        if shape is None or not fits_numeric_target(shape, target):
            return None
        if 2 * math.prod(shape) > len(raw):  # each number takes a digit and a comma: a ragged body
            return None  # whose first elements claim more values than its bytes hold is not regular
        if raw.translate(None, _NUMBER_BYTES) != _HEADS[key] + _array_skeleton(shape) + b"}":
            return None
        flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError, IndexError, UnicodeError):
        return None  # not strict JSON, a bool or a string among the numbers, an integer beyond 64 bits
    if flat.size != math.prod(shape):
        return None
    return finish_numeric(flat.reshape(shape), target, row_form, allow_non_finite=allow_non_finite)


def _first_shape(value: Any) -> tuple[int, ...] | None:
    """The sizes along the first element at every depth; None where a list is empty."""
    shape = []
    while isinstance(value, simdjson.Array):
        if len(value) == 0:
            return None
        shape.append(len(value))
        value = value[0]
    return tuple(shape)


def _array_skeleton(shape: tuple[int, ...]) -> bytes:
    """``[[,],[,]]`` for shape (2, 2): a regular array of that shape with its numbers deleted."""
    size = math.prod(shape) * 2
    return _cached_skeleton(shape) if size <= _CACHED_SKELETON_BYTES else _make_skeleton(shape)


@functools.lru_cache(maxsize=64)
def _cached_skeleton(shape: tuple[int, ...]) -> bytes:
    return _make_skeleton(shape)


def _make_skeleton(shape: tuple[int, ...]) -> bytes:
    inner = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        inner = b"[" + b",".join([inner] * size) + b"]"
    return inner
