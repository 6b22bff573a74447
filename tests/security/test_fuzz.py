"""Property-based fuzzing of every parser of untrusted bytes: only ``ModelkeepError`` comes out.

Parsers: the safetensors header, manifests (and listing a run directory holding one), HDF5
attributes of the Keras 2 layout, a ``.keras`` archive's ``config.json``, and the TF
checkpoint ``.index``. The default run tries a few dozen inputs per parser; the slow run
(``-m slow``) a few hundred.
"""

from __future__ import annotations

import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from modelkeep.errors import ModelkeepError  # noqa: E402

FAST, SLOW = 25, 300
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "model/dense/kernel", "files", "size", "crc32",
                        "metadata", "step", "class_name", "config", "layers", "module", "registered_name", "name",
                        "modelkeep", "modelkeep_order", "order", "datasets"])
TYPED = st.recursive(
    JSON, lambda inner: st.dictionaries(KEYS, inner, max_size=5) | st.lists(inner, max_size=3), max_leaves=25,
)


def _only_modelkeep_errors(call, *args):
    try:
        call(*args)
    except ModelkeepError:
        pass


def _run(name: str, examples: int, strategy, body):
    """``body`` under ``given(strategy)`` with ``examples`` examples and no deadline."""
    run = settings(max_examples=examples, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])(given(strategy)(body))
    run()


# ------------------------------------------------------------------ safetensors header
def _safetensors_body(tmp: Path):
    from modelkeep.formats.safetensors import SafetensorsFormat

    def body(case):
        header, tail, lie = case
        text = header if isinstance(header, bytes) else json.dumps(header, allow_nan=True).encode()
        path = tmp / "f.safetensors"
        path.write_bytes(struct.pack("<Q", len(text) if lie is None else lie) + text + tail)
        _only_modelkeep_errors(SafetensorsFormat().read, path)

    return body


SAFETENSORS = st.tuples(st.binary(max_size=64) | TYPED, st.binary(max_size=32), st.none() | st.integers(0, (1 << 64) - 1))


@pytest.mark.parametrize("examples", [FAST, pytest.param(SLOW, marks=pytest.mark.slow)])
def test_fuzz_safetensors_header(tmp_path, examples):
    _run("safetensors", examples, SAFETENSORS, _safetensors_body(tmp_path))


# ------------------------------------------------------------------ manifests
def _manifest_body(tmp: Path):
    from modelkeep.checkpoint import store
    from modelkeep.storage.checksums import verify_manifest

    (tmp / "w.safetensors").write_bytes(b"\0" * 16)

    def body(doc):
        manifest = tmp / "w.safetensors.manifest.json"
        manifest.write_text(json.dumps(doc, allow_nan=True))
        _only_modelkeep_errors(verify_manifest, manifest)
        infos = store.list_checkpoints(tmp)  # never raises for one bad entry
        assert all(i.status in ("ok", "corrupt", "incomplete") for i in infos)

    return body


MANIFESTS = TYPED | st.fixed_dictionaries({"files": st.dictionaries(st.text(max_size=20), TYPED, max_size=3),
                                           "metadata": TYPED})


@pytest.mark.parametrize("examples", [FAST, pytest.param(SLOW, marks=pytest.mark.slow)])
def test_fuzz_manifest(tmp_path, examples):
    _run("manifest", examples, MANIFESTS, _manifest_body(tmp_path))


# ------------------------------------------------------------------ HDF5 attributes
ATTR_VALUES = st.one_of(
    st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20),
    st.lists(st.text(max_size=12), max_size=4), st.lists(st.integers(-3, 3), min_size=1, max_size=4),
    TYPED.map(lambda v: json.dumps(v, allow_nan=True)),
)


def _h5_body(tmp: Path):
    import h5py
    from corpus import _h5_weights_layout, build_model

    from modelkeep.formats.registry import HDF5

    model = build_model()

    def body(case):
        where, key, value = case
        path = tmp / "a.h5"
        with h5py.File(path, "w") as f:
            _h5_weights_layout(f)
            target = f if where == "/" else f[where]
            try:
                target.attrs[key] = value
            except (TypeError, ValueError):
                return  # h5py cannot store that value: nothing to parse
        _only_modelkeep_errors(HDF5.load_weights, model, path)
        _only_modelkeep_errors(HDF5.read, path)

    return body


H5 = st.tuples(st.sampled_from(["/", "dense"]), st.sampled_from(["layer_names", "weight_names", "model_config", "modelkeep",
                                                                 "training_config", "keras_version"]), ATTR_VALUES)


@pytest.mark.parametrize("examples", [FAST, pytest.param(SLOW, marks=pytest.mark.slow)])
def test_fuzz_hdf5_attributes(tmp_path, examples):
    _run("hdf5", examples, H5, _h5_body(tmp_path))


# ------------------------------------------------------------------ .keras config.json
def _keras_body(tmp: Path):
    from modelkeep.formats.registry import KERAS_ZIP

    def body(config):
        path = tmp / "m.keras"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
            z.writestr("config.json", config if isinstance(config, bytes) else json.dumps(config, allow_nan=True))
        _only_modelkeep_errors(KERAS_ZIP.load_model, path)

    return body


LAYER = st.fixed_dictionaries({"module": st.sampled_from(["keras.layers", "keras", "os", "builtins", "keras.utils"]),
                               "class_name": st.sampled_from(["Dense", "Lambda", "InputLayer", "system", "get_file", "function"]),
                               "config": TYPED, "registered_name": st.none() | st.text(max_size=6)})
CONFIGS = st.binary(max_size=40) | TYPED | st.fixed_dictionaries(
    {"module": st.just("keras"), "class_name": st.sampled_from(["Sequential", "Functional"]),
     "config": st.fixed_dictionaries({"name": st.text(max_size=5), "layers": st.lists(LAYER, max_size=3)})})


@pytest.mark.parametrize("examples", [FAST, pytest.param(SLOW, marks=pytest.mark.slow)])
def test_fuzz_keras_config(tmp_path, examples):
    _run("keras", examples, CONFIGS, _keras_body(tmp_path))


# ------------------------------------------------------------------ TF checkpoint index
def _index_body(tmp: Path):
    from corpus import build_model

    import modelkeep as mk
    from modelkeep.formats.registry import TF_CHECKPOINT

    good = tmp / "good"
    mk.save_weights(build_model(), good)
    original = Path(str(good) + ".index").read_bytes()
    data = Path(str(good) + ".data-00000-of-00001").read_bytes()

    def body(case):
        edits, cut = case
        index = bytearray(original)
        for position, byte in edits:
            index[position % len(index)] = byte
        prefix = tmp / "fuzzed"
        Path(str(prefix) + ".index").write_bytes(bytes(index[: max(1, len(index) - cut)]))
        Path(str(prefix) + ".data-00000-of-00001").write_bytes(data)
        _only_modelkeep_errors(TF_CHECKPOINT.read, prefix)

    return body


INDEX = st.tuples(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 3) | st.integers(0, 200))


@pytest.mark.parametrize("examples", [FAST, pytest.param(SLOW, marks=pytest.mark.slow)])
def test_fuzz_tf_checkpoint_index(tmp_path, examples):
    _run("index", examples, INDEX, _index_body(tmp_path))


def test_fuzzed_parsers_reject_the_obvious(tmp_path):
    """The properties above must be able to fail: a raw exception from a parser is caught."""
    with pytest.raises(ZeroDivisionError):
        _only_modelkeep_errors(lambda: 1 / 0)
    np.testing.assert_equal(FAST < SLOW, True)
