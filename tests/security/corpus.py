"""A corpus of hostile files, built fresh by the tests (nothing downloaded, nothing kept).

``build(root)`` writes, under ``root``:

* ``outside/``: what an attacker wants to reach: ``secret.txt`` (a unique marker string),
  good model files (so a followed link would *succeed* in loading foreign weights), and the
  path of ``SENTINEL``, which any payload that runs tries to create;
* ``hostile/``: one entry per attack (a file, a TF checkpoint prefix, a SavedModel or a run
  directory), each described by a ``Hostile`` record.

Every class of SECURITY.md is here, for every format: HDF5 links and layouts reaching other
files, size and decompression bombs, path traversal in manifests, state files and run
directories, malformed and deeply nested JSON, wrong types, safetensors header bombs, graph ops
that write or read files, Lambda/pickle payloads and Keras config gadgets (CVE-2024-3660,
CVE-2025-1550, CVE-2025-9906, CVE-2025-8747).

Run as a script to build one and list it: ``python tests/security/corpus.py /tmp/corpus``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SECRET = "MK-SECRET-" + uuid.uuid4().hex  # never in any output, message or loaded weight


@dataclass
class Hostile:
    """One attack: where it is, what it is, and which entry points apply."""

    name: str
    path: Path
    what: str                      # one line: the attack
    kind: str                      # "weights" | "model" | "savedmodel" | "run" | "input"
    ops: tuple[str, ...] = ()      # library entry points: load_weights, load_model, describe, verify, list, serve, predict
    keras: str | None = None       # what Keras alone is given: "load_model" | "load_weights" | None (no Keras API)
    keras_path: Path | None = None  # the file Keras is given, when not ``path``
    extra: dict[str, Any] = field(default_factory=dict)
    #: entry points that may *succeed* (they run nothing of the file): inspecting a Lambda model
    #: or a SavedModel with WriteFile is fine, loading or running it is not
    tolerant: frozenset[str] = frozenset()


#: attacks that are harmful only when the file's code or graph runs (inspect/verify may read them)
RUN_ONLY = {"h5_lambda.h5", "h5_header_gadget.h5", "h5_header_os_system.h5", "h5_shape_vs_model.h5", "keras_lambda.keras",
            "keras_os_system.keras", "keras_enable_unsafe.keras", "keras_get_file.keras", "keras_config_types.keras",
            "sm_writefile", "sm_readfile", "sm_pyfunc", "sm_init_writefile", "sm_keras_lambda"}
#: attacks on parts Keras never reads (modelkeep's own header, members and listings): Keras loading
#: the rest of such a file is not a failure of Keras
KERAS_IGNORES = {"h5_header_datasets_list.h5", "h5_header_gadget.h5", "h5_header_os_system.h5", "h5_scaleoffset_filter.h5",
                 "keras_rng_header_bomb.keras", "keras_zip_slip.keras", "keras_many_members.keras", "sm_header_deep",
                 "sm_keras_lambda", "run_symlink_outside"}
INSPECTING = frozenset({"describe", "verify", "inspect", "diff", "convert"})  # read as data, never run


def build_model() -> Any:
    import keras

    return keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, name="dense"),
                             keras.layers.Dense(2, name="dense_1")], name="small")


# --------------------------------------------------------------------------- helpers
def _mk():
    import modelkeep as mk

    return mk


def _h5_weights_layout(f: Any, kernel: Any = None) -> None:
    """Keras 2 weights layout for ``build_model()`` (what modelkeep's legacy reader matches)."""
    f.attrs["layer_names"] = [b"dense", b"dense_1"]
    for name, shape in (("dense", (4, 3)), ("dense_1", (3, 2))):
        g = f.create_group(name)
        g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
        g.create_dataset(f"{name}/kernel:0", data=np.zeros(shape, np.float32))
        g.create_dataset(f"{name}/bias:0", data=np.zeros(shape[1], np.float32))


def _keras_config(layers: list[dict]) -> dict:
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "evil", "layers": [
                {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                 "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "x"}}] + layers}}


def _write_keras(path: Path, config: Any, *, weights: Path | None = None, extra: dict[str, bytes] | None = None,
                 raw_config: bytes | None = None) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "2026-01-01"}))
        z.writestr("config.json", raw_config if raw_config is not None else json.dumps(config))
        if weights is not None:
            z.write(weights, "model.weights.h5")
        for name, data in (extra or {}).items():
            z.writestr(name, data)


