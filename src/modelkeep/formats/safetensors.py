"""``.safetensors``: every variable of a ``ModelState`` as a named tensor.

The header's ``__metadata__`` holds ``modelkeep`` (config, compile config and training
metadata as JSON) and ``modelkeep_order`` (the variable names in model order, since
safetensors sorts its tensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from modelkeep.errors import CorruptCheckpointError, FormatError
from modelkeep.formats.base import Format
from modelkeep.state import ModelState
from modelkeep.storage.commit import atomic_path


class SafetensorsFormat(Format):
    name = "safetensors"
    holds = ("weights",)
    keeps_optimizer = True

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        metadata = {"modelkeep": state.header_json(), "modelkeep_order": json.dumps(list(state.variables))}
        tensors = {k: np.require(v, requirements="C") for k, v in state.variables.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return [path]

    def read(self, path: Path) -> ModelState:
        self.require(path)
        try:
            tensors = load_file(str(path))
            metadata = _read_metadata(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"load: {path} is not a readable safetensors file ({exc}). It may be truncated "
                "or corrupt; use another checkpoint."
            ) from exc
        order = json.loads(metadata.get("modelkeep_order", "null")) or sorted(tensors)
        if "modelkeep" in metadata:
            config, compile_config, meta = ModelState.header_from_json(metadata["modelkeep"])
        else:
            config, compile_config, meta = None, None, {}
            order = ["model/" + k for k in order]
            tensors = {"model/" + k: v for k, v in tensors.items()}
        missing = [k for k in order if k not in tensors]
        if missing:
            raise FormatError(f"load: {path} names tensor '{missing[0]}' in its order but does not hold it.")
        return ModelState({k: tensors[k] for k in order}, config, compile_config, meta)


def _read_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than the 8-byte header length")
        size = int.from_bytes(head, "little")
        if size > 100_000_000:
            raise ValueError(f"header length {size} exceeds the 100 MB limit")
        header = json.loads(handle.read(size))
    return header.get("__metadata__") or {}
