"""Is a saved file intact? Every check its manifest and its format allow.

Two kinds of check, both run when both are possible:

* **the manifest** (``<name>.manifest.json`` beside a checkpoint, ``manifest.json`` in a
  ``ckpt-<step>/`` backup): every listed file present, with the right size and CRC-32;
* **the format's own checks**, so a file without a manifest is still checked:

  ===================  ==========================================================
  TF checkpoint        every tensor read; TensorFlow checks each one's crc32c
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

import io
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.checkpoint import store
from modelkeep.errors import CorruptCheckpointError, FormatError
from modelkeep.formats import registry
from modelkeep.formats.savedmodel import HEADER_FILE, OPTIMIZER_FILE
from modelkeep.formats.tf_checkpoint import STATE_FILE
from modelkeep.storage.checksums import verify_manifest
from modelkeep.storage.fs import is_url
from modelkeep.tools.reading import BACKUP, is_backup_dir

SAFETENSORS_HEADER_LIMIT = 100_000_000
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
    results = [_one(info.path, on_item) for info in infos]
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
    import tensorflow as tf

    result = VerifyResult(state_file, "TF checkpoint state file", True)
    try:
        state = tf.train.get_checkpoint_state(str(state_file.parent))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
        return _fail(result, f"{state_file} cannot be parsed ({_first_line(exc)})")
    named = list(state.all_model_checkpoint_paths) if state else []
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
    """Read every tensor of a TF checkpoint; TensorFlow checks each one's crc32c."""
    import tensorflow as tf

    registry.TF_CHECKPOINT.require(prefix)
    index, data = registry.TF_CHECKPOINT.files(prefix)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        keys = sorted(reader.get_variable_to_shape_map())
    except (tf.errors.OpError, ValueError) as exc:
        raise CorruptCheckpointError(f"{index.name} cannot be read ({_first_line(exc)}): truncated or corrupt") from exc
    for key in keys:
        try:
            reader.get_tensor(key)
        except (tf.errors.OpError, ValueError) as exc:
            raise CorruptCheckpointError(f"tensor '{key}' in {data.name} fails its check: {_first_line(exc)}") from exc
    return f"TF checkpoint: {len(keys)} tensors read, each matches its crc32c"


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


def check_hdf5(path: Path) -> str:
    """Open an HDF5 file and read every dataset and attribute."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            count = _read_hdf5(handle)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CorruptCheckpointError(f"HDF5 file cannot be read ({_first_line(exc)}); it is truncated or corrupt") from exc
    return f"HDF5: opened, {count} datasets read (HDF5 keeps no checksum of the numbers)"


def check_keras_zip(path: Path) -> str:
    """Check every member's CRC-32, parse config.json and read the inner weights file."""
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise CorruptCheckpointError(f"zip member '{bad}' fails its CRC-32 check")
            names = archive.namelist()
            json.loads(archive.read("config.json"))
            count = 0
            if "model.weights.h5" in names:
                with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as handle:
                    count = _read_hdf5(handle)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        if isinstance(exc, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(f".keras archive cannot be read ({_first_line(exc)}); it is truncated or corrupt") from exc
    return f".keras: {len(names)} zip members match their CRC-32, {count} weight datasets read"


def check_safetensors(path: Path) -> str:
    """Parse the header; every tensor's dtype, shape and offsets must add up to the file's length."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{size} bytes, shorter than the 8-byte header length: truncated")
        length = int.from_bytes(head, "little")
        if length > SAFETENSORS_HEADER_LIMIT or 8 + length > size:
            raise CorruptCheckpointError(f"header length {length} does not fit in the file's {size} bytes: truncated or corrupt")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpointError(f"the header is not valid JSON ({exc}): corrupt") from exc
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, stop = entry["data_offsets"]
        count = 1
        for dim in entry["shape"]:
            count *= dim
        if start != end or stop - start != count * _ITEMSIZE.get(entry["dtype"], 0):
            raise CorruptCheckpointError(f"tensor '{name}' has offsets {start}..{stop} that do not match its dtype and shape")
        end = stop
    if 8 + length + end != size:
        raise CorruptCheckpointError(f"the header describes {8 + length + end} bytes but the file has {size}: truncated or corrupt")
    for key in ("modelkeep", "modelkeep_order"):
        if key in metadata:
            json.loads(metadata[key])
    return f"safetensors: header parsed, {len(header)} tensors fill the file exactly (no checksum of the numbers)"


def check_saved_model(path: Path) -> str:
    """Recompute the SavedModel fingerprint, read every variable, parse modelkeep's files."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    parts = [f"saved_model.pb parsed ({len(proto.meta_graphs)} meta graph)"]
    fingerprint = _check_fingerprint(path)
    if fingerprint:
        parts.append(fingerprint)
    parts.append(check_tf_checkpoint(path / "variables" / "variables").replace("TF checkpoint: ", "variables: "))
    if (path / HEADER_FILE).exists():
        json.loads((path / HEADER_FILE).read_text())
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
    stored.ParseFromString(stored_path.read_bytes())
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
