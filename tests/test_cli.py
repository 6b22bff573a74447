"""End to end: the INSTALLED ``modelkeep`` command, in a subprocess, on real files of every
format (TF checkpoint, SavedModel, HDF5 weights and model, .keras, .weights.h5, safetensors,
``ckpt-<step>/`` backups, and the tf-keras-written fixtures when they are committed).

Each call imports TensorFlow (~3-5 s), so the calls are few and each covers many files;
the library behind them is tested in-process in ``test_tools.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelkeep.tools import read_state
from saved_files import FORMAT_NAMES, copy_saved, files_of, flip_bit, make_all, truncate

MODELKEEP = Path(sys.executable).parent / "modelkeep"
FIXTURES = Path(__file__).parent / "fixtures"
SELF_CHECKING = ("tf_checkpoint", "savedmodel", "keras")


def mk(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([str(MODELKEEP), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def mk_json(*args: object, code: int = 0) -> object:
    proc = mk(*args, "--json")
    assert proc.returncode == code, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("cli"))


def test_command_is_installed_and_documents_exit_codes():
    assert MODELKEEP.exists(), f"{MODELKEEP} missing: pip install -e . installs the console script"
    proc = mk("--help")
    assert proc.returncode == 0
    assert "exit status" in proc.stdout and "2  bad command-line usage" in proc.stdout
    for name in ("ls", "inspect", "verify", "diff", "convert", "prune", "predict", "plot"):
        assert f"    {name} " in proc.stdout, name


def test_every_subcommand_help_has_an_example():
    from modelkeep.cli.main import build_parser

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for name in ("ls", "inspect", "verify", "diff", "convert", "prune", "predict", "plot"):
        text = choices[name].format_help()
        assert "Example" in text and f"modelkeep {name} " in text, name
    for name in ("ls", "inspect", "verify", "diff"):
        assert "--json" in choices[name].format_help(), name


def test_usage_error_exits_2(saved):
    proc = mk("prune", saved.run)  # no retention rule
    assert proc.returncode == 2 and "give at least one rule" in proc.stderr


def test_error_is_one_line_exit_1(tmp_path):
    proc = mk("inspect", tmp_path / "nothere.h5")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("modelkeep inspect: error:")]
    assert len(errors) == 1 and "nothere.h5" in errors[0] and "Traceback" not in proc.stderr


def test_ls_json_and_table(saved):
    doc = mk_json("ls", saved.run)
    rows = doc["checkpoints"]
    assert [r["step"] for r in rows] == [40, 30, 20, 10] and all(r["status"] == "ok" for r in rows)
    assert doc["monitor"] == "val_loss" and [r["best"] for r in rows] == [False, True, False, False]
    assert rows[1]["logs"] == {"loss": 0.3, "val_loss": 0.4, "accuracy": 0.8} and rows[0]["size"] > 0
    proc = mk("ls", saved.run, "--monitor", "accuracy")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    best = [line for line in lines if line.lstrip().startswith("*") and "ckpt-" in line and "best by" not in line]
    assert len(best) == 1 and "ckpt-000000040" in best[0]
    assert "best by accuracy (max): ckpt-000000040" in proc.stdout


def test_inspect_every_format(saved):
    keys = list(FORMAT_NAMES)
    docs = mk_json("inspect", *(saved.paths[k] for k in keys))
    assert [d["format"] for d in docs] == [FORMAT_NAMES[k] for k in keys]
    for key, doc in zip(keys, docs):
        shapes = [v["shape"] for v in doc["variables"] if v["group"] == "model"]
        assert shapes == [[4, 8], [8], [8, 1], [1]], key
        if key != "weights_h5":
            assert doc["model"]["total_params"] == 49, key
    sm = docs[keys.index("savedmodel")]
    assert sm["signatures"]["serving_default"]["outputs"] and sm["optimizer"]["class"] == "Adam"
    proc = mk("inspect", saved.paths["savedmodel"])
    assert proc.returncode == 0
    for text in ("SavedModel", "hidden", "Dense", "(None, 8)", "Optimizer: Adam", "Signature 'serving_default'", "float32"):
        assert text in proc.stdout, text


def test_verify_intact_exit_0(saved):
    doc = mk_json("verify", saved.root / "files", saved.root / "signed", saved.run)
    assert doc["ok"] and doc["failed"] == 0
    checked = {Path(r["path"]).name for r in doc["results"]}
    assert {p.name for p in saved.paths.values()} <= checked | {saved.backup(40).name}
    assert len(doc["results"]) >= 2 * 7 + 4


def test_verify_catches_flipped_bits(saved, tmp_path):
    """With a manifest every format; without one, the formats that checksum themselves."""
    targets = {}
    for key in FORMAT_NAMES:  # the largest file of each, manifests present
        copy = copy_saved(saved.signed[key], tmp_path / "signed" / f"flip_{saved.signed[key].name}")
        file = max((f for f in files_of(copy) if f.name != "manifest.json"), key=lambda f: f.stat().st_size)
        flip_bit(file)
        targets[str(copy)] = file.name
    for key in SELF_CHECKING:
        copy = copy_saved(saved.paths[key], tmp_path / "bare" / f"flip_{saved.paths[key].name}")
        file = [f for f in files_of(copy) if ".data-" in f.name or f.suffix == ".keras"][0]
        flip_bit(file)
        targets[str(copy)] = file.name
    doc = mk_json("verify", *targets, code=1)
    results = {r["path"]: r for r in doc["results"]}
    assert set(results) == set(targets) and doc["failed"] == len(targets)
    for path, file_name in targets.items():
        assert not results[path]["ok"] and file_name in results[path]["problem"], (path, results[path]["problem"])


def test_verify_catches_truncation(saved, tmp_path):
    targets = []
    for key in FORMAT_NAMES:  # no manifests: the format's own checks
        copy = copy_saved(saved.paths[key], tmp_path / f"cut_{saved.paths[key].name}")
        truncate(max(files_of(copy), key=lambda f: f.stat().st_size))
        targets.append(str(copy))
    doc = mk_json("verify", *targets, code=1)
    assert doc["failed"] == len(targets) == len(doc["results"])
    assert all(r["problem"] for r in doc["results"])


def test_verify_directory_human_names_the_bad_one(saved, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved.run, run)
    truncate(run / saved.backup(20).name / "state.safetensors")
    proc = mk("verify", run)
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "1 of 4 failed" in proc.stdout and saved.backup(20).name in proc.stdout


def test_diff(saved):
    doc = mk_json("diff", saved.paths["keras"], saved.paths["savedmodel"])
    assert doc["identical"] and doc["counts"]["equal"] == 4 + len(saved.model.optimizer.variables)
    proc = mk("diff", saved.backup(10), saved.backup(40), "--exit-code")
    assert proc.returncode == 1  # --exit-code: differ -> 1 (without it, 0)
    assert "changed" in proc.stdout and "model/layer_with_weights-0/kernel" in proc.stdout


def test_convert(saved, tmp_path):
    # two calls here; the whole conversion matrix runs in-process in test_tools.py
    cases = [("keras", "exported2", True), ("tf_checkpoint", "w2.safetensors", False)]
    for key, dst, optimizer in cases:
        proc = mk("convert", saved.paths[key], tmp_path / dst)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "read back: every variable equal" in proc.stdout
        assert ("with the optimizer state" in proc.stdout) == optimizer, proc.stdout
        _, before = read_state(saved.paths[key])
        _, after = read_state(tmp_path / dst)
        assert before.variables.keys() == after.variables.keys(), dst
        for name, array in before.variables.items():
            assert np.array_equal(after.variables[name], array), (dst, name)


def test_prune(saved, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved.run, run)
    doc = mk_json("prune", run, "--keep-last", 1, "--keep-best", 1, "--dry-run")
    assert sorted(Path(p).name for p in doc["deleted"]) == ["ckpt-000000010", "ckpt-000000020"]
    assert len(list(run.iterdir())) == 4
    proc = mk("prune", run, "--keep-last", 1, "--keep-best", 1)
    assert proc.returncode == 0 and "deleted 2 checkpoint(s), kept 2" in proc.stdout
    assert sorted(p.name for p in run.iterdir()) == ["ckpt-000000030", "ckpt-000000040"]


def test_predict_csv_and_npy(saved, tmp_path):
    import modelkeep as mk_lib

    x = saved.x[:23]
    expected = mk_lib.load_model(saved.paths["keras"]).predict(x, verbose=0)
    rows = ["f0,f1,f2,f3"] + [",".join(repr(float(v)) for v in row) for row in x]
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    proc = mk("predict", saved.paths["savedmodel"], "--input", tmp_path / "x.csv", "--output", tmp_path / "y.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (tmp_path / "y.csv").read_text().splitlines()
    assert lines[0] == "score_0" and len(lines) == 24
    assert np.allclose([float(v) for v in lines[1:]], expected[:, 0], rtol=0, atol=1e-6)
    np.save(tmp_path / "x.npy", x)
    proc = mk("predict", saved.paths["keras"], "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--batch-size", 5)
    assert proc.returncode == 0 and "23 rows" in proc.stdout
    assert "predicting" in proc.stderr  # the progress bar
    assert np.allclose(np.load(tmp_path / "y.npy"), expected, rtol=0, atol=1e-6)


def test_plot(saved, tmp_path):
    proc = mk("plot", saved.run, "-o", tmp_path / "curves.png")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "best ckpt-000000030 by val_loss" in proc.stdout
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tf_keras_fixtures_inspect_and_verify():
    """Files written by tf-keras (TF2-era Keras), committed by the legacy issue."""
    fixtures = sorted(p for p in (FIXTURES / "tfkeras").iterdir() if (p / "ckpt.index").exists())
    assert len(fixtures) >= 2, "the tf-keras fixtures under tests/fixtures/tfkeras/ are missing"
    paths = [p / name for p in fixtures for name in ("ckpt", "model.h5", "sm") if (p / name).exists() or (p / f"{name}.index").exists()]
    docs = mk_json("inspect", *paths)
    for path, doc in zip(paths, docs):
        expected = np.load(path.parent / "expected.npz")
        model_vars = [v for v in doc["variables"] if v["group"] == "model"]
        assert model_vars and all(v["dtype"] == "float32" for v in model_vars), path
        assert doc["format"] == {"ckpt": "TF checkpoint", "model.h5": "HDF5", "sm": "SavedModel"}[path.name], path
        if path.name != "ckpt":  # whole-model files: architecture and optimizer from the Keras 2 config
            assert doc["model"]["total_params"] == sum(int(np.prod(v["shape"])) for v in model_vars), path
            assert doc["optimizer"]["iterations"] >= 1, path
        if path.name == "sm":
            assert "serving_default" in doc["signatures"], path
        saved_shapes = sorted(tuple(expected[k].shape) for k in expected.files if k.startswith("w/"))
        assert sorted(tuple(v["shape"]) for v in model_vars) == saved_shapes, path
    doc = mk_json("verify", FIXTURES / "tfkeras")  # a folder of folders: searched two levels down
    assert doc["ok"] and doc["checked"] >= len(paths), doc


def test_predict_with_tf_keras_savedmodel(tmp_path):
    fixture = FIXTURES / "tfkeras" / "tutorial"
    expected = np.load(fixture / "expected.npz")
    np.save(tmp_path / "x.npy", expected["x"])
    proc = mk("predict", fixture / "sm", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.allclose(np.load(tmp_path / "y.npy"), expected["pred_0"], rtol=0, atol=1e-5)
