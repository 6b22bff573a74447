"""Is a saved file intact? Every check its manifest and its format allow.

Two kinds of check, both run when both are possible:

* **the manifest** (``<name>.manifest.json`` beside a checkpoint, ``manifest.json`` in a
  ``ckpt-<step>/`` backup): every listed file present, with the right size and CRC-32;
* **the format's own checks**, so a file without a manifest is still checked:

  ===================  ==========================================================
  TF checkpoint        every tensor read, each one's crc32c checked (without
                       TensorFlow where the bundle layout allows)
  SavedModel           the fingerprint (``saved_model.pb`` and ``variables.index``
                       hashes) recomputed; every variable read (crc32c);
                       modelkeep's JSON and optimizer file parsed
  .keras               every zip member's CRC-32; the inner weights file read
  HDF5, .weights.h5    opened (HDF5 checks its own length) and every dataset read
  safetensors          header parsed; every tensor's dtype, shape and offsets add
                       up to the file's length
  ===================  ==========================================================

  HDF5 and safetensors store no checksum of the numbers, so a flipped bit inside the
  numbers of such a file is caught only with a manifest; a truncation always is.

Example::

    results = verify_paths(["run/", "model.keras"])
    [r.problem for r in results if not r.ok]
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.checkpoint import store
from modelkeep.errors import CorruptCheckpointError, FormatError, UnsafeFileError
from modelkeep.formats import registry
from modelkeep.formats.keras_zip import RNG_MEMBER, _load_member_tensors
from modelkeep.formats.savedmodel import HEADER_FILE, OPTIMIZER_FILE
from modelkeep.formats.tf_checkpoint import HEADER_KEY, OBJECT_GRAPH_KEY, STATE_FILE
from modelkeep.storage import guard, limits
from modelkeep.storage.checksums import verify_manifest
from modelkeep.storage.fs import is_url
from modelkeep.tools.reading import BACKUP, is_backup_dir

_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass
class VerifyResult:
    """The verdict on one checkpoint or file: what was checked, and what is wrong if anything."""

    path: Path
    format: str
    ok: bool
    checks: list[str] = field(default_factory=list)
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "ok": self.ok, "checks": self.checks, "problem": self.problem}


def verify_paths(paths: Iterable[Path | str], *, on_item: Callable[[Path], None] | None = None) -> list[VerifyResult]:
    """Verify files, prefixes, SavedModel and backup directories, or directories of checkpoints.

    ``on_item(path)`` is called before each checkpoint is checked (for a progress display).
    """
    results: list[VerifyResult] = []
    for raw in paths:
        if is_url(raw):  # object storage: downloaded with every CRC-32 checked, then as below
            results.extend(_verify_remote(str(raw), on_item))
            continue
        path = registry.strip_tf_suffix(Path(raw))
        if path.name == STATE_FILE and path.is_file():
            results.append(_verify_state_file(path))
        elif path.is_dir() and not (path / "saved_model.pb").exists() and not is_backup_dir(path):
            results.extend(verify_directory(path, on_item=on_item))
        else:
            results.append(_one(path, on_item))
    return results


def _verify_remote(url: str, on_item: Callable[[Path], None] | None) -> list[VerifyResult]:
    from modelkeep.checkpoint import remote

    out = []
    for where, fmt, found in remote.verify(url, lambda local: _one(local, on_item)):
        if isinstance(found, VerifyResult):
            found.path = remote.RemotePath(where)
            found.checks.insert(0, "every object's size and CRC-32 as its commit record says")
            out.append(found)
        else:
            out.append(VerifyResult(remote.RemotePath(where), fmt, False, problem=str(found)))
    if not out:
        out.append(VerifyResult(remote.RemotePath(url), "directory", False, problem=f"{url} holds no checkpoint"))
    return out


def _one(path: Path, on_item: Callable[[Path], None] | None) -> VerifyResult:
    if on_item is not None:
        on_item(path)
    return verify_one(path)


def verify_directory(directory: Path, *, depth: int = 2, on_item: Callable[[Path], None] | None = None) -> list[VerifyResult]:
    """Verify every checkpoint of a directory and its ``checkpoint`` state file.

    A directory that holds no checkpoint itself (a folder of runs) is searched
    ``depth`` levels down.
    """
    infos = store.list_checkpoints(directory, verify=False)
    results = []
    for info in infos:
        escaped = store.escapes(directory, info.path)  # a symlink leaving the directory is never read
        results.append(VerifyResult(info.path, info.format, False, problem=escaped) if escaped else _one(info.path, on_item))
    state_file = directory / STATE_FILE
    if state_file.exists():
        results.append(_verify_state_file(state_file))
    if not results and depth > 0:
        for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
            found = verify_directory(sub, depth=depth - 1, on_item=on_item)
            results.extend(r for r in found if r.format != "directory")
    if not results:
        results.append(VerifyResult(directory, "directory", False, problem=f"{directory} holds no checkpoint or saved model"))
    return results


def _verify_state_file(state_file: Path) -> VerifyResult:
    result = VerifyResult(state_file, "TF checkpoint state file", True)
    try:
        state = guard.read_state_file(state_file.parent)
        named = list(state.all_model_checkpoint_paths) if state else []
        for name in named + ([state.model_checkpoint_path] if state and state.model_checkpoint_path else []):
            guard.state_file_target(state_file.parent, name, source=state_file)
    except UnsafeFileError as exc:
        return _fail(result, _first_line(exc))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
        return _fail(result, f"{state_file} cannot be parsed ({_first_line(exc)})")
    # TensorFlow returns the names joined with the directory already
    missing = [p for p in named if not Path(p + ".index").exists()]
    if missing:
        return _fail(result, f"{state_file} names {missing[0]}, which is not there")
    result.checks.append(f"names {len(named)} checkpoint(s), all present")
    return result


def verify_one(path: Path) -> VerifyResult:
    """Verify one checkpoint: its manifest if it has one, then its format's own checks."""
    path = registry.strip_tf_suffix(Path(path))
    try:
        if is_backup_dir(path):
            fmt_name = BACKUP
        else:
            fmt = registry.detect(path)
            fmt_name = fmt.name
            fmt.require(path)
    except (FormatError, OSError) as exc:
        return VerifyResult(path, locals().get("fmt_name", "unknown"), False, problem=_first_line(exc))
    result = VerifyResult(path, fmt_name, True)
    manifest = path / store.STORE_MANIFEST if fmt_name == BACKUP else store.manifest_path(path)
    if manifest.exists():
        try:
            doc = verify_manifest(manifest)
        except (CorruptCheckpointError, FileNotFoundError, OSError) as exc:
            return _fail(result, _first_line(exc))
        result.checks.append(f"manifest: {len(doc['files'])} file(s), size and CRC-32 match")
    elif fmt_name == BACKUP:
        return _fail(result, f"{manifest} is missing: the backup did not finish")
    else:
        result.checks.append("no manifest")
    try:
        result.checks.append(_CHECKS[fmt_name](path))
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises is the finding
        return _fail(result, f"{path}: {_first_line(exc)}")
    return result