def _copy_member(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, replace.get(info.filename, zin.read(info.filename)))
        for name, data in replace.items():
            if name not in zin.namelist():
                zout.writestr(name, data)


def _safetensors(path: Path, header: Any, data: bytes = b"", *, length: int | None = None, raw: bytes | None = None) -> None:
    text = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _lambda_payload(sentinel: Path) -> dict:
    """A Keras 3 Lambda layer config whose marshalled bytecode would create ``sentinel``."""
    import keras

    def touch(x, path=str(sentinel)):
        open(path, "w").close()
        return x

    return keras.saving.serialize_keras_object(keras.layers.Lambda(touch, name="payload"))


class _Pickled:
    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


# --------------------------------------------------------------------------- the corpus
def build(root: Path) -> tuple[list[Hostile], dict[str, Path]]:
    """Write the corpus under ``root``; return the entries and the ``outside`` paths."""
    import h5py
    import tensorflow as tf

    mk = _mk()
    outside, hostile = root / "outside", root / "hostile"
    outside.mkdir(parents=True)
    hostile.mkdir()
    secret = outside / "secret.txt"
    secret.write_text((SECRET + "\n") * 8)  # 8 * 43 bytes: enough to fill a (4, 3) float32 kernel
    sentinel = outside / "SENTINEL"
    model = build_model()
    good_h5 = outside / "good.h5"
    mk.save_model(model, good_h5)
    keras_h5 = outside / "keras_model.h5"
    model.save(keras_h5)  # Keras 3's legacy writer: model_weights/ group
    good_w = outside / "good.weights.h5"
    model.save_weights(good_w)
    good_keras = outside / "good.keras"
    model.save(good_keras)
    good_ckpt = outside / "ckpt"
    mk.save_weights(model, good_ckpt)
    good_st = outside / "good.safetensors"
    mk.save_weights(model, good_st)
    entries: list[Hostile] = []
    W, M = ("load_weights", "describe", "verify", "serve"), ("load_model", "describe", "verify", "serve")

    def add(name: str, what: str, kind: str, ops: tuple[str, ...], keras_api: str | None, path: Path | None = None, **extra: Any) -> Path:
        p = path or hostile / name
        entries.append(Hostile(name, p, what, kind, ops, keras_api, extra.pop("keras_path", None), extra))
        return p

    # ---------------------------------------------------------------- HDF5 (.h5)
    with h5py.File(add("h5_external_link.h5", "model_weights is an ExternalLink to another file", "weights", W + ("load_model",), "load_weights"), "w") as f:
        f["model_weights"] = h5py.ExternalLink(str(keras_h5), "/model_weights")
        f.attrs["model_config"] = h5py.File(keras_h5, "r").attrs["model_config"]
    with h5py.File(add("h5_external_link_dataset.h5", "one kernel is an ExternalLink dataset", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        del f["dense"]["dense/kernel:0"]
        f["dense"]["dense/kernel:0"] = h5py.ExternalLink(str(keras_h5), "/model_weights/dense/sequential/dense/kernel")
    with h5py.File(add("h5_soft_link.h5", "model_weights is a SoftLink (Keras's twin test)", "weights", W, "load_weights"), "w") as f:
        real = f.create_group("real_weights")
        _h5_weights_layout(real)
        f["model_weights"] = h5py.SoftLink("/real_weights")
    with h5py.File(add("h5_soft_link_dataset.h5", "a kernel is a SoftLink to another dataset", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        del f["dense"]["dense/bias:0"]
        f["dense"]["dense/bias:0"] = h5py.SoftLink("/dense_1/dense_1/bias:0")
    with h5py.File(add("h5_external_storage.h5", "a kernel's raw data is stored in outside/secret.txt", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        del f["dense"]["dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", shape=(4, 3), dtype="float32", external=[(str(secret), 0, 48)])
    other = outside / "vds_source.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("s", data=np.frombuffer(secret.read_bytes()[:48], np.float32).reshape(4, 3))
    with h5py.File(add("h5_virtual_dataset.h5", "a kernel is a virtual dataset mapped from another file", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        del f["dense"]["dense/kernel:0"]
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="float32")
        layout[:] = h5py.VirtualSource(str(other), "s", shape=(4, 3))
        f["dense"].create_virtual_dataset("dense/kernel:0", layout)
    with h5py.File(add("h5_size_bomb.h5", "a few KB declaring a 3 GiB chunked dataset, never written", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        del f["dense"]["dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", shape=(1 << 28, 3), dtype="float32", chunks=(1 << 16, 3))
    with h5py.File(add("h5_shape_vs_model.h5", "a 4096x4096 kernel where the model has 4x3", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        del f["dense"]["dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", shape=(4096, 4096), dtype="float32", chunks=(256, 256))
    with h5py.File(add("h5_scaleoffset_filter.h5", "a dataset behind the scale-offset filter (unbounded inflation)", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        f["dense_1"].create_dataset("extra", data=np.zeros((64, 64), np.int32), scaleoffset=0)
    with h5py.File(add("h5_layer_names_int.h5", "layer_names attribute is an integer", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        f.attrs["layer_names"] = 7
    with h5py.File(add("h5_weight_names_missing.h5", "weight_names lists datasets that are not there", "weights", W, "load_weights"), "w") as f:
        _h5_weights_layout(f)
        f["dense"].attrs["weight_names"] = [b"dense/nothing:0", b"../../x:0"]
    for name, text, what in (
        ("h5_config_not_json.h5", "{not json", "model_config is not JSON"),
        ("h5_config_deep.h5", _deep(), "model_config nests 100,000 levels deep"),
        ("h5_config_wrong_type.h5", json.dumps([1, 2, 3]), "model_config is a JSON list"),
    ):
        with h5py.File(add(name, what, "model", M, "load_model"), "w") as f:
            f.attrs["model_config"] = text
            g = f.create_group("model_weights")
            _h5_weights_layout(g)
    keras2_lambda = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "x"}},
        {"class_name": "Lambda", "config": {"name": "payload", "function": ["4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMEAAAAfABTACkBTqkAKQHaAXhyAQAAAHIBAAAA+gE8bGFtYmRhPgEAAADzAAAAAA==", None, None],
                                            "function_type": "lambda", "module": "__main__"}}]}}
    with h5py.File(add("h5_lambda.h5", "a Keras 2 model whose Lambda layer carries marshalled bytecode", "model", M, "load_model"), "w") as f:
        f.attrs["model_config"] = json.dumps(keras2_lambda)
        f.attrs["keras_version"] = "2.15.0"
        f.create_group("model_weights").attrs["layer_names"] = []
    for name, header, what in (
        ("h5_header_datasets_list.h5", {"order": [["a"]], "datasets": [1, 2]}, "modelkeep header: 'datasets' a list, 'order' of lists"),
        ("h5_header_gadget.h5", {"model_config": {"module": "keras.utils", "class_name": "get_file", "registered_name": None,
                                                  "config": {"origin": f"file://{secret}", "fname": str(sentinel)}},
                                 "order": [], "datasets": {}}, "model config calls keras.utils.get_file (CVE-2025-8747)"),
        ("h5_header_os_system.h5", {"model_config": {"module": "os", "class_name": "system", "registered_name": None,
                                                     "config": {"command": f"touch {sentinel}"}}, "order": [], "datasets": {}},
         "model config names os.system (CVE-2025-1550)"),
    ):
        target = add(name, what, "model", M, "load_model")
        shutil.copy(good_h5, target)
        with h5py.File(target, "a") as f:
            f.attrs["modelkeep"] = json.dumps(header)
    (add("h5_not_hdf5.h5", "a text file named .h5", "weights", W, "load_weights")).write_text("not an hdf5 file\n" * 10)
    trunc = add("h5_truncated.h5", "a modelkeep .h5 cut at 40%", "weights", W + ("load_model",), "load_weights")
    trunc.write_bytes(good_h5.read_bytes()[: good_h5.stat().st_size * 2 // 5])

    # ---------------------------------------------------------------- Keras 3 .weights.h5
    def keras_weights(name: str, what: str, edit: Any) -> None:
        target = add(name, what, "weights", W, "load_weights")
        shutil.copy(good_w, target)
        with h5py.File(target, "a") as f:
            edit(f)

    def relink(f: Any, link: Any) -> None:
        del f["layers"]
        f["layers"] = link

    keras_weights("kw_external_link.weights.h5", "layers is an ExternalLink to another .weights.h5",
                  lambda f: relink(f, h5py.ExternalLink(str(good_w), "/layers")))
    keras_weights("kw_soft_link.weights.h5", "layers is a SoftLink",
                  lambda f: (f.move("layers", "real_layers"), f.__setitem__("layers", h5py.SoftLink("/real_layers"))))

    def kw_vds(f: Any) -> None:
        del f["layers/dense/vars/0"]
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="float32")
        layout[:] = h5py.VirtualSource(str(other), "s", shape=(4, 3))
        f["layers/dense/vars"].create_virtual_dataset("0", layout)

    keras_weights("kw_virtual_dataset.weights.h5", "a kernel is a virtual dataset from another file", kw_vds)

    def kw_external(f: Any) -> None:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_dataset("0", shape=(4, 3), dtype="float32", external=[(str(secret), 0, 48)])

    keras_weights("kw_external_storage.weights.h5", "a kernel's raw data is outside/secret.txt", kw_external)

    def kw_bomb(f: Any) -> None:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars"].create_dataset("0", shape=(1 << 28, 3), dtype="float32", chunks=(1 << 16, 3))

    keras_weights("kw_size_bomb.weights.h5", "a kernel declaring 3 GiB, never written", kw_bomb)

    # ---------------------------------------------------------------- .keras zips
    KM = ("load_model", "describe", "verify", "serve")
    cfg = json.loads(zipfile.ZipFile(good_keras).read("config.json"))
    _write_keras(add("keras_lambda.keras", "a Lambda layer whose bytecode creates SENTINEL (CVE-2024-3660)", "model", KM, "load_model"),
                 _keras_config([_lambda_payload(sentinel)]))
    _write_keras(add("keras_os_system.keras", "config names module os, class system (CVE-2025-1550)", "model", KM, "load_model"),
                 _keras_config([{"module": "os", "class_name": "system", "registered_name": None, "config": {"command": f"touch {sentinel}"}}]))
    _write_keras(add("keras_enable_unsafe.keras", "config calls keras.config.enable_unsafe_deserialization, then a Lambda (CVE-2025-9906)", "model", KM, "load_model"),
                 _keras_config([{"module": "keras.config", "class_name": "function", "registered_name": "enable_unsafe_deserialization",
                                 "config": "enable_unsafe_deserialization"}, _lambda_payload(sentinel)]))
    _write_keras(add("keras_get_file.keras", "config calls keras.utils.get_file on a local secret (CVE-2025-8747)", "model", KM, "load_model"),
                 _keras_config([{"module": "keras.utils", "class_name": "get_file", "registered_name": None,
                                 "config": {"origin": f"file://{secret}", "fname": str(sentinel), "cache_dir": str(outside)}}]))
    _write_keras(add("keras_config_not_json.keras", "config.json is not JSON", "model", KM, "load_model"), None, raw_config=b"{nope")
    _write_keras(add("keras_config_deep.keras", "config.json nests 100,000 levels", "model", KM, "load_model"), None, raw_config=_deep().encode())
    _write_keras(add("keras_config_list.keras", "config.json is a JSON list", "model", KM, "load_model"), [1, 2])
    _copy_member(good_keras, add("keras_inner_external_link.keras", "model.weights.h5 member holds an ExternalLink", "model", KM, "load_model"),
                 {"model.weights.h5": _h5_bytes(lambda f: f.__setitem__("layers", h5py.ExternalLink(str(good_w), "/layers")))})
    _copy_member(good_keras, add("keras_inner_size_bomb.keras", "model.weights.h5 member declares a 3 GiB dataset", "model", KM, "load_model"),
                 {"model.weights.h5": _h5_bytes(lambda f: f.create_dataset("layers/dense/vars/0", shape=(1 << 28, 3), dtype="float32", chunks=(1 << 16, 3)))})
    _copy_member(good_keras, add("keras_rng_header_bomb.keras", "modelkeep_rng.safetensors member: header length 2^60", "model", KM, None),
                 {"modelkeep_rng.safetensors": struct.pack("<Q", 1 << 60) + b"{}"})
    _copy_member(good_keras, add("keras_zip_slip.keras", "a member named ../../outside/SENTINEL", "model", KM, "load_model"),
                 {"../../outside/SENTINEL": b"x", "/abs/evil": b"x"})
    bomb = add("keras_declared_bomb.keras", "a member whose header declares 5 GiB from 1 KB", "model", KM, "load_model")
    _copy_member(good_keras, bomb, {"assets/blob": b"\0" * 1024})
    _patch_zip_size(bomb, "assets/blob", 5 << 30)
    many = add("keras_many_members.keras", "20,000 zip members", "model", KM, "load_model")
    _copy_member(good_keras, many, {f"assets/{i}": b"" for i in range(20_000)})
    add("keras_not_zip.keras", "a text file named .keras", "model", KM, "load_model").write_text("hello\n")
    _copy_member(good_keras, add("keras_config_types.keras", "config.json: layers is a number, config a string", "model", KM, "load_model"),
                 {"config.json": json.dumps({**cfg, "config": {"layers": 5, "name": {"x": 1}}}).encode()})

    # ---------------------------------------------------------------- safetensors
    SW = ("load_weights", "describe", "verify")
    _safetensors(add("st_header_bomb.safetensors", "header length 2^63", "weights", SW, None), {}, length=1 << 63)
    _safetensors(add("st_header_not_json.safetensors", "header is not JSON", "weights", SW, None), None, raw=b"{\xff\xfe")
    _safetensors(add("st_header_deep.safetensors", "header nests 100,000 levels", "weights", SW, None), None, raw=_deep().encode())
    _safetensors(add("st_header_list.safetensors", "header is a JSON list", "weights", SW, None), [1, 2, 3])
    _safetensors(add("st_shape_overflow.safetensors", "shape [2^32, 2^32] over 0 bytes (wraps to 0 in int64)", "weights", SW, None),
                 {"model/dense/kernel": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}})
    _safetensors(add("st_offsets_strings.safetensors", "data_offsets are strings, shape a dict", "weights", SW, None),
                 {"k": {"dtype": "F32", "shape": {"a": 1}, "data_offsets": ["0", "4"]}}, b"\0" * 4)
    _safetensors(add("st_metadata_types.safetensors", "__metadata__ values are numbers and lists", "weights", SW, None),
                 {"__metadata__": {"modelkeep": 5, "modelkeep_order": [1]}})
    _safetensors(add("st_metadata_deep.safetensors", "__metadata__.modelkeep nests 100,000 levels", "weights", SW, None),
                 {"__metadata__": {"modelkeep": _deep()}})
    _safetensors(add("st_dtype_unknown.safetensors", "dtype 'PICKLE'", "weights", SW, None),
                 {"k": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    _safetensors(add("st_order_unhashable.safetensors", "modelkeep_order lists lists", "weights", SW, None),
                 {"__metadata__": {"modelkeep_order": "[[1], {\"a\": 2}]"}})

    # ---------------------------------------------------------------- TF checkpoints and state files
    TW = ("load_weights", "describe", "verify")
    for name, named, what in (
        ("state_abs", str(good_ckpt), "`checkpoint` state file names an absolute path outside"),
        ("state_dotdot", f"../../outside/{good_ckpt.name}", "`checkpoint` state file names ../../outside/ckpt"),
    ):
        d = add(name, what, "run", ("load_weights", "verify", "list", "serve"), "load_weights")
        d.mkdir()
        (d / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\nall_model_checkpoint_paths: "{named}"\n')
    d = add("state_dev_zero", "`checkpoint` state file is a symlink to /dev/zero", "run", ("load_weights", "verify", "list", "serve"), None)
    d.mkdir()
    os.symlink("/dev/zero", d / "checkpoint")
    d = add("tf_data_symlink", "a prefix whose .data file is a symlink to another checkpoint's", "run", ("load_weights", "verify", "list", "serve"), "load_weights")
    d.mkdir()
    shutil.copy(str(good_ckpt) + ".index", d / "ckpt.index")
    os.symlink(str(good_ckpt) + ".data-00000-of-00001", d / "ckpt.data-00000-of-00001")
    entries[-1].extra["prefix"] = d / "ckpt"
    garbage = add("tf_index_garbage", "a TF checkpoint whose .index is random bytes", "weights", TW, "load_weights")
    Path(str(garbage) + ".index").write_bytes(np.random.default_rng(0).bytes(4096))
    Path(str(garbage) + ".data-00000-of-00001").write_bytes(b"\0" * 64)
    from modelkeep.formats.tf_checkpoint import HEADER_KEY, OBJECT_GRAPH_KEY, save_tensors

    for name, header, what in (
        ("tf_header_deep", _deep(20_000), "modelkeep header tensor nests 20,000 levels"),
        ("tf_header_types", json.dumps({"order": 5, "paths": {"a": 1}}), "modelkeep header: order is a number"),
    ):
        prefix = add(name, what, "weights", TW, None)
        save_tensors(prefix, {HEADER_KEY: np.array(header.encode(), dtype=object), OBJECT_GRAPH_KEY: np.array(b"", dtype=object)})
    lying = add("tf_object_graph_garbage", "object graph tensor is random bytes (a tf-keras-looking checkpoint)", "weights", TW, "load_weights")
    save_tensors(lying, {OBJECT_GRAPH_KEY: np.array(np.random.default_rng(1).bytes(256), dtype=object),
                         "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE": np.zeros((4, 3), np.float32)})

    # ---------------------------------------------------------------- manifests and run directories
    R = ("load_weights", "verify", "list", "serve")

    def run_dir(name: str, what: str, files: Any, *, keras_api: str | None = None, step: Any = 5) -> Path:
        d = add(name, what, "run", R, keras_api)
        d.mkdir()
        shutil.copy(good_st, d / "ckpt.safetensors")
        doc = {"manifest_version": 1, "files": files, "metadata": {"step": step, "format": "safetensors"}}
        (d / "ckpt.safetensors.manifest.json").write_text(json.dumps(doc) if not isinstance(files, str) else files)
        return d

    run_dir("manifest_dotdot", "manifest lists ../outside/secret.txt", {"../outside/secret.txt": {"size": 1, "crc32": 0}})
    run_dir("manifest_absolute", "manifest lists outside/secret.txt by absolute path", {str(secret): {"size": 1, "crc32": 0}})
    run_dir("manifest_dev_zero", "manifest lists /dev/zero", {"/dev/zero": {"size": 1, "crc32": 0}})
    d = run_dir("manifest_fifo", "manifest lists a FIFO inside the directory (opening it would block)", {"pipe": {"size": 0, "crc32": 0}})
    os.mkfifo(d / "pipe")
    d = run_dir("manifest_symlink_zero", "manifest lists zero, a symlink to /dev/zero", {"zero": {"size": 0, "crc32": 0}})
    os.symlink("/dev/zero", d / "zero")
    run_dir("manifest_deep", "manifest nests 100,000 levels", _deep())
    run_dir("manifest_types", "manifest: files is a list, step a list", [["ckpt.safetensors", 1]], step=[1, 2])
    run_dir("manifest_size_string", "manifest: size is a string, crc32 a dict", {"ckpt.safetensors": {"size": "big", "crc32": {}}})
    run_dir("manifest_not_json", "manifest is not JSON", "{\"files\": ")
    d = add("run_symlink_outside", "a run directory whose best.h5 is a symlink to outside/good.h5", "run", R, "load_weights")
    d.mkdir()
    os.symlink(good_h5, d / "best.h5")
    mk.save_weights(model, d / "own.safetensors")
    entries[-1].keras_path = d / "best.h5"
    d = add("run_backup_symlink", "a ckpt-<step>/ backup whose state.safetensors is a symlink outside", "run", R, None)
    d.mkdir()
    from modelkeep.checkpoint import store

    info = store.save_state(d, _capture(model), step=7)
    (info.path / "state.safetensors").unlink()
    os.symlink(good_st, info.path / "state.safetensors")
    d = add("run_manifest_bad_and_good", "one hostile manifest beside a good checkpoint: the good one must still serve",
            "run", ("list", "serve", "load_weights"), None)
    d.mkdir()
    store.save_state(d, _capture(model), step=3)
    (d / "evil.safetensors").write_bytes(good_st.read_bytes())
    (d / "evil.safetensors.manifest.json").write_text(json.dumps({"files": {"../outside/secret.txt": {"size": 1, "crc32": 0}},
                                                                   "metadata": {"step": 9}}))
    entries[-1].extra["good_step"] = 3

    # ---------------------------------------------------------------- SavedModels
    S = ("describe", "verify", "predict", "serve", "load_model")
    for name, what, fn in (
        ("sm_writefile", "serving signature writes SENTINEL with WriteFile", lambda x: (tf.io.write_file(str(sentinel), "x"), x * 2.0)[1]),
        ("sm_readfile", "serving signature returns the bytes of outside/secret.txt", lambda x: x + tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32)),
        ("sm_pyfunc", "serving signature calls a Python function (EagerPyFunc)", lambda x: tf.py_function(lambda t: t * 2.0, [x], tf.float32)),
    ):
        _savedmodel(add(name, what, "savedmodel", S, None), fn)
    _savedmodel_init(add("sm_init_writefile", "a resource initializer (run by tf.saved_model.load) writes SENTINEL", "savedmodel", S, None), sentinel)
    sm = add("sm_proto_garbage", "saved_model.pb is random bytes", "savedmodel", S, None)
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(np.random.default_rng(2).bytes(2048))
    sm = add("sm_symlink_variables", "a modelkeep SavedModel whose variables.data is a symlink outside", "savedmodel", S, None)
    mk.save_model(model, sm)
    data = sm / "variables" / "variables.data-00000-of-00001"
    shutil.copy(data, outside / "sm_data")
    data.unlink()
    os.symlink(outside / "sm_data", data)
    sm = add("sm_header_deep", "a modelkeep SavedModel whose modelkeep.json nests 100,000 levels", "savedmodel", S, None)
    mk.save_model(model, sm)
    (sm / "modelkeep.json").write_text(_deep())
    sm = add("sm_keras_lambda", "a tf-keras-style SavedModel whose Keras part holds a Lambda: never run through its graph",
             "savedmodel", S, None)
    _tfkeras_lambda_savedmodel(sm, model)

    # ---------------------------------------------------------------- predict inputs
    np.save(add("input_pickle.npy", "an object array whose unpickling creates SENTINEL", "input", ("predict_input",), None),
            np.array([_Pickled(str(sentinel))], dtype=object), allow_pickle=True)
    for entry in entries:
        if entry.name in RUN_ONLY:
            entry.tolerant = INSPECTING
        if entry.name == "keras_rng_header_bomb.keras":  # uncompiled loads never read that member
            entry.tolerant = frozenset({"serve", "predict"})
    return entries, {"outside": outside, "secret": secret, "sentinel": sentinel, "good_h5": good_h5, "good_keras": good_keras,
                     "good_st": good_st, "good_ckpt": good_ckpt}


def _capture(model: Any) -> Any:
    from modelkeep.capture import capture

    return capture(model, include_optimizer=False)


def _h5_bytes(edit: Any) -> bytes:
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        edit(f)
    return buffer.getvalue()


def _patch_zip_size(path: Path, member: str, size: int) -> None:
    """Make ``member``'s central-directory entry declare ``size`` bytes (zip64 extra field)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_len]) == name:
            struct.pack_into("<I", data, at + 24, 0xFFFFFFFF)  # uncompressed size -> in zip64 extra
            extra_len = struct.unpack_from("<H", data, at + 30)[0]
            extra = struct.pack("<HHQ", 1, 8, size)
            struct.pack_into("<H", data, at + 30, extra_len + len(extra))
            insert = at + 46 + name_len + extra_len
            data[insert:insert] = extra
            end = data.rfind(b"PK\x05\x06")
            cd_size = struct.unpack_from("<I", data, end + 12)[0]
            struct.pack_into("<I", data, end + 12, cd_size + len(extra))
            break
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def _savedmodel(path: Path, fn: Any) -> None:
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")], autograph=False)
        def serve(self, x):
            return {"y": fn(x)}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})


def _savedmodel_init(path: Path, sentinel: Path) -> None:
    import tensorflow as tf

    class Resource(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="mk_init")

        def _initialize(self):
            tf.io.write_file(str(sentinel), "written at load")

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.resource = Resource()

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")], autograph=False)
        def serve(self, x):
            return {"y": x * 2.0}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})


def _encode_metadata(nodes: list[dict]) -> bytes:
    """A ``SavedMetadata`` protobuf (fields 2-5 of each node) without generated code."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def field_bytes(number: int, value: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(value)) + value

    out = b""
    for node in nodes:
        body = varint(2 << 3) + varint(int(node.get("node_id", 0)))
        for number, key in ((3, "node_path"), (4, "identifier"), (5, "metadata")):
            if key in node:
                body += field_bytes(number, node[key].encode())
        out += field_bytes(1, body)
    return out


def _tfkeras_lambda_savedmodel(path: Path, model: Any) -> None:
    """A SavedModel with a serving graph and a ``keras_metadata.pb`` whose config holds a Lambda."""
    model.export(str(path), verbose=False)
    layers = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "x"}},
              {"class_name": "Lambda", "config": {"name": "payload", "function": ["4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMEAAAAfABTACkBTqkAKQHaAXhyAQAAAHIBAAAA+gE8bGFtYmRhPgEAAADzAAAAAA==", None, None],
                                                  "function_type": "lambda", "module": "__main__"}}]
    meta = {"class_name": "Sequential", "name": "s", "config": {"name": "s", "layers": layers}, "keras_version": "2.15.0"}
    (path / "keras_metadata.pb").write_bytes(_encode_metadata([{"node_id": 0, "node_path": "root", "identifier": "_tf_keras_sequential",
                                                                "metadata": json.dumps(meta)}]))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    corpus, _ = build(out)
    for entry in corpus:
        print(f"{entry.name:32} {entry.kind:10} {entry.what}")
    print(len(corpus), "hostile entries")
