"""Issue 2: bad input gets a clear error that names what was expected and found."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FormatError,
    IncompatibleModelError,
    UnsupportedModelError,
)

import zoo


@pytest.fixture(scope="module")
def model():
    return zoo.tutorial()


def test_missing_file(model, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no TF checkpoint at .*nothing_here"):
        mk.load_weights(model, tmp_path / "nothing_here")
    with pytest.raises(CheckpointNotFoundError, match="missing.keras"):
        mk.load_model(tmp_path / "missing.keras")


def test_half_a_tf_checkpoint(model, tmp_path):
    mk.save_weights(model, tmp_path / "saved_modelname")
    (tmp_path / "saved_modelname.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"saved_modelname.data-00000-of-00001 is missing"):
        mk.load_weights(model, tmp_path / "saved_modelname")


def test_index_missing(model, tmp_path):
    mk.save_weights(model, tmp_path / "saved_modelname")
    (tmp_path / "saved_modelname.index").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"saved_modelname.index is missing"):
        mk.load_weights(model, tmp_path / "saved_modelname")


@pytest.mark.parametrize("name", ["model.pt", "weights.pkl", "weights.json"])
def test_unknown_extension(model, tmp_path, name):
    with pytest.raises(FormatError, match=r"cannot tell the format .* Expected one of"):
        mk.save_weights(model, tmp_path / name)


def test_wrong_kind_of_path(model, tmp_path):
    with pytest.raises(FormatError, match=r"\.keras, which holds a whole model"):
        mk.save_weights(model, tmp_path / "w.keras")
    with pytest.raises(FormatError, match=r"holds weights only"):
        mk.save_model(model, tmp_path / "m.safetensors")


@pytest.mark.parametrize("filename", ["saved_modelname", "w.h5", "w.safetensors", "w.weights.h5"])
def test_other_architecture_names_variable_and_shapes(model, tmp_path, filename):
    mk.save_weights(model, tmp_path / filename)
    other = keras.Sequential([keras.Input((10,)), keras.layers.Dense(64, activation="sigmoid"), keras.layers.Dense(1)])
    with pytest.raises(IncompatibleModelError) as info:
        mk.load_weights(other, tmp_path / filename)
    text = str(info.value)
    assert "different architecture" in text
    if filename != "w.weights.h5":  # Keras writes that message itself; we only wrap it
        assert "(10, 64)" in text and "(10, 128)" in text and "kernel" in text


def test_other_architecture_count(model, tmp_path):
    mk.save_weights(model, tmp_path / "w.safetensors")
    deeper = keras.Sequential([keras.Input((10,)), keras.layers.Dense(128), keras.layers.Dense(1), keras.layers.Dense(1)])
    with pytest.raises(IncompatibleModelError, match=r"has 6 model variables but .* holds 4"):
        mk.load_weights(deeper, tmp_path / "w.safetensors")


def test_savedmodel_without_keras_part(tmp_path):
    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2.0}

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures={"serving_default": module.__call__})
    # issue 15: an inference-only Keras model running the signature; training it is refused by name
    with pytest.warns(UserWarning, match=r"without a Keras part; returning an inference-only model"):
        model = mk.load_model(tmp_path / "plain")
    assert model.predict(np.ones((3, 2), "float32"), verbose=0).tolist() == [[2.0, 2.0]] * 3
    with pytest.raises(UnsupportedModelError, match=r"fit: inference_only_plain is an inference-only model"):
        model.fit(np.ones((3, 2)), np.ones((3, 2)))


@pytest.mark.parametrize(
    "name,content,error,pattern",
    [
        ("m.h5", b"this is not hdf5 at all", FormatError, "not an HDF5 file"),
        ("m.keras", b"plain text, not a zip", FormatError, "not a zip archive"),
        ("w.safetensors", b"\x05\x00", CorruptCheckpointError, "not a readable safetensors file"),
        ("w.weights.h5", b"GIF89a....", FormatError, "not an HDF5 file"),
    ],
)
def test_file_not_what_its_extension_says(model, tmp_path, name, content, error, pattern):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=pattern):
        if name.endswith((".keras",)) or name == "m.h5":
            mk.load_model(tmp_path / name)
        else:
            mk.load_weights(model, tmp_path / name)


def test_truncated_tf_checkpoint_data(model, tmp_path):
    mk.save_weights(model, tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="ck"):
        mk.load_weights(model, tmp_path / "ck")


def test_errors_subclass_builtins():
    assert issubclass(FormatError, ValueError)
    assert issubclass(IncompatibleModelError, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(CorruptCheckpointError, OSError)


def test_lambda_layer_needs_opt_in(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs))
    mk.save_model(model, tmp_path / "lam.h5")
    with pytest.raises(UnsupportedModelError, match=r"Lambda .* safe_mode=False"):
        mk.load_model(tmp_path / "lam.h5")
    loaded = mk.load_model(tmp_path / "lam.h5", safe_mode=False)
    x = np.ones((2, 3), np.float32)
    assert np.array_equal(loaded.predict(x, verbose=0), x * 2.0)


def test_unregistered_custom_class_is_named(tmp_path):
    class Unregistered(keras.layers.Layer):
        def call(self, inputs):
            return inputs + 1.0

    model = keras.Sequential([keras.Input((3,)), Unregistered(name="plus_one")])
    mk.save_model(model, tmp_path / "custom.h5")
    with pytest.raises(UnsupportedModelError, match=r"Unregistered.*custom_objects"):
        mk.load_model(tmp_path / "custom.h5")
    loaded = mk.load_model(tmp_path / "custom.h5", custom_objects={"Unregistered": Unregistered})
    assert np.array_equal(loaded.predict(np.zeros((1, 3), np.float32), verbose=0), np.ones((1, 3), np.float32))


def test_flipped_bit_in_hdf5_weights_is_caught_without_a_manifest(model, tmp_path):
    import h5py

    path = tmp_path / "model.h5"
    mk.save_model(model, path)
    with h5py.File(path, "r") as f:
        first = f["model_weights"].attrs["layer_names"][0]
        kernel = f["model_weights"][first.decode() if isinstance(first, bytes) else first]
        dataset = next(kernel[n] for n in kernel.attrs["weight_names"] if kernel[n].ndim == 2)
        chunk = dataset.id.get_chunk_info(0)
        offset = chunk.byte_offset + chunk.size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"fails its checksum"):
        mk.load_model(path)
