"""A layer's own state (save_own_variables / save_assets) round-trips through every format.

The model holds the kinds Keras's saving tests care about: an adapted Normalization
(recomputes its statistics in load_own_variables), adapted StringLookup, IntegerLookup and
TextVectorization (vocabularies in save_assets), and a custom layer whose state is not a
variable at all. After a load into a
fresh, un-adapted copy, predictions must equal the original's bit for bit (same process,
same machine), or the save must be refused naming the layer.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import modelkeep as mk  # noqa: E402
from modelkeep.errors import IncompatibleModelError, UnsupportedModelError  # noqa: E402


@keras.saving.register_keras_serializable(package="modelkeep_tests")
class ShiftTable(keras.layers.Layer):
    """Adds a vector kept outside variables: only its own save/load hooks carry it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shift = np.zeros((3,), "float32")

    def call(self, x):
        return x + self.shift

    def save_own_variables(self, store):
        store["shift"] = self.shift

    def load_own_variables(self, store):
        self.shift = np.asarray(store["shift"], "float32")


def _model(adapt: bool = True) -> keras.Model:
    numbers = keras.Input((3,), name="numbers")
    words = keras.Input((1,), dtype="string", name="words")
    codes = keras.Input((1,), dtype="int64", name="codes")
    text = keras.Input((1,), dtype="string", name="text")
    norm = keras.layers.Normalization(name="norm")
    lookup = keras.layers.StringLookup(name="lookup")
    integers = keras.layers.IntegerLookup(name="integers")
    vectorize = keras.layers.TextVectorization(output_sequence_length=3, name="vectorize")
    table = ShiftTable(name="table")
    if adapt:
        norm.adapt(np.array([[1, 2, 3], [3, 6, 9], [5, 1, 0]], "float32"))
        lookup.adapt(np.array([["a"], ["b"], ["b"], ["c"], ["c"], ["c"]]))
        integers.adapt(np.array([[7], [7], [42], [5]]))
        vectorize.adapt(np.array(["the cat sat", "the dog sat down", "a cat"]))
        table.shift = np.array([10, 20, 30], "float32")
    as_float = [keras.ops.cast(layer(x), "float32") for layer, x in ((lookup, words), (integers, codes))]
    tokens = keras.ops.cast(keras.ops.reshape(vectorize(text), (-1, 3)), "float32")
    out = keras.layers.Concatenate()([table(norm(numbers)), *as_float, tokens])
    model = keras.Model([numbers, words, codes, text], out)
    model.compile(optimizer="adam", loss="mse")
    return model


X = [
    np.array([[1, 1, 1], [4, 2, 0]], "float32"),
    np.array([["c"], ["never-seen"]]),
    np.array([[42], [9]], "int64"),
    np.array([["the dog sat"], ["a cat down"]]),
]


def _predict(model: keras.Model) -> np.ndarray:
    return np.asarray(model([tf.constant(x) for x in X]))


@pytest.fixture(scope="module")
def original():
    model = _model()
    return model, _predict(model)


def _fresh_differs(reference: np.ndarray) -> keras.Model:
    fresh = _model(adapt=False)
    fresh.set_weights([np.zeros_like(w) for w in fresh.get_weights()])
    with pytest.raises(tf.errors.FailedPreconditionError):  # its vocabulary is not there
        _predict(fresh)
    return fresh


WEIGHT_PATHS = ["w.weights.h5", "w.h5", "w.safetensors", "ckpt/w"]
MODEL_PATHS = ["m.keras", "m.h5", "saved_model_dir"]


@pytest.mark.parametrize("name", WEIGHT_PATHS)
def test_weights_round_trip_keeps_own_state(tmp_path, original, name):
    model, reference = original
    mk.save_weights(model, tmp_path / name)
    fresh = _fresh_differs(reference)
    mk.load_weights(fresh, tmp_path / name)
    np.testing.assert_array_equal(_predict(fresh), reference)


@pytest.mark.parametrize("name", MODEL_PATHS)
def test_model_round_trip_keeps_own_state(tmp_path, original, name):
    model, reference = original
    mk.save_model(model, tmp_path / name)
    loaded = mk.load_model(tmp_path / name)
    np.testing.assert_array_equal(_predict(loaded), reference)
    fresh = _fresh_differs(reference)
    mk.load_weights(fresh, tmp_path / name)  # load_weights from a whole-model file too
    np.testing.assert_array_equal(_predict(fresh), reference)


def test_unzipped_keras_directory_keeps_own_state(tmp_path, original):
    model, reference = original
    mk.save_model(model, tmp_path / "model_dir", zipped=False)
    assert (tmp_path / "model_dir" / "config.json").exists()
    np.testing.assert_array_equal(_predict(mk.load_model(tmp_path / "model_dir")), reference)


def test_sharded_weights_refuse_a_vocabulary_by_name(tmp_path, original):
    model, _ = original
    with pytest.raises(UnsupportedModelError, match=r"'lookup' \(StringLookup\)"):
        mk.save_weights(model, tmp_path / "w.weights.json", max_shard_size=1)
    assert list(tmp_path.iterdir()) == []


def test_normalization_from_a_file_without_own_state_is_recomputed(tmp_path):
    """A Keras-written legacy .h5 has the statistics as weights only; the layer still works."""
    from keras.src.legacy.saving import legacy_h5_format

    inputs = keras.Input((3,))
    norm = keras.layers.Normalization()
    norm.adapt(np.array([[1, 2, 3], [3, 6, 9]], "float32"))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="ones")(norm(inputs)))
    legacy_h5_format.save_model_to_hdf5(model, str(tmp_path / "keras.h5"))
    fresh = keras.models.clone_model(model)
    mk.load_weights(fresh, tmp_path / "keras.h5")
    np.testing.assert_array_equal(np.asarray(fresh(X[0])), np.asarray(model(X[0])))


def test_own_state_of_another_architecture_is_refused(tmp_path, original):
    model, _ = original
    mk.save_weights(model, tmp_path / "w.safetensors")
    inputs = keras.Input((3,))
    other = keras.Model(inputs, ShiftTable(name="t")(keras.layers.Normalization()(inputs)))  # no lookup
    assert [w.shape for w in other.weights] == [w.shape for w in model.weights]
    with pytest.raises(IncompatibleModelError, match="own state of 5 layers"):
        mk.load_weights(other, tmp_path / "w.safetensors")


class Labels(keras.layers.Layer):
    """Own state that is text (Keras's .keras/.weights.h5 cannot hold it; modelkeep's formats can)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.names = np.array(["", ""])

    def call(self, x):
        return x

    def save_own_variables(self, store):
        store["names"] = self.names

    def load_own_variables(self, store):
        self.names = np.asarray(store["names"])


@pytest.mark.parametrize("name", ["w.safetensors", "w.h5", "ckpt/w"])
def test_text_own_state(tmp_path, name):
    def build():
        inputs = keras.Input((2,))
        return keras.Model(inputs, keras.layers.Dense(1)(Labels(name="labels")(inputs)))

    model = build()
    model.get_layer("labels").names = np.array(["café", "naïve"])
    mk.save_weights(model, tmp_path / name)
    fresh = build()
    mk.load_weights(fresh, tmp_path / name)
    assert fresh.get_layer("labels").names.tolist() == ["café", "naïve"]