def _fail(result: VerifyResult, problem: str) -> VerifyResult:
    result.ok = False
    result.problem = problem
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------ per-format checks
def check_tf_checkpoint(prefix: Path) -> str:
    """Read every tensor of a TF checkpoint and check each one's crc32c: without TensorFlow
    (``formats.tf_bundle_reader``) where the bundle's layout allows, else with TensorFlow."""
    from modelkeep.formats import tf_bundle_reader

    light = tf_bundle_reader.check(prefix)
    if light is not None:
        return light
    import tensorflow as tf

    registry.TF_CHECKPOINT.require(prefix)
    index, data = registry.TF_CHECKPOINT.files(prefix)
    reader = guard.open_tf_checkpoint(prefix)  # companions beside the prefix, declared sizes checked
    keys = sorted(reader.get_variable_to_shape_map())
    values = {}
    for key in keys:
        try:
            value = reader.get_tensor(key)
        except (tf.errors.OpError, ValueError) as exc:
            raise CorruptCheckpointError(f"tensor '{key}' in {data.name} fails its check: {_first_line(exc)}") from exc
        if key in (HEADER_KEY, OBJECT_GRAPH_KEY):
            values[key] = value
    _check_tf_structure(prefix, values)
    return f"TF checkpoint: {len(keys)} tensors read, each matches its crc32c"


def _check_tf_structure(prefix: Path, values: dict[str, Any]) -> None:
    """modelkeep's header parses (JSON caps, an ``order`` list); the object graph parses."""
    if HEADER_KEY in values:
        raw = values[HEADER_KEY]
        header = guard.load_json(raw.decode() if isinstance(raw, bytes) else str(raw), source=prefix, what="modelkeep header tensor")
        if not isinstance(header.get("order"), list):
            raise CorruptCheckpointError("modelkeep's header tensor has no 'order' list: corrupt")
    if OBJECT_GRAPH_KEY in values:
        from google.protobuf.message import DecodeError
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        try:
            trackable_object_graph_pb2.TrackableObjectGraph().ParseFromString(values[OBJECT_GRAPH_KEY])
        except (DecodeError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"the object graph tensor does not parse ({_first_line(exc)}): corrupt") from exc


