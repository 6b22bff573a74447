"""``import modelkeep.compat``: the TF2 tutorial's code runs verbatim on Keras 3, and can be undone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from numerics import STORED_ULPS, assert_close_ulps

TUTORIAL = Path(__file__).resolve().parents[2] / "shared" / "tutorial_code.py"
if not TUTORIAL.exists():
    TUTORIAL = Path("/work/shared/tutorial_code.py")
COMMITTED = Path(__file__).parent / "fixtures" / "tfkeras" / "tutorial"


def _patched_places():
    import tensorflow.keras.callbacks as tf_callbacks
    import tensorflow.keras.models as tf_models

    return {
        "Model.save": lambda: keras.Model.save,
        "Model.save_weights": lambda: keras.Model.save_weights,
        "Model.load_weights": lambda: keras.Model.load_weights,
        "keras.models.load_model": lambda: keras.models.load_model,
        "keras.saving.load_model": lambda: keras.saving.load_model,
        "tensorflow.keras.models.load_model": lambda: tf_models.load_model,
        "keras.callbacks.ModelCheckpoint": lambda: keras.callbacks.ModelCheckpoint,
        "tensorflow.keras.callbacks.ModelCheckpoint": lambda: tf_callbacks.ModelCheckpoint,
    }


@pytest.fixture
def compat():
    """modelkeep.compat enabled for one test, and disabled after it whatever happens."""
    import modelkeep.compat as module

    module.enable()
    try:
        yield module
    finally:
        module.disable()


def _tutorial_model():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, activation="sigmoid"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def test_tutorial_code_runs_verbatim(tmp_path):
    """The tutorial's code, unchanged, after ``import modelkeep.compat``: completes, leaves its files."""
    script = tmp_path / "run_tutorial.py"
    script.write_text(
        "import modelkeep.compat\n"
        f"source = open({str(TUTORIAL)!r}).read()\n"
        "exec(compile(source, 'tutorial_code.py', 'exec'), {'__name__': '__main__'})\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for name in ("checkpoint", "saved_modelname.index", "saved_modelname.data-00000-of-00001", "mysavedmodel.h5"):
        assert (tmp_path / name).is_file(), name
    for directory in ("saved_model", "mysavedmodel"):
        assert (tmp_path / directory / "saved_model.pb").is_file()
        assert (tmp_path / directory / "variables").is_dir()
        assert (tmp_path / directory / "assets").is_dir()
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("saved_modelname")
    # what the tutorial saved is what it says: the whole model, loadable without compat
    model = mk.load_model(tmp_path / "mysavedmodel")
    assert model.compiled and model.layers[0].units == 128


def test_import_modelkeep_patches_nothing():
    code = (
        "import keras, tensorflow.keras.callbacks as c\n"
        "before = (keras.Model.save_weights, keras.models.load_model, c.ModelCheckpoint)\n"
        "import modelkeep, modelkeep.api, modelkeep.formats.registry\n"
        "assert (keras.Model.save_weights, keras.models.load_model, c.ModelCheckpoint) == before\n"
        "import modelkeep.compat\n"
        "assert keras.Model.save_weights is not before[0] and c.ModelCheckpoint is not before[2]\n"
        "modelkeep.compat.disable()\n"
        "assert (keras.Model.save_weights, keras.models.load_model, c.ModelCheckpoint) == before\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_disable_restores_every_patch():
    import modelkeep.compat as compat

    compat.disable()
    places = _patched_places()
    originals = {name: get() for name, get in places.items()}
    compat.enable()
    try:
        assert compat.enabled()
        changed = [name for name, get in places.items() if get() is not originals[name]]
        assert sorted(changed) == sorted(places), f"not patched: {set(places) - set(changed)}"
    finally:
        compat.disable()
    assert not compat.enabled()
    assert [name for name, get in places.items() if get() is not originals[name]] == []


def test_tutorial_forms_write_tf2_layouts(compat, tmp_path):
    import tensorflow as tf

    model = _tutorial_model()
    x = np.random.default_rng(0).random((8, 10), dtype=np.float32)
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    model.save_weights(str(tmp_path / "saved_modelname"))
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint", "saved_modelname.index", "saved_modelname.data-00000-of-00001"}
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("saved_modelname")
    other = _tutorial_model()
    other.load_weights(str(tmp_path / "saved_modelname"))
    assert np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    model.save_weights(str(tmp_path / "w.h5"))
    other = _tutorial_model()
    other.load_weights(str(tmp_path / "w.h5"))
    assert np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    model.save(str(tmp_path / "mysavedmodel"))
    loaded = keras.models.load_model(str(tmp_path / "mysavedmodel"))
    assert isinstance(loaded, keras.Model) and np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # Keras 2's save_format="h5" on a name without extension
    import h5py

    model.save_weights(str(tmp_path / "w_noext"), save_format="h5")
    model.save(str(tmp_path / "m_noext"), save_format="h5")
    assert h5py.is_hdf5(tmp_path / "w_noext") and h5py.is_hdf5(tmp_path / "m_noext")


def test_keras3_forms_keep_keras3_behaviour(compat, tmp_path):
    import tensorflow.keras.callbacks as tf_callbacks

    original = compat._ORIGINAL_CHECKPOINT
    assert type(tf_callbacks.ModelCheckpoint("a.keras")) is original
    assert type(keras.callbacks.ModelCheckpoint("w.weights.h5", save_weights_only=True)) is original
    assert isinstance(tf_callbacks.ModelCheckpoint("saved_modelname", save_weights_only=True), mk.ModelCheckpoint)
    assert isinstance(tf_callbacks.ModelCheckpoint(filepath="saved_model", frequency="epoch"), mk.ModelCheckpoint)
    assert isinstance(keras.callbacks.ModelCheckpoint("m.keras", frequency="epoch"), mk.ModelCheckpoint)

    model = _tutorial_model()
    x = np.random.default_rng(1).random((4, 10), dtype=np.float32)
    model.save_weights(str(tmp_path / "w.weights.h5"))  # Keras's own file: Keras's reader takes it
    compat.disable()
    other = _tutorial_model()
    other.load_weights(str(tmp_path / "w.weights.h5"))
    assert np.array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))
    compat.enable()
    model.save(str(tmp_path / "m.keras"))
    assert keras.saving.load_model(str(tmp_path / "m.keras")).count_params() == model.count_params()


