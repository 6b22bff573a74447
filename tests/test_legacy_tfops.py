"""tf.keras's ``TFOpLambda`` layers (``tf.*`` calls and operators on Keras tensors) and TF 2.0-2.3's
``TensorFlowOpLayer`` (raw graph ops) load and predict what tf-keras predicts: one model per op
family of ``legacy_tfops``' table, written by tf-keras 2.21 (``tests/legacy/tfop_cases.py``) as
``.h5``, tf-keras ``.keras`` and SavedModel, compared with tf-keras's outputs computed in the same
run, bit for bit (dtype and shape included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.errors import UnsupportedModelError
from modelkeep.formats import legacy_tfops

TOOL = Path(__file__).parent / "legacy" / "tfop_cases.py"
FAMILIES = ["shapes", "ellipsis", "math_unary", "reductions", "nn_linalg", "dtypes_dynamic", "more"]
FAMILIES.append("raw_ops")  # TF 2.0-2.3's TensorFlowOpLayer (raw graph ops), written by tf-keras in graph mode
FORMATS = {"shapes": (".h5", ".keras", "_savedmodel"), "ellipsis": (".h5", "_savedmodel"), "raw_ops": (".h5",)}


@pytest.fixture(scope="session")
def written(tmp_path_factory) -> Path:
    pytest.importorskip("tf_keras")
    out = tmp_path_factory.mktemp("tfops")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    for mode in ([], ["graph"]):
        done = subprocess.run([sys.executable, str(TOOL), str(out), *mode], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


def _reference(written: Path, family: str) -> tuple[list, list]:
    ref = np.load(written / f"{family}.npz")
    xs = [ref[f"x{i}"] for i in range(sum(k.startswith("x") for k in ref.files))]
    return xs, [ref[f"out{i}"] for i in range(sum(k.startswith("out") for k in ref.files))]


def _assert_same(model, xs: list, want: list, what: str) -> None:
    got = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        assert (g.shape, g.dtype) == (w.shape, w.dtype), f"{what} output {i}: {g.shape} {g.dtype} != {w.shape} {w.dtype}"
        assert np.array_equal(g, w, equal_nan=True), f"{what} output {i}: max diff {np.max(np.abs(g - w))}"


@pytest.mark.parametrize("family,ext", [(f, e) for f in FAMILIES for e in FORMATS.get(f, (".h5", ".keras"))])
def test_tf_op_family_predicts_as_tf_keras(written, family, ext):
    """Every op of the family (a model with one output per call) predicts tf-keras's numbers exactly."""
    xs, want = _reference(written, family)
    model = mk.load_model(written / f"{family}{ext}", compile=False)
    assert sum(isinstance(layer, legacy_tfops.layer_class()) for layer in model.layers) >= len(want) // 2
    _assert_same(model, xs, want, f"{family}{ext}")


def test_translated_ops_saved_again_load_in_a_fresh_registry(written, tmp_path):
    """A model with translated ops, saved by modelkeep (.keras and .h5), loads where nothing registered TFOp yet."""
    xs, want = _reference(written, "shapes")
    model = mk.load_model(written / "shapes.h5", compile=False)
    for path in (tmp_path / "again.keras", tmp_path / "again.h5"):
        mk.save_model(model, path)
        keras.saving.get_custom_objects().pop(legacy_tfops.REGISTERED, None)
        legacy_tfops._LAYER = None
        _assert_same(mk.load_model(path, compile=False), xs, want, path.name)


READ_BACK = """
import sys
import numpy as np
import tf_keras as K
ref = np.load(sys.argv[2])
xs = [ref[f"x{i}"] for i in range(sum(k.startswith("x") for k in ref.files))]
got = K.models.load_model(sys.argv[1], compile=False).predict(xs, verbose=0)
np.savez(sys.argv[3], **{f"out{i}": np.asarray(g) for i, g in enumerate(got)})
"""


@pytest.mark.parametrize("family", ["shapes", "nn_linalg"])
def test_h5_written_by_modelkeep_loads_in_tf_keras_as_tf_op_layers(written, tmp_path, family):
    """modelkeep writes translated ops back as TFOpLambda/SlicingOpLambda: tf-keras loads the .h5 and predicts the same."""
    model = mk.load_model(written / f"{family}.h5", compile=False)
    mk.save_model(model, tmp_path / "again.h5")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", READ_BACK, str(tmp_path / "again.h5"), str(written / f"{family}.npz"),
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    _, want = _reference(written, family)
    assert all(np.array_equal(got[f"out{i}"], w) for i, w in enumerate(want))


@pytest.mark.parametrize("name,pattern", [
    ("unknown", r"'tf.linalg.band_part' \(TFOpLambda\).*tf.linalg.band_part, which has no Keras 3 translation.*keras.ops.*load_weights"),
    ("unknown_argument", r"'tf.math.cumsum_1' \(TFOpLambda\).*tf.math.cumsum, with exclusive=True.*load_weights"),
    ("unknown_rank", r"'tf.compat.v1.squeeze_\d+' \(TFOpLambda\).*without an axis on a tensor of unknown shape.*load_weights"),
    ("raw_unknown", r"'tf_op_layer_MatrixBandPart' \(TensorFlowOpLayer\).*raw TensorFlow op MatrixBandPart.*load_weights"),
])
def test_untranslatable_call_is_refused_by_name(written, name, pattern):
    with pytest.raises(UnsupportedModelError, match=pattern):
        mk.load_model(written / f"{name}.h5")


def test_nothing_is_evaluated_a_function_name_is_only_looked_up():
    """A config naming a Python expression as its function is refused by name, never run."""
    entry = {"class_name": "TFOpLambda", "name": "evil", "config": {"name": "evil", "function": "__import__('os').system"},
             "inbound_nodes": [["input_1", 0, 0, {}]]}
    with pytest.raises(UnsupportedModelError, match=r"'evil' \(TFOpLambda\).*no Keras 3 translation"):
        legacy_tfops.to_keras3_layer(entry)


def test_unknown_argument_and_constant_first_operand():
    """An argument the table does not know is refused; ``3.0 - x`` keeps its constant first."""
    node = ["dense", 0, 0, {"shape": [-1], "bogus": 1}]
    entry = {"class_name": "TFOpLambda", "name": "tf.reshape", "config": {"function": "reshape"}, "inbound_nodes": [node]}
    with pytest.raises(UnsupportedModelError, match=r"'tf.reshape' .*argument 'bogus'"):
        legacy_tfops.to_keras3_layer(entry)
    entry = {"class_name": "TFOpLambda", "name": "tf.math.subtract", "config": {"function": "math.subtract"},
             "inbound_nodes": [["_CONSTANT_VALUE", -1, 3.0, {"y": ["dense", 0, 0], "name": None}]]}
    node = legacy_tfops.to_keras3_layer(entry)["inbound_nodes"][0]
    assert node["kwargs"]["spec"] == '{"x": 3.0, "y": {"__tensor__": 0}}'
    assert node["args"][0][0]["config"]["keras_history"] == ["dense", 0, 0]