def _read_hdf5(handle: Any) -> int:
    import h5py

    count = 0

    def visit(name: str, item: Any) -> None:
        nonlocal count
        dict(item.attrs)
        if isinstance(item, h5py.Dataset):
            item[()]
            count += 1

    dict(handle.attrs)
    handle.visititems(visit)
    return count


def _check_h5_layout(handle: Any, path: Path) -> None:
    """The Keras layouts' own bookkeeping: modelkeep's header parses and names real datasets;
    ``layer_names``/``weight_names`` are lists of names that exist; ``model_config`` is a JSON object."""
    import numpy as np

    def names(value: Any, what: str) -> list[str]:
        array = np.asarray(value)
        if array.ndim != 1 or not all(isinstance(v, (bytes, str, np.bytes_, np.str_)) for v in array.tolist()):
            raise CorruptCheckpointError(f"attribute {what} is not a list of names")
        return [v.decode() if isinstance(v, bytes) else str(v) for v in array.tolist()]

    header = handle.attrs.get("modelkeep")
    if header is not None:
        doc = guard.load_json(header.decode() if isinstance(header, bytes) else str(header), source=path, what="modelkeep header")
        if not isinstance(doc.get("order", []), list) or not isinstance(doc.get("datasets", {}), dict):
            raise CorruptCheckpointError("modelkeep's header has an 'order' or 'datasets' of the wrong type")
        missing = [str(v) for v in doc.get("datasets", {}).values() if not isinstance(v, str) or v not in handle]
        if missing:
            raise CorruptCheckpointError(f"modelkeep's header names dataset {missing[0][:80]!r}, which is not in the file")
    for key in ("model_config", "training_config"):
        if key in handle.attrs:
            raw = handle.attrs[key]
            guard.load_json(raw.decode() if isinstance(raw, bytes) else str(raw), source=path, what=key)
    group = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" in group.attrs:
        for layer in names(group.attrs["layer_names"], "layer_names"):
            if layer not in group:
                raise CorruptCheckpointError(f"layer_names lists {layer!r}, which is not in the file")
            for weight in names(group[layer].attrs.get("weight_names", []), f"weight_names of {layer!r}"):
                if weight not in group[layer]:
                    raise CorruptCheckpointError(f"layer {layer!r} lists weight {weight!r}, which is not in the file")


def check_hdf5(path: Path) -> str:
    """Open an HDF5 file, check its layout's bookkeeping, and read every dataset and attribute."""
    try:
        with guard.open_hdf5(path) as handle:  # links, layouts and declared sizes checked first
            _check_h5_layout(handle, path)
            count = _read_hdf5(handle)
    except UnsafeFileError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CorruptCheckpointError(f"HDF5 file cannot be read ({_first_line(exc)}); it is truncated or corrupt") from exc
    return f"HDF5: opened, {count} datasets read (HDF5 keeps no checksum of the numbers)"


