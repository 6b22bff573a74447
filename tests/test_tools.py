"""The library behind the ``modelkeep`` command (``modelkeep.tools``), tested in-process on
real files of every format (the CLI itself is tested end to end in ``test_cli.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelkeep.errors import FormatError, IncompatibleModelError, ModelkeepError, UnsupportedModelError
from modelkeep.state import ModelState
from modelkeep.tools import convert, describe, diff_paths, diff_states, list_run, read_state, verify_paths
from modelkeep.tools import predict as predict_tools
from modelkeep.tools.plot import plot_run
from saved_files import FORMAT_NAMES, copy_saved, files_of, flip_bit, make_all, truncate

# formats that check their own bytes (crc32c, zip CRC-32, SavedModel fingerprint): a flipped
# bit is caught without a manifest. HDF5 and safetensors keep no checksum of the numbers.
SELF_CHECKING = ("tf_checkpoint", "savedmodel", "keras")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("saved"))


def _model_arrays(model):
    return [np.asarray(v.numpy()) for v in model.weights]


# ------------------------------------------------------------------------------ inspect
def test_describe_every_format(saved):
    weights = _model_arrays(saved.model)
    for key, path in saved.paths.items():
        info = describe(path)
        assert info["format"] == FORMAT_NAMES[key], key
        model_vars = [v for v in info["variables"] if v["group"] == "model"]
        assert [tuple(v["shape"]) for v in model_vars] == [w.shape for w in weights], key
        assert all(v["size"] == int(np.prod(v["shape"])) * 4 for v in model_vars), key
        assert info["total_size"] == sum(f.stat().st_size for f in files_of(path)), key
        if key != "weights_h5":  # Keras 3 .weights.h5 holds no architecture
            assert info["model"]["total_params"] == saved.model.count_params(), key
            assert [layer["name"] for layer in info["model"]["layers"]] == ["features", "hidden", "score"], key
        if key in ("savedmodel", "h5_model", "keras", "backup"):
            assert info["optimizer"]["class"] == "Adam" and info["optimizer"]["iterations"] > 0, key
            assert info["compile"]["loss"] == "mse", key
    json.dumps(describe(saved.paths["savedmodel"]))  # plain data


def test_describe_saved_model_signatures(saved):
    signatures = describe(saved.paths["savedmodel"])["signatures"]
    assert "serving_default" in signatures
    sig = signatures["serving_default"]
    assert [spec["shape"] for spec in sig["inputs"].values()] == [[None, 4]]
    assert [spec["dtype"] for spec in sig["outputs"].values()] == ["float32"]
    assert [spec["shape"] for spec in sig["outputs"].values()] == [[None, 1]]


def test_describe_backup_metadata(saved):
    info = describe(saved.backup(30))
    assert info["metadata"]["step"] == 30 and info["metadata"]["logs"]["val_loss"] == 0.4


# ------------------------------------------------------------------------------ verify
def test_verify_intact_files_and_run(saved):
    results = verify_paths([*saved.paths.values(), *saved.signed.values(), saved.run])
    assert all(r.ok for r in results), [(r.path, r.problem) for r in results if not r.ok]
    signed = [r for r in results if r.path.parent.name == "signed"]
    assert signed and all(any(c.startswith("manifest:") for c in r.checks) for r in signed)


@pytest.mark.parametrize("key", list(FORMAT_NAMES))
def test_verify_catches_flipped_bit_in_every_file_with_manifest(saved, tmp_path, key):
    src = saved.signed[key]
    for i, file in enumerate(files_of(src)):
        if file.name == "manifest.json":
            continue
        copy = copy_saved(src, tmp_path / f"c{i}" / src.name)
        flip_bit(files_of(copy)[i])
        [result] = verify_paths([copy])
        assert not result.ok, (key, file.name)
        assert files_of(copy)[i].name in result.problem, (key, result.problem)


@pytest.mark.parametrize("key", SELF_CHECKING)
def test_verify_catches_flipped_bit_without_manifest(saved, tmp_path, key):
    src = saved.paths[key]
    for i, file in enumerate(files_of(src)):
        # modelkeep's side files of a SavedModel carry no checksum of their own (a manifest covers them)
        if file.name in ("fingerprint.pb", "modelkeep.json", "modelkeep_optimizer.safetensors"):
            continue
        copy = copy_saved(src, tmp_path / f"c{i}" / src.name)
        flip_bit(files_of(copy)[i], where=0.6)
        [result] = verify_paths([copy])
        assert not result.ok, (key, file.name)


@pytest.mark.parametrize("key", list(FORMAT_NAMES))
def test_verify_catches_truncation_without_manifest(saved, tmp_path, key):
    src = saved.paths[key]
    copy = copy_saved(src, tmp_path / src.name)
    target = max(files_of(copy), key=lambda f: f.stat().st_size)
    truncate(target)
    [result] = verify_paths([copy])
    assert not result.ok, key
    assert result.problem


def test_verify_directory_names_the_bad_checkpoint(saved, tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        copy_saved(saved.backup(step), run / saved.backup(step).name)
    flip_bit(run / saved.backup(20).name / "state.safetensors")
    results = verify_paths([run])
    bad = [r for r in results if not r.ok]
    assert [r.path.name for r in bad] == [saved.backup(20).name]
    assert "CRC-32" in bad[0].problem and "state.safetensors" in bad[0].problem


def test_verify_missing_half_of_tf_checkpoint(saved, tmp_path):
    copy = copy_saved(saved.paths["tf_checkpoint"], tmp_path / "ckpt")
    (tmp_path / "ckpt.data-00000-of-00001").unlink()
    [result] = verify_paths([copy])
    assert not result.ok and "missing" in result.problem


# ------------------------------------------------------------------------------ diff
def test_diff_same_model_across_formats_is_identical(saved):
    for key in ("savedmodel", "h5_model"):
        report = diff_paths(saved.paths["keras"], saved.paths[key])
        assert report.identical and report.config_equal, (key, [(v.name, v.status) for v in report.variables if v.status != "equal"])
        assert len(report.equal) == 4 + len(saved.model.optimizer.variables), key
    weights_only = diff_paths(saved.paths["tf_checkpoint"], saved.paths["safetensors"])
    assert weights_only.identical and len(weights_only.equal) == 4


def test_diff_weights_h5_matched_by_position(saved):
    report = diff_paths(saved.paths["weights_h5"], saved.paths["keras"])
    assert report.matched_by == "position" and report.identical


def test_diff_two_checkpoints_reports_exact_differences(saved):
    report = diff_paths(saved.backup(10), saved.backup(40))
    _, a = read_state(saved.backup(10))
    _, b = read_state(saved.backup(40))
    assert not report.identical
    by_name = {v.name: v for v in report.variables}
    kernel = "model/layer_with_weights-0/kernel"
    expected = float(np.max(np.abs(a.variables[kernel].astype(np.float64) - b.variables[kernel])))
    assert by_name[kernel].status == "changed" and by_name[kernel].max_abs == expected
    assert by_name[kernel].max_rel == expected / float(np.max(np.abs(a.variables[kernel])))
    assert by_name["optimizer/iteration"].max_abs == float(b.variables["optimizer/iteration"] - a.variables["optimizer/iteration"])


def test_diff_states_added_removed_reshaped_retyped():
    a = ModelState({"model/a": np.zeros((2, 3), "float32"), "model/b": np.ones(4, "float32"), "model/c": np.ones(2, "float32"),
                    "model/d": np.ones(2, "float32")})
    b = ModelState({"model/a": np.zeros((3, 2), "float32"), "model/b": np.ones(4, "float32"), "model/e": np.ones(1, "float32"),
                    "model/d": np.ones(2, "float16")})
    report = diff_states(a, b)
    assert [v.name for v in report.reshaped] == ["model/a"]
    assert [v.name for v in report.removed] == ["model/c"]
    assert [v.name for v in report.added] == ["model/e"]
    assert [v.name for v in report.changed] == ["model/d"]  # same values, other dtype
    assert [v.name for v in report.equal] == ["model/b"] and not report.identical
    assert report.as_dict()["counts"] == {"equal": 1, "changed": 1, "reshaped": 1, "added": 1, "removed": 1}


# ------------------------------------------------------------------------------ convert
CONVERSIONS = [
    ("keras", "exported2", "SavedModel", True),
    ("savedmodel", "m2.h5", "HDF5", True),
    ("h5_model", "m2.keras", "Keras zip (.keras)", True),
    ("backup", "ckpt2", "TF checkpoint", True),
    ("tf_checkpoint", "w2.safetensors", "safetensors", False),
    ("safetensors", "w2.h5", "HDF5", False),
    ("keras", "w3.weights.h5", "Keras weights (.weights.h5)", False),  # the registry: it keeps no optimizer state
]


@pytest.mark.parametrize("key,dst,fmt,optimizer", CONVERSIONS, ids=[f"{c[0]}->{c[1]}" for c in CONVERSIONS])
def test_convert_carries_every_variable_exactly(saved, tmp_path, key, dst, fmt, optimizer):
    src = saved.paths[key]
    result = convert(src, tmp_path / dst)
    assert result.format_dst == fmt and result.checked
    assert result.optimizer_carried == optimizer
    _, before = read_state(src)
    like = saved.paths["keras"] if dst.endswith(".weights.h5") else None
    _, after = read_state(tmp_path / dst, like=like)
    for name, array in before.group("model").items():
        assert np.array_equal(after.variables["model/" + name], array), name
    if optimizer and not dst.endswith(".weights.h5"):
        assert before.group("optimizer").keys() == after.group("optimizer").keys()
        for name, array in before.group("optimizer").items():
            assert np.array_equal(after.variables["optimizer/" + name], array), name
    [check] = verify_paths([tmp_path / dst])
    assert check.ok and any(c.startswith("manifest:") for c in check.checks)


def test_converted_model_predicts_like_the_original(saved, tmp_path):
    import modelkeep as mk

    convert(saved.paths["backup"], tmp_path / "model.keras", kind="model")
    _, state = read_state(saved.paths["backup"])
    original = mk.load_model(saved.paths["keras"])
    from modelkeep.capture import restore

    restore(original, state)
    loaded = mk.load_model(tmp_path / "model.keras")
    assert np.array_equal(loaded.predict(saved.x, verbose=0), original.predict(saved.x, verbose=0))


def test_convert_refuses_what_it_cannot_do(saved, tmp_path):
    from safetensors.numpy import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"kernel": np.ones((2, 2), "float32")}, str(bare))
    with pytest.raises(UnsupportedModelError, match="architecture"):
        convert(bare, tmp_path / "m.keras")
    with pytest.raises(FileExistsError):
        convert(saved.paths["keras"], saved.paths["h5_model"])
    with pytest.raises(FormatError):
        convert(saved.paths["keras"], tmp_path / "w.safetensors", kind="model")
    result = convert(saved.paths["h5_model"], tmp_path / "w.h5", kind="weights")
    assert not result.optimizer_carried and result.notes
    with pytest.raises(UnsupportedModelError, match="--like"):
        convert(saved.paths["weights_h5"], tmp_path / "from_weights.keras")
    result = convert(saved.paths["keras"], tmp_path / "no_opt.keras", include_optimizer=False)
    assert not result.optimizer_carried
    fresh = read_state(tmp_path / "no_opt.keras")[1].group("optimizer")  # Keras rebuilds a new, unused optimizer
    assert not fresh or (int(fresh["iteration"]) == 0 and not any(v.any() for k, v in fresh.items() if k.startswith("slots/")))
    result = convert(saved.paths["weights_h5"], tmp_path / "through.safetensors", like=saved.paths["keras"])
    assert read_state(tmp_path / "through.safetensors")[1].group("model").keys() == read_state(saved.paths["keras"])[1].group("model").keys()


# ------------------------------------------------------------------------------ predict
def test_read_array_csv_with_and_without_header(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    (tmp_path / "plain.csv").write_text("\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n")
    (tmp_path / "header.csv").write_text("a,b,c\n" + (tmp_path / "plain.csv").read_text())
    np.save(tmp_path / "x.npy", x)
    for name in ("plain.csv", "header.csv", "x.npy"):
        assert np.array_equal(predict_tools.read_array(tmp_path / name), x), name
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(FormatError, match="columns"):
        predict_tools.read_array(tmp_path / "ragged.csv")


def test_predict_files_batches_and_writes(saved, tmp_path):
    import modelkeep as mk

    np.save(tmp_path / "x.npy", saved.x)
    expected = mk.load_model(saved.paths["keras"]).predict(saved.x, verbose=0)
    seen = []
    for batch_size in (1, 7, 64, 1000):
        result = predict_tools.predict_files(saved.paths["savedmodel"], [tmp_path / "x.npy"], batch_size=batch_size,
                                             on_progress=lambda done, total: seen.append((done, total)))
        assert np.allclose(result.outputs[0], expected, rtol=0, atol=1e-6), batch_size
    assert seen[-1] == (64, 64) and (7, 64) in seen
    result = predict_tools.predict_files(saved.paths["keras"], [tmp_path / "x.npy"], output=tmp_path / "y.csv")
    assert result.names == ["score"]
    assert (tmp_path / "y.csv").read_text().splitlines()[0] == "score_0"
    assert np.array_equal(predict_tools.read_array(tmp_path / "y.csv"), result.outputs[0].astype(np.float64))


def test_predict_multi_output_and_wrong_width(tmp_path):
    import keras

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, [keras.layers.Dense(1, name="a")(inputs), keras.layers.Dense(2, name="b")(inputs)])
    import modelkeep as mk

    mk.save_model(model, tmp_path / "two.keras")
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    result = predict_tools.predict_files(tmp_path / "two.keras", [tmp_path / "x.npy"], output=tmp_path / "y.npz")
    assert result.names == ["a", "b"]
    saved = np.load(tmp_path / "y.npz")
    for got, want in zip((saved["a"], saved["b"]), model.predict(x, verbose=0)):
        assert np.allclose(got, want, atol=1e-6)
    with pytest.raises(FormatError, match="npz"):
        predict_tools.write_outputs(tmp_path / "y.npy", result.outputs, result.names)
    np.save(tmp_path / "wide.npy", np.zeros((2, 5), "float32"))
    with pytest.raises(IncompatibleModelError, match="shape"):
        predict_tools.predict_files(tmp_path / "two.keras", [tmp_path / "wide.npy"])


# ------------------------------------------------------------------------------ runs, plot
def test_list_run_best_and_monitor(saved):
    run = list_run(saved.run)
    assert [c.step for c in run.checkpoints] == [40, 30, 20, 10]
    assert run.monitor == "val_loss" and run.mode == "min" and run.best.step == 30
    assert list_run(saved.run, monitor="accuracy").best.step == 40
    assert list_run(saved.run, monitor="loss", mode="max").best.step == 10
    doc = run.as_dict()
    assert [row["best"] for row in doc["checkpoints"]] == [False, True, False, False]
    assert all(row["status"] == "ok" and row["age_seconds"] >= 0 for row in doc["checkpoints"])


def test_plot_run_writes_png(saved, tmp_path):
    info = plot_run(saved.run, tmp_path / "curves.png")
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert info["metrics"] == ["accuracy", "loss", "val_loss"] and info["best"].endswith("ckpt-000000030")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelkeepError, match="no checkpoint"):
        plot_run(empty, tmp_path / "none.png")


def test_savedmodel_without_keras_part_inspect_verify_predict(tmp_path):
    import tensorflow as tf

    class Plain(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.reshape(tf.range(6, dtype=tf.float32), (3, 2)))

        @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.matmul(x, self.w)}

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures=module.__call__)
    info = describe(tmp_path / "plain")
    assert info["format"] == "SavedModel" and "without a Keras part" in info["note"]
    assert [(v["name"], v["shape"]) for v in info["variables"]] == [("model/w", [3, 2])]
    assert info["signatures"]["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": [None, 3]}}
    assert info["signatures"]["serving_default"]["outputs"] == {"y": {"dtype": "float32", "shape": [None, 2]}}
    [result] = verify_paths([tmp_path / "plain"])
    assert result.ok
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    np.save(tmp_path / "x.npy", x)
    predicted = predict_tools.predict_files(tmp_path / "plain", [tmp_path / "x.npy"], batch_size=2)
    assert predicted.names == ["y"]
    assert np.array_equal(predicted.outputs[0], x @ np.arange(6, dtype=np.float32).reshape(3, 2))
