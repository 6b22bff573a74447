"""TF2-era files (written by tf-keras for real) load into Keras 3, and modelkeep's files load in tf-keras.

A subprocess with ``TF_USE_LEGACY_KERAS=1`` runs ``tests/fixtures/make_fixtures.py`` to write
every model of ``tests/fixtures/legacy_zoo.py`` with tf-keras (TF checkpoint, SavedModel,
``.h5`` model and weights); modelkeep loads each into Keras 3 and the test compares
weights and optimizer state exactly, and predictions exactly except where Keras 2 and
Keras 3 compute the same layer differently (``TOLERANCE``). The reverse direction writes
with modelkeep and loads with tf-keras. ``tests/fixtures/tfkeras/`` holds a few files
written the same way, so part of this runs without generating anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.capture import capture, model_variable_keys, optimizer_variable_keys
from modelkeep.errors import UnsupportedModelError
from numerics import STORED_ULPS, assert_close_ulps, keras3_reference

FIXTURES = Path(__file__).parent / "fixtures"
TOOL = FIXTURES / "make_fixtures.py"
COMMITTED = FIXTURES / "tfkeras"

_spec = importlib.util.spec_from_file_location("legacy_zoo", FIXTURES / "legacy_zoo.py")
zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo)
NAMES = list(zoo.BUILDERS)
#: the default run generates these (every layer kind of the issue; ``tutorial`` and
#: ``legacy_adam`` are also committed under fixtures/tfkeras); the slow run generates all
DEFAULT = ["dense_bn_dropout", "conv2d", "conv1d", "embed_bigru_mask", "bilstm", "layernorm_reshape", "multi_io", "nested",
           "mixed_float16"]
#: tf-keras writes SavedModels slowly (recurrent ones: megabytes of traced functions); the
#: default run writes these, the slow run all
FAST_SM = ["multi_io"]
#: the reverse direction's default run: the layers whose names or configs differ in Keras 2
REVERSE = ["bilstm", "embed_bigru_mask", "nested"]

#: Same weights, different arithmetic: the largest difference seen on this machine, rounded up.
TOLERANCE = {
    # Keras 2 runs BatchNormalization on 4-D inputs through TF's fused kernel; Keras 3
    # computes it with separate ops, so the last bit of some outputs differs (seen: 8.9e-8).
    "conv2d": 1.5e-7,
    # Keras 2's LSTM groups the gate matmuls differently from Keras 3's (seen: 6.0e-8).
    "embed_lstm": 1e-7,
    # Keras 2's LayerNormalization uses fused batch norm; Keras 3 uses moments + rsqrt (seen: 4.8e-7).
    "layernorm_reshape": 6e-7,
}
#: the longest reduction each model runs through (``numerics.STORED_ULPS``); "dense" if absent
LAYER_KIND = {"embed_lstm": "recurrent", "embed_bigru_mask": "recurrent", "bilstm": "recurrent"}
#: Keras 3 slot name -> what tf-keras calls it (new optimizers, legacy optimizers)
K2_SLOTS = {"momentum": ("m", "momentum"), "velocity": ("v", "velocity", "rms")}


def _env() -> dict[str, str]:
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_tool(*args: str, timeout: int = 600) -> str:
    done = subprocess.run([sys.executable, str(TOOL), *args], env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Every zoo model written by tf-keras (one subprocess); SavedModels as ``FAST_SM`` says."""
    out = tmp_path_factory.mktemp("tfkeras")
    run_tool("write", str(out), *DEFAULT, "--sm=" + ",".join(FAST_SM))
    return out


