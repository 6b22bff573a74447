"""The issue's "done when" on the real TF2-era files of ``<repo>/../shared/real_files`` (when present).

``tests/legacy/real_files_check.py`` loads every case with tf-keras 2.21 (one subprocess) and with
modelkeep, predicting on the same synthetic input; this test asserts: modelkeep loads every
case tf-keras loads (the ``tf.Module`` SavedModels as inference-only models), predictions
within 1e-5 of tf-keras's, the optimizer state (iterations and every slot) restored where the
file has it, and the Lambda (Python 3.5 bytecode) and the unregistered custom layer refused
by name. Print the table with ``python -m tests.legacy.real_files_check``. Runs in the slow run
(``pytest -m slow tests/test_legacy_real_files.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("real_files_check", Path(__file__).parent / "legacy" / "real_files_check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules["real_files_check"] = check  # its dataclasses look their module up
_spec.loader.exec_module(check)

#: ~45 s of CPU (tf-keras loads 29 cases in a subprocess, then modelkeep): the slow run
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "real_files"


@pytest.fixture(scope="module")
def rows() -> dict[str, dict]:
    if not (ROOT / "SOURCES.md").exists():
        pytest.skip(f"no real files at {ROOT} (../shared/real_files is not on this machine)")
    table = check.measure(ROOT)
    check.print_table(table)
    return {r["case"]: r for r in table}


def test_every_file_tf_keras_loads_loads_with_the_same_predictions(rows):
    problems = []
    for name, r in rows.items():
        if r["tf_keras"] != "ok":
            continue
        if not r["mk"].startswith("ok"):
            problems.append(f"{name}: tf-keras loads it, modelkeep: {r['mk']}")
        elif r["diff"] is None or not r["diff"] <= 1e-5:
            problems.append(f"{name}: predictions differ from tf-keras's by {r['diff']}")
    assert not problems, "\n".join(problems)


def test_modules_are_inference_models(rows):
    modules = [c.name for c in check.CASES if c.kind == "module"]
    assert all(rows[n].get("class") == "InferenceOnlyModel" for n in modules), {n: rows[n]["mk"] for n in modules}


def test_optimizer_state_restored_where_the_file_has_it(rows):
    with_state = {n: r for n, r in rows.items() if "optimizer_restored" in r}
    assert len(with_state) >= 15
    assert all(r["optimizer_restored"] for r in with_state.values()), {n: r["optimizer"] for n, r in with_state.items()}


def test_what_cannot_be_carried_is_refused_by_name(rows):
    refused = {c.name: c.refuse for c in check.CASES if c.refuse}
    assert refused
    for name, cls in refused.items():
        assert rows[name]["mk"].startswith("refused by name") and cls in rows[name]["error"], rows[name]["mk"]
        assert "allow_pickle" not in rows[name].get("error", "")


def test_no_notice_for_arguments_at_their_default(rows):
    texts = [t for r in rows.values() for t in r.get("warning_texts", []) if "has no argument" in t]
    assert not texts, texts


def test_tf1_savedmodel_predicts_half_plus_two(rows):
    """tf-keras cannot load the TF1 SavedModel; modelkeep runs its signature: y = x / 2 + 2."""
    import numpy as np

    import modelkeep as mk

    case = next(c for c in check.CASES if c.name == "tf1-serving-half-plus-two")
    model = mk.load_model(ROOT / check.F / case.file)
    x = np.array([[1.0], [2.0], [-4.0]], "float32")
    assert np.array_equal(model.predict(x, verbose=0), x * 0.5 + 2.0)