def check_keras_zip(path: Path) -> str:
    """Check every member's CRC-32, parse config.json and read the inner weights file."""
    try:
        with guard.open_zip(path) as archive:  # member count, names and declared sizes checked first
            bad = archive.testzip()  # streams each member in 1 MiB pieces
            if bad is not None:
                raise CorruptCheckpointError(f"zip member '{bad}' fails its CRC-32 check")
            names = archive.namelist()
            config = guard.load_json(guard.read_member(archive, "config.json", source=f"{path}!config.json"),
                                     source=f"{path}!config.json", what="config.json")
            if not isinstance(config.get("class_name"), str) or not isinstance(config.get("config"), dict):
                raise CorruptCheckpointError("config.json has no 'class_name' string and 'config' object")
            if RNG_MEMBER in names:
                _load_member_tensors(archive, path)
            count = 0
            if "model.weights.h5" in names:
                with archive.open("model.weights.h5") as member, \
                        guard.open_hdf5(member, source=f"{path}!model.weights.h5") as handle:
                    count = _read_hdf5(handle)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        if isinstance(exc, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(f".keras archive cannot be read ({_first_line(exc)}); it is truncated or corrupt") from exc
    return f".keras: {len(names)} zip members match their CRC-32, {count} weight datasets read"


def check_safetensors(path: Path) -> str:
    """Parse the header; every tensor's dtype, shape and offsets must add up to the file's length."""
    from modelkeep.formats.safetensors import _whole, read_header

    size = guard.regular_file(path, what="safetensors file").st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{size} bytes, shorter than the 8-byte header length: truncated")
        length = int.from_bytes(head, "little")
        if length > limits.current().max_safetensors_header or 8 + length > size:
            raise CorruptCheckpointError(f"header length {length} does not fit in the file's {size} bytes: truncated or corrupt")
        header, _ = read_header(head + handle.read(length), path)
    metadata = header.pop("__metadata__", None) or {}
    entries = []
    for name, entry in header.items():
        try:
            start, stop = (_whole(n) for n in entry["data_offsets"])
            dims = [_whole(n) for n in entry["shape"]]
            itemsize = _ITEMSIZE.get(entry["dtype"], 0) if isinstance(entry["dtype"], str) else 0
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"tensor '{name}' has a malformed entry ({_first_line(exc)})") from exc
        entries.append((start, stop, name, dims, itemsize, entry["dtype"]))
    end = 0
    for start, stop, name, dims, itemsize, _dtype in sorted(entries):
        count = 1
        for dim in dims:
            count *= dim
        if start != end or stop - start != count * itemsize:
            raise CorruptCheckpointError(f"tensor '{name}' has offsets {start}..{stop} that do not match its dtype and shape")
        end = stop
    if 8 + length + end != size:
        raise CorruptCheckpointError(f"the header describes {8 + length + end} bytes but the file has {size}: truncated or corrupt")
    for key in ("modelkeep", "modelkeep_order"):
        if key in metadata:
            guard.load_json(metadata[key], source=path, what=f"{key} metadata", expect=None)
    registry.SAFETENSORS.read(path)  # modelkeep's metadata and order parse and name real tensors
    return f"safetensors: header parsed, {len(header)} tensors fill the file exactly (no checksum of the numbers)"


def check_saved_model(path: Path) -> str:
    """Recompute the SavedModel fingerprint, read every variable, parse modelkeep's files."""
    guard.check_tree(path)  # no symlink leaving the directory, no device or FIFO inside
    proto = guard.read_saved_model_proto(path)
    parts = [f"saved_model.pb parsed ({len(proto.meta_graphs)} meta graph)"]
    fingerprint = _check_fingerprint(path)
    if fingerprint:
        parts.append(fingerprint)
    parts.append(check_tf_checkpoint(path / "variables" / "variables").replace("TF checkpoint: ", "variables: "))
    if (path / HEADER_FILE).exists():
        guard.read_json(path / HEADER_FILE, what=HEADER_FILE)
        parts.append(f"{HEADER_FILE} parsed")
    if (path / OPTIMIZER_FILE).exists():
        check_safetensors(path / OPTIMIZER_FILE)
        parts.append(f"{OPTIMIZER_FILE} complete")
    return "SavedModel: " + "; ".join(parts)


def _check_fingerprint(path: Path) -> str | None:
    """Compare ``fingerprint.pb`` with one recomputed from the files (None if unavailable)."""
    stored_path = path / "fingerprint.pb"
    if not stored_path.exists():
        return None
    try:
        from tensorflow.core.protobuf import fingerprint_pb2
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
    except ImportError:  # a private TensorFlow module: skip the check where it moved
        return None
    stored, fresh = fingerprint_pb2.FingerprintDef(), fingerprint_pb2.FingerprintDef()
    stored.ParseFromString(guard.read_regular(stored_path, max_bytes=limits.current().max_protobuf_bytes, what="fingerprint"))
    fresh.ParseFromString(fingerprinting.CreateFingerprintDef(str(path)))
    if stored.saved_model_checksum != fresh.saved_model_checksum:
        raise CorruptCheckpointError("saved_model.pb does not match the checksum in fingerprint.pb")
    if stored.checkpoint_hash != fresh.checkpoint_hash:
        raise CorruptCheckpointError("variables/variables.index does not match the hash in fingerprint.pb")
    return "fingerprint.pb matches"


def check_backup(path: Path) -> str:
    return check_safetensors(path / store.STORE_STATE).replace("safetensors:", f"{store.STORE_STATE}:")


_CHECKS: dict[str, Callable[[Path], str]] = {
    registry.TF_CHECKPOINT.name: check_tf_checkpoint,
    registry.SAVED_MODEL.name: check_saved_model,
    registry.HDF5.name: check_hdf5,
    registry.KERAS_WEIGHTS.name: check_hdf5,
    registry.KERAS_ZIP.name: check_keras_zip,
    registry.SAFETENSORS.name: check_safetensors,
    BACKUP: check_backup,
}
