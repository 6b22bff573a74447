"""Hostile files (``corpus.py``) through the library, the server's loading and watching, and the CLI.

The corpus is built once per module. Every entry is run through every library entry point
that applies, in this process; the CLI runs every command on every entry in ONE subprocess
(4 GB address-space limit, 150 s per entry). The Keras-vs-modelkeep table is
``tests/security/measure.py`` (slow test below).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from attack import check_library  # noqa: E402
from measure import prepare  # noqa: E402

import modelkeep as mk  # noqa: E402
from modelkeep.errors import (  # noqa: E402
    GraphOnlyModelError,
    IncompatibleModelError,
    ModelkeepError,
    UnsafeFileError,
    UnsupportedModelError,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    entries, ctx = prepare(root)
    return root, {e.name: e for e in entries}, ctx


@pytest.fixture(autouse=True)
def _no_sentinel(corpus):
    _, _, ctx = corpus
    ctx["sentinel"].unlink(missing_ok=True)
    yield
    assert not ctx["sentinel"].exists(), "a payload ran: SENTINEL was written"


def test_corpus_has_fifty_hostile_files_of_every_format(corpus):
    _, entries, _ = corpus
    groups = {name.split("_", 1)[0] for name in entries}
    assert len(entries) >= 50
    assert {"h5", "kw", "keras", "st", "tf", "state", "manifest", "run", "sm", "input"} <= groups


def test_every_library_entry_point_refuses_every_hostile_entry(corpus):
    _, entries, ctx = corpus
    failures, checks = [], 0
    for entry in entries.values():
        for op in entry.ops:
            checks += 1
            safe, why = check_library(entry, op, ctx)
            ctx["sentinel"].unlink(missing_ok=True) if not safe else None
            if not safe:
                failures.append(f"{entry.name} {op}: {why}")
    print(f"{checks} library checks over {len(entries)} hostile entries, {len(failures)} unsafe")
    assert not failures, "\n".join(failures)


def _cli_matrix(corpus, *extra: str) -> None:
    root, entries, _ = corpus
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent / "src"), env.get("PYTHONPATH", "")])

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run([sys.executable, str(HERE / "measure.py"), "--child", "cli", "--root", str(root), *extra],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=1800)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(rows) == len(entries), proc.stderr[-2000:]
    unsafe = [f"{r['name']}: {r['why']}" for r in rows if not r["safe"]]
    print(f"{sum(r['checks'] for r in rows)} CLI commands over {len(rows)} hostile entries, {len(unsafe)} unsafe")
    assert not unsafe, "\n".join(unsafe)


def test_first_cli_command_on_every_hostile_entry_one_subprocess(corpus):
    """``inspect`` (files), ``ls`` (run directories), ``predict`` (inputs): exit 1, one line naming the file."""
    _cli_matrix(corpus, "--first-command-only")


@pytest.mark.slow
def test_every_cli_command_on_every_hostile_entry_one_subprocess(corpus):
    """inspect, verify, diff, convert, predict (files); ls, verify, prune (run directories)."""
    _cli_matrix(corpus)


# ------------------------------------------------------------------ Keras's own tests, our way
def test_load_weights_rejects_h5_external_link(corpus):
    """Keras: test_load_weights_rejects_h5_external_link (saving_api_test.py)."""
    _, entries, _ = corpus
    entry = entries["h5_external_link.h5"]
    with pytest.raises(UnsafeFileError, match="ExternalLink") as info:
        mk.load_weights(_model(), entry.path)
    assert info.value.check == "hdf5-link" and info.value.path == entry.path
    with pytest.raises(UnsafeFileError, match="ExternalLink"):
        mk.load_weights(_model(), entries["kw_external_link.weights.h5"].path)


def test_load_weights_rejects_h5_soft_link(corpus):
    """Keras: test_load_weights_rejects_h5_soft_link, and the group-level twin in file_editor_test.py."""
    _, entries, _ = corpus
    for name in ("h5_soft_link.h5", "h5_soft_link_dataset.h5", "kw_soft_link.weights.h5"):
        with pytest.raises(UnsafeFileError, match="SoftLink"):
            mk.load_weights(_model(), entries[name].path)


def test_virtual_and_external_storage_datasets_are_refused_before_reading(corpus):
    """Keras: test_rejects_virtual_dataset; plus external storage (raw data in another file)."""
    _, entries, _ = corpus
    for name, check in (("h5_virtual_dataset.h5", "hdf5-virtual-dataset"), ("kw_virtual_dataset.weights.h5", "hdf5-virtual-dataset"),
                        ("h5_external_storage.h5", "hdf5-external-storage"), ("kw_external_storage.weights.h5", "hdf5-external-storage")):
        with pytest.raises(UnsafeFileError) as info:
            mk.load_weights(_model(), entries[name].path)
        assert info.value.check == check, name


def test_size_bombs_are_refused_from_their_declared_shapes(corpus):
    _, entries, _ = corpus
    for name in ("h5_size_bomb.h5", "kw_size_bomb.weights.h5", "keras_inner_size_bomb.keras"):
        path = entries[name].path
        assert path.stat().st_size < 200_000, name  # a few KB declaring 3 GiB
        with pytest.raises(UnsafeFileError, match="hdf5-size-bomb"):
            (mk.load_model if name.endswith(".keras") else lambda p: mk.load_weights(_model(), p))(path)
    with pytest.raises(UnsafeFileError, match="zip-bomb"):
        mk.load_model(entries["keras_declared_bomb.keras"].path)
    with pytest.raises(IncompatibleModelError, match="declares 67108908 bytes of weights.*nothing was read"):
        mk.load_weights(_model(), entries["h5_shape_vs_model.h5"].path)  # 64 MiB declared for a 92-byte model


def test_keras_config_gadgets_run_nothing_and_leave_safe_mode_on(corpus):
    """CVE-2024-3660 (Lambda bytecode), CVE-2025-1550 (arbitrary module), CVE-2025-9906
    (enable_unsafe_deserialization from the config), CVE-2025-8747 (keras.utils.get_file)."""
    from keras.src.saving import serialization_lib

    _, entries, ctx = corpus
    for name in ("keras_lambda.keras", "keras_os_system.keras", "keras_enable_unsafe.keras", "keras_get_file.keras",
                 "h5_lambda.h5", "h5_header_gadget.h5", "h5_header_os_system.h5"):
        with pytest.raises(ModelkeepError) as info:
            mk.load_model(entries[name].path)
        assert entries[name].path.name in str(info.value), name
        assert serialization_lib.in_safe_mode() is not False, f"{name} switched safe mode off"
        assert not ctx["sentinel"].exists(), name
        assert not list(ctx["outside"].glob("datasets*")), f"{name}: get_file wrote a cache"


def test_inspect_parses_saved_model_pb_and_runs_no_initializer(corpus):
    import tensorflow as tf

    from modelkeep.tools.inspect import describe

    _, entries, ctx = corpus
    path = entries["sm_init_writefile"].path
    info = describe(path)
    assert not ctx["sentinel"].exists()
    assert info["signatures"]["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": [None, 4]}}
    tf.saved_model.load(str(path))  # the attack is real: TensorFlow's loader runs the initializer
    assert ctx["sentinel"].exists()
    ctx["sentinel"].unlink()


def test_graph_with_file_ops_is_refused_by_name_unless_opted_in(corpus):
    from modelkeep.tools.predict import predict_files

    _, entries, ctx = corpus
    path = entries["sm_writefile"].path
    with pytest.raises(UnsafeFileError, match=r"graph-ops.*WriteFile.*allow_unsafe_ops=True"):
        predict_files(path, [ctx["input"]])
    with pytest.raises(UnsafeFileError, match=r"ReadFile"):
        predict_files(entries["sm_readfile"].path, [ctx["input"]])
    result = predict_files(path, [ctx["input"]], allow_unsafe_ops=True)  # the explicit opt-in runs it
    assert ctx["sentinel"].exists()
    ctx["sentinel"].unlink()
    np.testing.assert_array_equal(result.outputs[0], np.full((3, 4), 2.0, np.float32))


def test_load_model_of_a_graph_only_savedmodel_scans_its_ops_first(corpus):
    """``mk.load_model`` wraps a graph-only SavedModel in an inference-only model; one whose graph
    writes files is refused by name first, and runs only with ``safe_mode=False``."""
    _, entries, ctx = corpus
    path = entries["sm_writefile"].path
    with pytest.raises(UnsafeFileError, match=r"graph-ops.*WriteFile"):
        mk.load_model(path)
    assert not ctx["sentinel"].exists()
    model = mk.load_model(path, safe_mode=False)
    model.predict(np.ones((3, 4), np.float32), verbose=0)
    assert ctx["sentinel"].exists()
    ctx["sentinel"].unlink()


def test_refused_keras_part_never_falls_back_to_the_graph(corpus):
    from modelkeep.tools.predict import predict_files

    _, entries, ctx = corpus
    path = entries["sm_keras_lambda"].path
    with pytest.raises(UnsupportedModelError, match="Lambda") as info:
        predict_files(path, [ctx["input"]], allow_unsafe_ops=True)
    assert not isinstance(info.value, GraphOnlyModelError)


def test_unsafe_op_list_comes_from_the_registry():
    from modelkeep.storage.graph_ops import unsafe_ops

    ops = unsafe_ops()
    assert {"ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "EagerPyFunc", "PyFuncStateless", "SaveV2", "RestoreV2",
            "TFRecordDataset", "PrintV2", "ImmutableConst", "CreateSummaryFileWriter", "DecodeProtoV2"} <= ops
    assert not {"MatMul", "ReadVariableOp", "Const", "StatefulPartitionedCall", "BiasAdd", "Relu", "StringJoin"} & ops


def test_a_plain_exported_model_has_no_unsafe_ops(tmp_path):
    from modelkeep.storage.graph_ops import scan_saved_model

    model = _model()
    model.export(str(tmp_path / "exported"), verbose=False)
    mk.save_model(model, tmp_path / "mine")
    assert scan_saved_model(tmp_path / "exported") == {}
    assert scan_saved_model(tmp_path / "mine") == {}


def test_server_skips_a_hostile_checkpoint_and_serves_the_good_one(corpus, caplog):
    from attack import _serve_once

    _, entries, _ = corpus
    entry = entries["run_manifest_bad_and_good"]
    with caplog.at_level(logging.WARNING, logger="modelkeep.serve"):
        result = _serve_once(entry.path)
    assert result["loaded"] == [3]
    assert any("evil.safetensors" in line and "path-containment" in line for line in result["log"]), result["log"]


def test_serve_refuses_a_graph_with_file_ops_unless_the_flag_is_given(corpus):
    from attack import _serve_once

    from modelkeep.cli.main import build_parser

    _, entries, ctx = corpus
    path = entries["sm_writefile"].path
    refused = _serve_once(path)
    assert refused["loaded"] == [] and any("graph-ops" in line and "WriteFile" in line for line in refused["log"])
    assert not ctx["sentinel"].exists()
    assert build_parser().parse_args(["serve", str(path), "--allow-unsafe-ops"]).allow_unsafe_ops is True
    assert _serve_once(path, allow_unsafe_ops=True, answer_one=True)["loaded"] == [1]  # opted in: served, and its request wrote the file
    assert ctx["sentinel"].exists()
    ctx["sentinel"].unlink()


def test_manifest_traversal_reveals_nothing_of_the_outside_file(corpus):
    from modelkeep.storage.checksums import file_crc32, verify_manifest

    _, entries, ctx = corpus
    secret = ctx["secret"]
    for name in ("manifest_dotdot", "manifest_absolute"):
        with pytest.raises(UnsafeFileError, match="path-containment") as info:
            verify_manifest(entries[name].path / "ckpt.safetensors.manifest.json")
        text = str(info.value)
        assert str(secret.stat().st_size) not in text.split("secret.txt")[-1] and f"{file_crc32(secret):08x}" not in text


def test_limits_can_be_raised_for_a_genuine_file(tmp_path):
    import h5py

    from modelkeep.storage import guard, limits

    path = tmp_path / "big_declared.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", shape=(1 << 20, 32), dtype="float32", chunks=(1 << 14, 32))  # 128 MiB declared, nothing stored
    with pytest.raises(UnsafeFileError, match="hdf5-size-bomb"):
        guard.open_hdf5(path).close()
    with limits.override(h5_bomb_floor=1 << 30, max_h5_total_expansion=1 << 20):
        guard.open_hdf5(path).close()
    assert limits.current().h5_bomb_floor == 64 << 20


def _model():
    from corpus import build_model

    return build_model()


@pytest.mark.slow
def test_measure_prints_the_table():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(HERE / "measure.py")], capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-2000:]
    total = [line for line in proc.stdout.splitlines() if line.startswith("all ")][0].split()
    assert int(total[2]) == int(total[1]), proc.stdout  # modelkeep refuses every hostile file safely
