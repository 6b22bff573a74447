"""Files written by real tf.keras 2.13 and 2.15 (``tests/fixtures/tf2x/``, see its README): their
``.keras`` zips (2.13 keeps layer weights under ``_layer_checkpoint_dependencies``, with gaps in
the numbering), HDF5 under a ``.keras`` name, and Keras SavedModels load with the weights,
optimizer state and predictions the generator recorded."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import modelkeep as mk
from numerics import STORED_ULPS, assert_close_ulps

ROOT = Path(__file__).parent / "fixtures" / "tf2x"
CASES = [("seq.keras", "seq_expected.npz", "recurrent"), ("model.keras", "expected.npz", "recurrent"),
         ("model_h5.keras", "expected.npz", "recurrent"), ("sm", "sm_expected.npz", "dense")]


@pytest.mark.parametrize("version", ["tf2.13", "tf2.15"])
@pytest.mark.parametrize("name,record,kind", CASES)
def test_real_tf2x_file_loads_as_written(version, name, record, kind):
    ref = np.load(ROOT / version / record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipping nested container" / "could not load" notice
        model = mk.load_model(ROOT / version / name)
    stored = [ref[f"w{i}"] for i in range(sum(k.startswith("w") for k in ref.files))]
    got = model.get_weights()
    assert len(got) == len(stored) and all(np.array_equal(g, w) for g, w in zip(got, stored)), "weights differ"
    slots = [ref[f"opt{i}"] for i in range(sum(k.startswith("opt") for k in ref.files))]
    variables = [v.numpy() for v in model.optimizer.variables]
    assert int(variables[0]) == int(slots[0]) == 2  # iterations
    # Keras 3 keeps the learning rate as its second variable; the slots follow in tf.keras's order
    assert len(variables) == len(slots) + 1
    assert all(np.array_equal(g, w) for g, w in zip(variables[2:], slots[1:])), "optimizer slots differ"
    assert_close_ulps(model.predict(ref["x"], verbose=0), ref["pred"], STORED_ULPS[kind], f"{version}/{name}")
