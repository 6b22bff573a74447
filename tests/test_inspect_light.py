"""``modelkeep inspect`` of ``.keras``, ``.h5`` and ``.safetensors`` files without TensorFlow: the
command imports neither TensorFlow nor Keras, and says what the Keras-based ``describe`` says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.tools.diff import diff_paths
from modelkeep.tools.inspect import describe
from modelkeep.tools.light import describe_light, diff_light

SRC = Path(__file__).resolve().parents[1] / "src"
#: runs the command in-process, then says whether TensorFlow or Keras got imported
PROBE = (
    "import sys\n"
    "from modelkeep.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print('imported:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _dense(optimizer="adam"):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    return model


def _conv(optimizer):
    model = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dense(4, use_bias=False), keras.layers.LayerNormalization(), keras.layers.Dense(2),
    ])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _embedding(optimizer):
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(20, 3),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _dropout(optimizer):  # a seed generator: .keras goes the Keras way, .h5 / .safetensors do not
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _trained(build, optimizer):
    model = build(optimizer)
    x = np.random.default_rng(0).random((16,) + tuple(model.input_shape[1:]), dtype=np.float32)
    if build is _embedding:
        x = (x * 20).astype("int32")
    model.fit(x, np.zeros((16,) + tuple(model.output_shape[1:]), np.float32), epochs=1, verbose=0)
    return model


def _files(tmp_path, model, stem):
    mk.save_model(model, tmp_path / f"{stem}.keras")
    mk.save_model(model, tmp_path / f"{stem}.h5")
    mk.save_weights(model, tmp_path / f"{stem}.safetensors")
    return [tmp_path / f"{stem}.{ext}" for ext in ("keras", "h5", "safetensors")]


def _same_as_keras(path: Path) -> None:
    light, full = describe_light(path), describe(path)
    if path.suffix == ".keras":  # the Keras way reports the reader's time and versions; the light way the file's
        assert light["metadata"]["versions"]["keras"] == keras.__version__
        light, full = {**light, "metadata": None}, {**full, "metadata": None}
    assert light == full


@pytest.mark.parametrize("build, optimizer", [
    (_conv, keras.optimizers.SGD(momentum=0.9)), (_embedding, "adamw"),
    pytest.param(_conv, "sgd", marks=pytest.mark.slow), pytest.param(_dropout, "adam", marks=pytest.mark.slow),
    pytest.param(_embedding, keras.optimizers.RMSprop(), marks=pytest.mark.slow),
])
def test_light_inspect_says_what_keras_says(tmp_path, build, optimizer):
    """Same layers, output shapes, parameters, variables (names, shapes, order), optimizer, compile;
    `diff` of any two of the files gives the same report too."""
    paths = _files(tmp_path, _trained(build, optimizer), "m")
    for path in paths:
        _same_as_keras(path)
    for a, b in ((paths[0], paths[1]), (paths[1], paths[2]), (paths[2], paths[0])):
        assert diff_light(a, b).as_dict() == diff_paths(a, b).as_dict()


@pytest.mark.slow
def test_uncompiled_and_functional_models(tmp_path):
    """An uncompiled model, and a Functional one (summary through Keras), come out the same too."""
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    inputs = keras.Input((4,), name="features")
    functional = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(3)(inputs)))
    functional.compile(optimizer="adam", loss="mse")
    for model, stem in ((plain, "plain"), (functional, "functional")):
        for path in _files(tmp_path, model, stem):
            _same_as_keras(path)


def _probe(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_inspect_imports_no_tensorflow(tmp_path):
    """`modelkeep inspect` of a .keras, an .h5 and a .safetensors file: neither TensorFlow nor Keras imported."""
    paths = _files(tmp_path, _trained(lambda o: _dense(o), "adam"), "model")
    for path in paths:
        done = _probe(["inspect", path.name, "--json"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert "imported: []" in done.stderr, (path.name, zipfile.ZipFile(paths[0]).namelist(), done.stderr)
        info = json.loads(done.stdout)
        assert info["model"]["total_params"] == 6 * 5 + 5 + 5 + 1
        assert [layer["output_shape"] for layer in info["model"]["layers"]] == ["(None, 5)", "(None, 1)"]
    done = _probe(["verify", *(p.name for p in paths)], tmp_path)
    assert done.returncode == 0 and "imported: []" in done.stderr, done.stderr
    done = _probe(["ls", "."], tmp_path)
    assert done.returncode == 0 and "imported: []" in done.stderr and "model.keras" in done.stdout, done.stderr
    mk.save_model(_trained(lambda o: _dense(o), "adam"), tmp_path / "other.keras")
    done = _probe(["diff", "model.keras", "other.keras", "--json"], tmp_path)
    assert done.returncode == 0 and "imported: []" in done.stderr, done.stderr
    counts = json.loads(done.stdout)["counts"]  # weights and slots differ; iteration and learning_rate do not
    assert (counts["changed"], counts["equal"]) == (12, 2), counts


def test_compiled_but_untrained_model_without_keras(tmp_path):
    """A model compiled and saved before any fit keeps only the optimizer's iteration and
    learning rate; Keras builds the slots (zeros) when it loads. The light reader says the same,
    without importing Keras (it fell back to Keras before: ~5 s)."""
    paths = _files(tmp_path, _dense("adam"), "untrained")
    for path in paths:
        _same_as_keras(path)
        done = _probe(["inspect", path.name, "--json"], tmp_path)
        assert done.returncode == 0 and "imported: []" in done.stderr, (path.name, done.stderr)
        names = [v["name"] for v in json.loads(done.stdout)["variables"]]
        if path.suffix == ".keras":  # .h5 and .safetensors of an unbuilt optimizer hold the model's variables only
            assert "optimizer/slots/layer_with_weights-0/kernel/momentum" in names, names


@pytest.mark.slow
def test_cli_inspect_of_a_savedmodel_still_works(tmp_path):
    """What needs TensorFlow (a SavedModel) still gets it."""
    model = _dense()
    mk.save_model(model, tmp_path / "sm")
    done = _probe(["inspect", "sm", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tensorflow" in done.stderr.splitlines()[-1]
    assert json.loads(done.stdout)["format"] == "SavedModel"


@pytest.mark.parametrize("command", [["inspect", "nonexist.keras"], ["verify", "nonexist"], ["diff", "nonexist.h5", "other.h5"]])
def test_a_missing_path_is_called_missing(tmp_path, command):
    """`inspect nonexist.keras`, `verify nonexist`: the error says the file does not exist, nothing else."""
    done = _probe(command, tmp_path)
    assert done.returncode == 1
    text = " ".join(done.stdout.split() + done.stderr.split())
    name = command[1]
    assert f"{name} does not exist: there is no file or directory of that name" in text, text
    assert "extension" not in text and "load_weights" not in text
    assert ("nor a TF checkpoint" in text) == (name == "nonexist")


def test_light_reader_opens_keras_files_through_the_guard(tmp_path):
    """The Keras-free ``diff``/``inspect`` path refuses what the guarded reader refuses: an
    inner HDF5 external link (outside bytes never read), and names a file that is no zip."""
    import h5py

    from modelkeep.errors import ModelkeepError, UnsafeFileError

    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["secret"] = np.arange(4.0)
    good = tmp_path / "good.keras"
    mk.save_model(_dense(), good)
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "model.weights.h5":
                path = tmp_path / "inner.h5"
                path.write_bytes(data)
                with h5py.File(path, "a") as f:
                    f["layers/dense/vars/0"].parent.move("0", "0_moved")
                    f["layers/dense/vars/0"] = h5py.ExternalLink(str(outside), "/secret")
                data = path.read_bytes()
            dst.writestr(name, data)
    with pytest.raises(UnsafeFileError, match="ExternalLink"):
        diff_light(good, evil)
    not_zip = tmp_path / "not_zip.keras"
    not_zip.write_bytes(b"PK? not a zip archive at all")
    with pytest.raises(ModelkeepError, match="not_zip.keras"):
        diff_light(good, not_zip)