def test_compat_loads_tf_keras_files(compat):
    """``keras.models.load_model`` on a tf-keras SavedModel: the full model, not TFSMLayer.

    Predictions: bit for bit against the tutorial's architecture built here with the file's
    stored weights; within ``numerics.STORED_ULPS`` of those tf-keras stored on another machine."""
    import tensorflow.keras.models as tf_models

    expected = np.load(COMMITTED / "expected.npz")
    weights = [expected[f"w/dense_{n}/{part}:0"] for n in (2, 3) for part in ("kernel", "bias")]
    reference = keras.Sequential([keras.Input((10,)), keras.layers.Dense(128, activation="sigmoid"), keras.layers.Dense(1)])
    for variable, value in zip(reference.weights, weights):
        variable.assign(value)
    want = reference.predict(expected["x"], verbose=0)
    assert_close_ulps(want, expected["pred_0"], STORED_ULPS["dense"], "tutorial built in code")
    model = tf_models.load_model(str(COMMITTED / "sm"))
    assert isinstance(model, keras.Model) and model.compiled
    assert np.array_equal(model.predict(expected["x"], verbose=0), want)
    built = keras.Sequential([keras.layers.Dense(128, activation="sigmoid", input_shape=(10,)), keras.layers.Dense(1)])
    built.load_weights(str(COMMITTED / "ckpt"))
    assert np.array_equal(built.predict(expected["x"], verbose=0), want)