@pytest.fixture(scope="module")
def written_all(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tfkeras_all")
    run_tool("write", str(out), *NAMES)
    return out


def _inputs(expected) -> object:
    xs = {k[2:]: expected[k] for k in expected.files if k.startswith("x_")}
    return xs or expected["x"]


def _predictions(model, x) -> list[np.ndarray]:
    got = model.predict(x, verbose=0)
    return got if isinstance(got, list) else [got]


def assert_same_predictions(name: str, model, expected, stored: bool = False) -> None:
    """``model``'s predictions equal, bit for bit, those of the architecture built in code with
    the file's weights (computed here, now); and match tf-keras's ``expected`` predictions:
    bit for bit when tf-keras made them in this run (``TOLERANCE`` where Keras 2 and 3 compute
    differently), within ``numerics.STORED_ULPS`` when they were stored by another run
    (``stored=True``: the committed fixtures)."""
    want = [expected[k] for k in sorted(k for k in expected.files if k.startswith("pred_"))]
    x = _inputs(expected)
    got = _predictions(model, x)
    assert len(got) == len(want)
    weights = [expected[k] for k in expected.files if k.startswith("w/")]
    reference = keras3_reference(zoo.BUILDERS[name], weights, x)
    for g, r in zip(got, reference):
        assert np.array_equal(g, r), f"{name}: max diff {np.max(np.abs(g - r))} from the model built in code"
    for g, w in zip(got, want):
        if stored:
            assert_close_ulps(g, w, STORED_ULPS[LAYER_KIND.get(name, "dense")], name)
        elif name in TOLERANCE:
            np.testing.assert_allclose(g, w, rtol=0, atol=TOLERANCE[name])
        else:
            assert np.array_equal(g, w), f"{name}: max diff {np.max(np.abs(g - w))}"


def _k2_name(path: str, names: list[str]) -> str:
    # Keras 3 and Keras 2 prefix nested names differently ("bidirectional/forward_gru/..." or not)
    hits = [n for n in names if path == n or path.endswith("/" + n) or n.endswith("/" + path)]
    assert len(hits) == 1, f"{path}: {hits}"
    return hits[0]


def assert_weights_match_keras2(model, expected) -> None:
    """Each variable of a model rebuilt from the file's config equals tf-keras's, by name."""
    k2 = {k[2:].removesuffix(":0"): expected[k] for k in expected.files if k.startswith("w/")}
    assert len(model.weights) == len(k2)
    for variable in model.weights:
        assert np.array_equal(variable.numpy(), k2[_k2_name(variable.path, list(k2))]), variable.path


def assert_optimizer_matches_keras2(model, expected) -> None:
    opt = {k[4:].removesuffix(":0"): expected[k] for k in expected.files if k.startswith("opt/")}
    iterations = [v for k, v in opt.items() if k.rsplit("/", 1)[-1] in ("iter", "iteration", "iterations")]
    assert int(model.optimizer.iterations.numpy()) == int(iterations[0]) == 2
    path_of = {k: v.path for k, v in model_variable_keys(model)}
    checked = 0
    for key, variable in optimizer_variable_keys(model):
        if not key.startswith("slots/"):
            continue
        model_key, slot = key[len("slots/") :].rsplit("/", 1)
        names = [n for n in opt if any(f"/{s}/" in f"/{n}/" for s in K2_SLOTS[slot])]
        stripped = {}
        for n in names:
            parts = n.split("/")
            var = "/".join(parts[2:]) if parts[1] in K2_SLOTS[slot] else "/".join(parts[1:-1])
            stripped[var] = opt[n]
        match = _k2_name(path_of[model_key], list(stripped))
        assert np.array_equal(variable.numpy(), stripped[match]), key
        checked += 1
    if checked:  # every slot tf-keras had, besides the iteration count
        assert checked == len(opt) - 1
    else:  # tf-keras's SGD keeps "m" even with momentum=0, where it never matters; Keras 3's has none
        assert type(model.optimizer).__name__ == "SGD" and model.optimizer.momentum == 0


def _structural(model) -> dict[str, np.ndarray]:
    pairs = model_variable_keys(model) + [("opt/" + k, v) for k, v in optimizer_variable_keys(model)]
    return {k: v.numpy() for k, v in pairs}


# ------------------------------------------------------------------ tf-keras -> Keras 3
@pytest.mark.parametrize("name", DEFAULT)
def test_load_model_from_tf_keras_files(written, name):
    """SavedModel dir and .h5 from tf-keras ``model.save``: full Keras 3 models, state and all."""
    check_load_model(written / name, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_load_model_from_tf_keras_files_every_model(written_all, name):
    check_load_model(written_all / name, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_load_weights_from_tf_keras_files_every_model(written_all, name):
    check_load_weights(written_all / name, name)


def check_load_model(folder: Path, name: str) -> None:
    expected = np.load(folder / "expected.npz")
    kinds = [k for k in ("sm", "model.h5") if (folder / k).exists()]
    models = {kind: mk.load_model(folder / kind) for kind in kinds}
    for kind, model in models.items():
        assert isinstance(model, keras.Model) and not isinstance(model, keras.layers.TFSMLayer), kind
        assert model.compiled and model.optimizer is not None, kind
        assert_weights_match_keras2(model, expected)
        assert_optimizer_matches_keras2(model, expected)
        assert_same_predictions(name, model, expected)
    if len(models) == 2:
        a, b = (_structural(m) for m in models.values())
        assert len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a.values(), b.values()))
    # compiled as tf-keras compiled it: one more step runs
    x, y = zoo.make_inputs(name)
    models[kinds[0]].fit(x, y, epochs=1, batch_size=16, verbose=0)


@pytest.mark.parametrize("name", DEFAULT)
def test_load_weights_from_tf_keras_files(written, name):
    """TF checkpoint and .h5 weights from tf-keras into a Keras 3 model built in code."""
    check_load_weights(written / name, name)


def check_load_weights(folder: Path, name: str) -> None:
    expected = np.load(folder / "expected.npz")
    reference = list(_structural(mk.load_model(folder / "model.h5")).items())
    for kind in ("ckpt", "weights.h5"):
        keras.utils.set_random_seed(123)
        model = zoo.BUILDERS[name](keras)
        mk.load_weights(model, folder / kind)
        assert_same_predictions(name, model, expected)
        # same architecture: same order, names may differ; weights files carry no optimizer state
        got = [(k, v) for k, v in _structural(model).items() if kind == "ckpt" or not k.startswith("opt/")]
        want = [(k, v) for k, v in reference if kind == "ckpt" or not k.startswith("opt/")]
        assert len(got) == len(want)
        for (key, value), (_, expected_value) in zip(got, want):
            assert np.array_equal(value, expected_value), (kind, key)
        if kind == "ckpt":  # tf-keras's save_weights kept the optimizer; so does the load
            assert int(model.optimizer.iterations.numpy()) == 2


def test_tf_keras_checkpoint_read_without_model(written):
    """``read`` of a tf-keras checkpoint lists its variables under their Keras 2 paths."""
    from modelkeep.formats import registry

    state = registry.TF_CHECKPOINT.read(written / "bilstm" / "ckpt")
    model_keys = list(state.group("model"))
    assert "layer_with_weights-0/forward_layer/cell/kernel" in model_keys
    assert model_keys.index("layer_with_weights-0/forward_layer/cell/kernel") < model_keys.index(
        "layer_with_weights-0/backward_layer/cell/kernel"
    )
    assert any(k.startswith("optimizer/") for k in state.variables)


def test_other_architecture_is_refused():
    model = zoo.BUILDERS["conv1d"](keras)
    with pytest.raises(mk.IncompatibleModelError, match="different architecture"):
        mk.load_weights(model, COMMITTED / "tutorial" / "ckpt")
    with pytest.raises(mk.IncompatibleModelError, match="different architecture"):
        mk.load_weights(model, COMMITTED / "tutorial" / "weights.h5")


# ------------------------------------------------------------------ committed fixtures
@pytest.mark.parametrize("name", sorted(p.name for p in COMMITTED.iterdir()) if COMMITTED.exists() else [])
def test_committed_fixtures_load(name):
    """Files written by tf-keras 2.21 and kept in the repository load without tf-keras."""
    folder = COMMITTED / name
    expected = np.load(folder / "expected.npz")
    for kind in ("sm", "model.h5"):
        if (folder / kind).exists():
            model = mk.load_model(folder / kind)
            assert_weights_match_keras2(model, expected)
            assert_optimizer_matches_keras2(model, expected)
            assert_same_predictions(name, model, expected, stored=True)
    for kind in ("ckpt", "weights.h5"):
        if Path(str(folder / kind) + (".index" if kind == "ckpt" else "")).exists():
            model = zoo.BUILDERS[name](keras)
            mk.load_weights(model, folder / kind)
            assert_same_predictions(name, model, expected, stored=True)
            if kind == "ckpt":  # built in code, so compare by position with the rebuilt model
                assert int(model.optimizer.iterations.numpy()) == 2


# ------------------------------------------------------------------ Keras 3 -> tf-keras
def test_tf_keras_reads_modelkeep_files(tmp_path):
    """``mk.save_weights(prefix)`` loads with tf-keras ``load_weights``; ``.h5`` with tf-keras ``load_model``."""
    check_reverse(tmp_path, REVERSE)


@pytest.mark.slow
def test_tf_keras_reads_modelkeep_files_every_model(tmp_path):
    check_reverse(tmp_path, NAMES)


def check_reverse(tmp_path: Path, names: list[str]) -> None:
    import tensorflow as tf

    from modelkeep.formats import registry

    for name in names:
        keras.utils.set_random_seed(1)
        model = zoo.BUILDERS[name](keras)
        x, y = zoo.make_inputs(name, seed=3)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        folder = tmp_path / name
        mk.save_weights(model, folder / "mk_ckpt")
        mk.save_model(model, folder / "mk_model.h5")
        arrays = {f"x_{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}
        # a TF checkpoint with optimizer state (what a converter or backup writes)
        registry.TF_CHECKPOINT.write(capture(model), folder / "mk_state")
        slots = [v.numpy() for k, v in optimizer_variable_keys(model) if k != "learning_rate"]
        arrays.update({f"opt_{i}": v for i, v in enumerate(slots)})
        arrays.update({f"pred_{i}": p for i, p in enumerate(_predictions(model, x))})
        np.savez(folder / "mk_expected.npz", **arrays)
    listed = [k for k, _ in tf.train.list_variables(str(tmp_path / "bilstm" / "mk_ckpt"))]
    assert "layer_with_weights-0/forward_layer/cell/kernel/.ATTRIBUTES/VARIABLE_VALUE" in listed
    results = [json.loads(line[7:]) for line in run_tool("read", str(tmp_path), *names).splitlines() if line.startswith("RESULT ")]
    assert len(results) == 3 * len(names)
    problems = []
    for r in results:
        if "error" in r:
            problems.append(f"{r['name']} {r['file']}: {r['error']}")
        elif r["file"] == "mk_state" and "skipped" in r:
            if r["name"] != "legacy_adam":  # built with tf-keras's legacy Adam on purpose
                problems.append(f"{r['name']} mk_state: {r['skipped']}")
        elif r["file"] == "mk_state":
            if r["iterations"] != 2 or not r["optimizer_equal"]:
                problems.append(f"{r['name']} mk_state: optimizer state not restored by tf-keras: {r}")
        elif not r["equal"] and r["max_abs_diff"] > TOLERANCE.get(r["name"], 0.0):
            problems.append(f"{r['name']} {r['file']}: predictions differ by {r['max_abs_diff']}")
        elif r["file"] == "mk_model.h5" and r["iterations"] != 2:
            problems.append(f"{r['name']} {r['file']}: optimizer state lost (iterations={r['iterations']})")
    print(f"tf-keras read {len(results)} modelkeep files, problems: {len(problems)}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ what cannot be carried
@pytest.fixture(scope="module")
def unsupported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unsupported")
    run_tool("write-unsupported", str(out))
    return out


@pytest.mark.parametrize("kind", ["model.h5"])
def test_lambda_layer_is_refused_by_name(unsupported, kind):
    with pytest.raises(UnsupportedModelError, match=r"'double_it' is a Lambda layer.*safe_mode=False.*load_weights"):
        mk.load_model(unsupported / "lambda" / kind)


def test_tf_op_layer_is_translated(unsupported):
    """tf.math.square on a Keras tensor (a TFOpLambda layer) is carried (tests/test_legacy_tfops.py has every op)."""
    model = mk.load_model(unsupported / "tfop" / "model.h5", compile=False)
    kernel, bias = model.get_layer(index=1).get_weights()
    x = np.random.default_rng(0).uniform(-1, 1, (5, 10)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), np.square(x @ kernel + bias), rtol=1e-5, atol=1e-6)


def test_unregistered_class_is_refused_by_name(unsupported):
    with pytest.raises(UnsupportedModelError, match=r"'my_scale' is of class 'MyScale'.*custom_objects"):
        mk.load_model(unsupported / "custom" / "model.h5")


@pytest.mark.parametrize("kind", ["sm", "model.h5"])
def test_custom_class_loads_with_custom_objects(unsupported, kind):
    class MyScale(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, inputs):
            return inputs * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    expected = np.load(unsupported / "custom" / "expected.npz")
    model = mk.load_model(unsupported / "custom" / kind, custom_objects={"MyScale": MyScale})
    assert np.array_equal(model.predict(expected["x"], verbose=0), expected["pred_0"])


def test_subclassed_model_without_config(unsupported):
    """Its architecture cannot be carried; its weights can, into a model built in code."""
    with pytest.raises(UnsupportedModelError, match="no model config.*load_weights"):
        mk.load_model(unsupported / "subclassed" / "sm")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4)
            self.out = keras.layers.Dense(1)

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    expected = np.load(unsupported / "subclassed" / "expected.npz")
    model = Subclassed()
    model(expected["x"][:1])
    mk.load_weights(model, unsupported / "subclassed" / "ckpt")
    assert np.array_equal(model.predict(expected["x"], verbose=0), expected["pred_0"])


# ------------------------------------------------------------------ Keras 3's own .h5 files
@pytest.mark.parametrize("name", ["dense_bn_dropout", "embed_bigru_mask", "nested"])
def test_keras3_h5_files_load_without_keras_faults(tmp_path, name):
    """Keras 3.15 cannot load back its own .h5 for loss="mse" or mask_zero + Bidirectional(GRU); we can."""
    model = zoo.BUILDERS[name](keras)
    x, y = zoo.make_inputs(name)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "keras3.h5")
    loaded = mk.load_model(tmp_path / "keras3.h5")
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert int(loaded.optimizer.iterations.numpy()) == 2
    pairs = zip(optimizer_variable_keys(loaded), optimizer_variable_keys(model))
    assert all(np.array_equal(a.numpy(), b.numpy()) for (_, a), (_, b) in pairs)
