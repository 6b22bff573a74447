"""The fast request path of ``modelkeep serve`` gives what the general path gives.

* ``numeric_request`` (one ``np.asarray`` of the request's lists) against
  ``parse_predict_json`` + ``Predictor.prepare`` on the same bodies, array for array, and
  None (the general path, with its error texts) for everything it does not take;
* orjson request parsing with the stdlib behind it: NaN/Infinity still read, the same
  error texts, integers beyond 64 bits read as doubles (as TF Serving's rapidjson does);
* gRPC ``tensor_content`` read as a view of the bytes, equal to ``tf.make_ndarray``;
* the heap frozen once a version is loaded, a retired version's cycles collected.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelkeep.serving import batching
from modelkeep.serving.protocol import parse_predict_json
from modelkeep.serving.rest import _parse_json
from modelkeep.serving.signature import ServingError
from modelkeep.serving.tensors import numeric_request, proto_to_array


@pytest.fixture(scope="module")
def predictor():
    import keras

    from modelkeep.serving.predictor import Predictor

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    return Predictor.from_model(model)


def _general(body, predictor, allow_non_finite=False):
    signature, raw, row_form = parse_predict_json(body, predictor)
    return signature, predictor.prepare(signature, raw, allow_non_finite=allow_non_finite), row_form


@pytest.mark.parametrize("body", [
    {"instances": [[1.5, -2.25, 3.0]]},
    {"instances": [[1, 2, 3], [4, 5, 6]]},  # ints: int -> float64 -> float32, as the general path
    {"instances": [[16777217, 2**53 + 1, -(2**31)]]},  # where a direct int -> float32 cast would differ
    {"instances": [[0.1, 2, 1e-30], [3.4e38, -0.0, 7]]},
    {"inputs": [[1.0, 2.0, 3.0]]},
])
def test_numeric_request_gives_the_general_paths_arrays(body, predictor):
    fast = numeric_request(json.loads(json.dumps(body)), predictor)
    assert fast is not None
    signature, named, row_form = fast
    want_sig, want, want_rows = _general(body, predictor)
    assert signature is want_sig and row_form == want_rows and named.keys() == want.keys()
    for key in named:
        assert named[key].dtype == want[key].dtype == np.float32
        assert named[key].tobytes() == want[key].tobytes()


@pytest.mark.parametrize("body", [
    {"instances": [[True, False, True]]},  # bools: the general path refuses them by name
    {"instances": [[False, 0.5, 2.0]]},  # a bool among floats: NumPy would read it as 0.0
    {"instances": [[2.0, True, 3.0]]},
    {"instances": [["1", "2", "3"]]},
    {"instances": [[1.0, 2.0], [1.0, 2.0, 3.0]]},  # ragged
    {"instances": [[1.0, 2.0]]},  # wrong width
    {"instances": [1.0, 2.0, 3.0]},  # wrong rank
    {"instances": [[1.0, 2.0, 3e39]]},  # beyond float32
    {"instances": [[1.0, 2.0, math.nan]]},
    {"instances": [{"keras_tensor": [1.0, 2.0, 3.0]}]},
    {"instances": []},
    {"instances": [[1.0, 2.0, 3.0]], "signature_name": "serving_default"},
    {"inputs": {"x": [[1.0, 2.0, 3.0]]}},
    [[1.0, 2.0, 3.0]],
])
def test_numeric_request_leaves_everything_else_to_the_general_path(body, predictor):
    assert numeric_request(body, predictor) is None


def test_non_finite_values_take_the_fast_path_only_when_allowed(predictor):
    body = {"instances": [[1.0, math.inf, 3.0]]}
    assert numeric_request(body, predictor) is None
    _, named, _ = numeric_request(body, predictor, allow_non_finite=True)
    _, want, _ = _general(body, predictor, allow_non_finite=True)
    (key,) = named
    assert named[key].tobytes() == want[key].tobytes()


def test_request_json_reads_what_the_stdlib_read():
    assert _parse_json(b'{"instances": [[1.5, 2]]}') == {"instances": [[1.5, 2]]}
    got = _parse_json(b'{"instances": [[NaN, Infinity, -Infinity]]}')  # beyond RFC 8259: TF Serving reads it
    row = got["instances"][0]
    assert math.isnan(row[0]) and row[1] == math.inf and row[2] == -math.inf
    assert _parse_json(b'[1e400]') == [math.inf]
    assert _parse_json('{"s": "\u00e9"}'.encode("utf-16")) == {"s": "\u00e9"}
    big = _parse_json(b"[18446744073709551616]")[0]  # 2**64: a double, as rapidjson reads it
    assert isinstance(big, float) and big == 2.0**64


@pytest.mark.parametrize("raw,expected", [
    (b"", "JSON Parse error: The document is empty"),
    (b"   ", "JSON Parse error: The document is empty"),
    (b'{"instances": [1, 2', "JSON Parse error: Invalid value. at offset: "),
    (b"[" * 100_000, "JSON Parse error: nesting too deep"),
])
def test_request_json_errors_keep_their_texts(raw, expected):
    with pytest.raises(ServingError) as info:
        _parse_json(raw)
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.message.startswith(expected)
    if b"instances" in raw:
        try:
            json.loads(raw)
        except json.JSONDecodeError as exc:
            assert info.value.message == f"JSON Parse error: Invalid value. at offset: {exc.pos} (modelkeep: {exc.msg})"


def test_tensor_content_is_read_as_a_view_equal_to_make_ndarray():
    import tensorflow as tf

    from modelkeep.serving.signature import TensorSpec

    x = np.random.default_rng(0).random((4, 3, 2), dtype=np.float32)
    proto = tf.make_tensor_proto(x)
    assert proto.tensor_content
    got = proto_to_array(proto, TensorSpec("x", np.dtype("float32"), (None, 3, 2), "x:0"), 0)
    assert got.tobytes() == tf.make_ndarray(proto).tobytes() and got.shape == x.shape
    assert not got.flags.owndata and not got.flags.writeable  # a view of the message's bytes
    ints = tf.make_tensor_proto(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert proto_to_array(ints, TensorSpec("i", np.dtype("int64"), (None, 3), "i:0"), 0).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tf.make_tensor_proto(x)
    short.tensor_content = short.tensor_content[:-4]  # one float short: refused as before
    with pytest.raises(ServingError, match="cannot be decoded"):
        proto_to_array(short, TensorSpec("x", np.dtype("float32"), (None, 3, 2), "x:0"), 0)


class _Node:
    pass


def test_heap_frozen_at_start_and_a_retired_versions_cycles_collected():
    gc.disable()  # no collection of our own between the steps
    try:
        node = _Node()
        node.me = node  # a cycle: only the collector frees it
        ref = weakref.ref(node)
        del node

        async def scenario():
            batcher = batching.MicroBatcher(lambda arrays: arrays)
            batcher.start()
            assert gc.get_freeze_count() > 0
            gc.collect()  # frozen: the cycle survives a full collection
            assert ref() is not None
            await batcher.close()  # the server goes on: one collection, then freeze again

        asyncio.run(scenario())
        assert ref() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_zeros_and_ones_take_the_fast_path_unless_a_bool_may_be_there(predictor):
    """0 and 1 among the numbers: the lists are walked for a JSON bool only when the request's
    bytes held `true`/`false` (REST says which); a real bool always goes the general way."""
    body = {"instances": [[1.0, 0.0, 1.0]]}
    for has_bool in (None, True, False):
        _, named, _ = numeric_request(body, predictor, has_bool=has_bool)
        _, want, _ = _general(body, predictor)
        (key,) = named
        assert named[key].tobytes() == want[key].tobytes()
    assert numeric_request({"instances": [[1.0, False, 1.0]]}, predictor, has_bool=True) is None


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_numeric_request_takes_finite_values_whose_sum_overflows(predictor):
    body = {"instances": [[3.0e38, 3.0e38, 3.0e38], [-3.4e38, 1.0, 2.0]]}  # float32 sum: inf; every value finite
    fast = numeric_request(body, predictor)
    assert fast is not None
    _, want, _ = _general(body, predictor)
    for key in want:
        assert fast[1][key].tobytes() == want[key].tobytes()
    assert numeric_request({"instances": [[1.0, -math.inf, 2.0]]}, predictor) is None  # (stdlib-parsed -Infinity)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (0, 1), (2, 5), (0, 4), (40, 1), (7, 6), (1, 40)])
def test_one_output_answers_format_as_the_general_writer(shape):
    from modelkeep.serving.tensors import _leaves, _nest, predict_json, tensor_json

    rng = np.random.default_rng(sum(shape))
    values = (rng.standard_normal(shape) * 10.0 ** rng.integers(-45, 39, shape)).astype(np.float32)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 16777216.0, 1e-45, 3.4028235e38, 0.1]
    flat = values.reshape(-1)
    flat[: min(len(special), flat.size)] = special[: flat.size]
    want = _nest(_leaves(values, "y"), values.shape)
    assert tensor_json(values, "y") == want
    assert predict_json({"y": values}, row_form=True) == '{"predictions":' + want + "}"
    assert predict_json({"y": values}, row_form=False) == '{"outputs":' + want + "}"
    if values.size >= 3:
        assert "NaN" in want and "Infinity" in want and "-Infinity" in want


# ------------------------------------------------------------------ numbers straight into NumPy
def _direct(raw: bytes, predictor, allow_non_finite=False):
    from modelkeep.serving import json_numbers

    if not json_numbers.available():
        pytest.skip("pysimdjson is not installed (the serve extra brings it)")
    return json_numbers.read_numeric_body(raw, predictor, allow_non_finite=allow_non_finite)


def _same(direct, fast) -> None:
    assert direct is not None and fast is not None
    assert direct[0] is fast[0] and direct[2] == fast[2] and direct[1].keys() == fast[1].keys()
    for key in direct[1]:
        assert direct[1][key].dtype == fast[1][key].dtype and direct[1][key].shape == fast[1][key].shape
        assert direct[1][key].tobytes() == fast[1][key].tobytes()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.one_of(st.floats(width=64, allow_nan=False, allow_infinity=False),
                                     st.integers(-(2**63), 2**63 - 1)), min_size=3, max_size=3), min_size=1, max_size=6),
    writer=st.sampled_from(["json", "compact", "spaced"]),
    key=st.sampled_from(["instances", "inputs"]),
)
def test_direct_numbers_are_numeric_requests_arrays(rows, writer, key, predictor):
    """Any finite doubles or 64-bit integers, however the JSON is spaced: the bytes of the
    arrays ``numeric_request`` makes from the parsed lists, or both take the general way."""
    body = {key: rows}
    raw = {"json": json.dumps(body), "compact": json.dumps(body, separators=(",", ":")),
           "spaced": json.dumps(body, indent=2).replace(",", " ,\t")}[writer].encode()
    fast = numeric_request(_parse_json(raw), predictor)
    direct = _direct(raw, predictor)
    if fast is None:  # beyond float32 (not finite): both refuse; the general path words it
        assert direct is None
    else:
        _same(direct, fast)


def test_direct_numbers_of_images(tmp_path):
    """The CNN shape the serving benchmark sends: 4 axes, 32 rows, the same bytes."""
    import keras

    from modelkeep.serving.predictor import Predictor

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3), keras.layers.Flatten()])
    predictor = Predictor.from_model(model)
    x = np.random.default_rng(1).random((32, 8, 8, 3)).astype(np.float32)
    raw = json.dumps({"instances": x.tolist()}).encode()
    direct = _direct(raw, predictor)
    _same(direct, numeric_request(_parse_json(raw), predictor))
    assert np.array_equal(direct[1][next(iter(direct[1]))], x)
    ragged = json.dumps({"instances": [x[0].tolist(), x[1, :7].tolist()]}).encode()
    assert _direct(ragged, predictor) is None


def test_direct_numbers_believe_no_size_the_bytes_cannot_hold():
    """First elements that claim more values than the body has bytes for (here 5000 x 5000 x 4
    from a 140 KB body): refused before a skeleton of that size is made."""
    import tracemalloc

    import keras

    from modelkeep.serving.predictor import Predictor

    wide = Predictor.from_model(keras.Sequential([keras.Input((None, 4)), keras.layers.Dense(1)]))
    first = b"[" + b",".join([b"[1,1,1,1]"] * 5000) + b"]"
    raw = b'{"instances": [' + first + b"," + b",".join([b"[[1,1,1,1]]"] * 4999) + b"]}"
    tracemalloc.start()
    try:
        assert _direct(raw, wide) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(raw), peak
    regular = b'{"instances": [' + b",".join([first] * 3) + b"]}"
    (array,) = _direct(regular, wide)[1].values()
    assert array.shape == (3, 5000, 4)
