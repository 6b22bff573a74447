"""A tf-keras ``.h5`` with a ``Lambda`` layer: refused by default; with ``safe_mode=False`` it loads
and predicts as tf-keras did when the bytecode is this Python's, and otherwise the error says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import modelkeep as mk
from modelkeep.errors import UnsupportedModelError

WRITE = """
import sys
import numpy as np
import tf_keras as K
inputs = K.Input((3,))
hidden = K.layers.Dense(2, name="d")(inputs)
out = K.layers.Lambda(lambda t: t * 2.0 + 1.0, name="double_it", output_shape=(2,))(hidden)
model = K.Model(inputs, out)
model.compile(optimizer="sgd", loss="mse")
model.save(sys.argv[1] + "/lambda.h5")
x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
np.save(sys.argv[1] + "/x.npy", x)
np.save(sys.argv[1] + "/y.npy", model.predict(x, verbose=0))
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    pytest.importorskip("tf_keras")
    out = tmp_path_factory.mktemp("lambda")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", WRITE, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_refused_by_default(written):
    with pytest.raises(UnsupportedModelError, match=r"'double_it' is a Lambda layer.*safe_mode=False"):
        mk.load_model(written / "lambda.h5")


def test_safe_mode_false_loads_and_predicts_as_tf_keras(written):
    model = mk.load_model(written / "lambda.h5", safe_mode=False)
    x, expected = np.load(written / "x.npy"), np.load(written / "y.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)


def test_bytecode_of_another_python_is_refused_saying_why(written, tmp_path):
    """Bytecode this Python cannot read: the error names the layer, the Python version and the way out."""
    copy = tmp_path / "other_python.h5"
    copy.write_bytes((written / "lambda.h5").read_bytes())
    with h5py.File(copy, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"][0] = "/w8AAAB6"  # marshal data of no Python
        f.attrs["model_config"] = json.dumps(config)
    version = f"Python {sys.version_info.major}.{sys.version_info.minor} cannot read"
    with pytest.raises(UnsupportedModelError, match=rf"'double_it' .*bytecode that {version} .*another one.*load_weights"):
        mk.load_model(copy, safe_mode=False)
