"""Issue 2: every model of the zoo through every format, exactly.

Weights formats: predictions of the model the weights are loaded into equal the
original's bit for bit. Whole-model formats: the loaded model predicts the same, and one
more training step from it gives the same weights as one more step from the original
(so architecture, compile config, optimizer state and seed-generator states all came back).
"""

from __future__ import annotations

import numpy as np
import pytest

import modelkeep as mk

import zoo

CASES = zoo.cases()
WEIGHT_PATHS = ["saved_modelname", "weights.h5", "weights.weights.h5", "weights.safetensors"]
MODEL_PATHS = ["mysavedmodel", "model.h5", "model.keras"]


def assert_all_equal(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert left.dtype == right.dtype and left.shape == right.shape
        assert np.array_equal(left, right), f"max abs diff {np.max(np.abs(left - right))}"


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def trained(request):
    import keras

    keras.utils.set_random_seed(99)
    case = request.param
    return case, zoo.trained(case)


@pytest.mark.parametrize("filename", WEIGHT_PATHS)
def test_weights_round_trip(trained, filename, tmp_path):
    case, model = trained
    expected = zoo.predictions(model, case.x)
    mk.save_weights(model, tmp_path / filename)
    fresh = case.build()
    mk.load_weights(fresh, tmp_path / filename)
    assert_all_equal(zoo.predictions(fresh, case.x), expected)
    for original, loaded in zip(model.weights, fresh.weights):
        assert np.array_equal(np.asarray(original), np.asarray(loaded))


@pytest.mark.parametrize("filename", MODEL_PATHS)
def test_model_round_trip_and_next_step(trained, filename, tmp_path):

    case, model = trained
    expected = zoo.predictions(model, case.x)
    mk.save_model(model, tmp_path / filename)
    loaded = mk.load_model(tmp_path / filename)
    assert type(loaded).__name__ == type(model).__name__
    assert_all_equal(zoo.predictions(loaded, case.x), expected)
    # the next step of the loaded model equals the next step of the original
    assert_all_equal(zoo.one_step(loaded, case), zoo.one_step(model, case))


def test_tf_checkpoint_is_what_tensorflow_reads(trained, tmp_path):
    import tensorflow as tf

    case, model = trained
    mk.save_weights(model, tmp_path / "saved_modelname")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint",
        "saved_modelname.data-00000-of-00001",
        "saved_modelname.index",
    ]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "saved_modelname")
    reader = tf.train.load_checkpoint(str(tmp_path / "saved_modelname"))
    first = next(layer for layer in model.layers if layer.weights)
    value = reader.get_tensor(f"layer_with_weights-0/{first.weights[0].name}/.ATTRIBUTES/VARIABLE_VALUE")
    assert np.array_equal(value, np.asarray(first.weights[0]))


def test_savedmodel_serving_default_matches_predict(trained, tmp_path):
    import tensorflow as tf

    case, model = trained
    mk.save_model(model, tmp_path / "mysavedmodel")
    loaded = tf.saved_model.load(str(tmp_path / "mysavedmodel"))
    serve = loaded.signatures["serving_default"]
    inputs = case.x if isinstance(case.x, list) else [case.x]
    from modelkeep.formats.savedmodel import signature_keys

    names, out_names = signature_keys(model)  # the Keras input and output names, as tf.keras 2 keyed them
    outputs = serve(**{name: tf.constant(value) for name, value in zip(names, inputs)})
    assert sorted(outputs) == sorted(out_names)
    got = [outputs[k].numpy() for k in out_names]  # model.outputs order
    expected = zoo.predictions(model, case.x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
