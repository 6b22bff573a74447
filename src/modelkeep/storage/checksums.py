"""Checksums of files and manifests that list them.

A manifest is a small JSON file that names every file of a checkpoint with its size
and CRC-32, plus the checkpoint's metadata. ``verify_manifest`` re-reads the files and
raises ``CorruptCheckpointError`` naming the first file that fails, and the check.

Example::

    write_manifest(Path("ckpt.manifest.json"), [Path("ckpt.safetensors")], {"step": 10})
    verify_manifest(Path("ckpt.manifest.json"))
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError
from modelkeep.storage.commit import write_bytes

CHUNK = 8 << 20
MANIFEST_VERSION = 1


def file_crc32(path: str | os.PathLike) -> int:
    """CRC-32 of a whole file, read in large chunks."""
    crc = 0
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            crc = zlib.crc32(view[:count], crc)
    return crc


def describe_files(root: Path, files: list[Path]) -> dict[str, dict[str, int]]:
    """``{relative name: {"size": n, "crc32": c}}`` for the given files under ``root``."""
    return {
        str(path.relative_to(root)): {"size": path.stat().st_size, "crc32": file_crc32(path)}
        for path in files
    }


def write_manifest(path: Path, files: list[Path], metadata: dict[str, Any]) -> None:
    """Write a manifest for ``files`` (relative to the manifest's directory), atomically."""
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "files": describe_files(path.parent, files),
        "metadata": metadata,
    }
    write_bytes(path, json.dumps(doc, indent=1, default=str).encode())


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"verify: no manifest at {path}.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(
            f"verify: the manifest {path} is not valid JSON ({exc}); the checkpoint it "
            "describes cannot be trusted. Use an older checkpoint."
        ) from exc
    if not isinstance(doc, dict) or "files" not in doc:
        raise CorruptCheckpointError(f"verify: {path} is not a modelkeep manifest (no 'files').")
    return doc


def verify_manifest(path: Path) -> dict[str, Any]:
    """Check every file the manifest lists: present, right size, right CRC-32."""
    doc = read_manifest(path)
    for name, expected in doc["files"].items():
        target = path.parent / name
        if not target.exists():
            raise CorruptCheckpointError(
                f"verify: {target} is listed in {path.name} but missing; the checkpoint is incomplete."
            )
        size = target.stat().st_size
        if size != expected["size"]:
            raise CorruptCheckpointError(
                f"verify: {target} has {size} bytes but the manifest expects {expected['size']} "
                "(size check): the file is truncated or was overwritten. Use an older checkpoint."
            )
        crc = file_crc32(target)
        if crc != expected["crc32"]:
            raise CorruptCheckpointError(
                f"verify: {target} fails its CRC-32 check (expected {expected['crc32']:08x}, "
                f"found {crc:08x}): the file is corrupt. Use an older checkpoint."
            )
    return doc
