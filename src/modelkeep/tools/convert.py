"""Any supported format to any other: read SRC into a ``ModelState``, write it as DST.

The destination's format comes from its path (DESIGN.md table). What it holds follows
the source: a whole model (SavedModel, ``.keras``, an HDF5 model file) stays a whole model,
weights stay weights; ``kind="weights"|"model"`` decides where the path allows both (a
bare path: TF checkpoint or SavedModel; ``.h5``: HDF5 weights or model). The optimizer
state is carried when both sides keep it. After writing, DST is read back and compared
with what was written, and a sidecar manifest (sizes + CRC-32) is written beside it.

Example::

    convert("model.keras", "exported")          # SavedModel directory, optimizer included
    convert("ckpt/saved_modelname", "w.safetensors")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.checkpoint import store
from modelkeep.errors import FormatError, UnsupportedModelError
from modelkeep.formats import registry
from modelkeep.formats.base import Format
from modelkeep.state import MODEL, OPTIMIZER, ModelState
from modelkeep.storage.fs import is_url
from modelkeep.tools.diff import diff_states
from modelkeep.tools.reading import read_state

WEIGHTS, MODEL_KIND = "weights", "model"
Step = Callable[[int, int, str], None]


@dataclass
class ConvertResult:
    """What ``convert`` read and wrote."""

    src: str
    dst: str
    format_src: str
    format_dst: str
    kind: str
    variables: int
    optimizer_carried: bool
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _source_kind(format_name: str, state: ModelState) -> str:
    if format_name in (registry.SAVED_MODEL.name, registry.KERAS_ZIP.name):
        return MODEL_KIND
    if format_name == registry.HDF5.name and state.model_config is not None and state.compile_config is not None:
        return MODEL_KIND
    return WEIGHTS


def destination(dst: Path, kind: str | None, source_kind: str) -> tuple[Format, str]:
    """The format and kind (weights or model) to write ``dst`` as."""
    wanted = kind or source_kind
    try:
        return (registry.model_format(dst), MODEL_KIND) if wanted == MODEL_KIND else (registry.weights_format(dst), WEIGHTS)
    except FormatError:
        if kind is not None:
            raise
    other = WEIGHTS if wanted == MODEL_KIND else MODEL_KIND
    return (registry.model_format(dst), MODEL_KIND) if other == MODEL_KIND else (registry.weights_format(dst), WEIGHTS)


def _prepare(state: ModelState, fmt: Format, kind: str, include_optimizer: bool, notes: list[str]) -> ModelState:
    """The state to write: the optimizer kept only where the destination keeps it."""
    keep = include_optimizer and state.has_optimizer
    if keep and (not fmt.keeps_optimizer or (kind == WEIGHTS and fmt is registry.HDF5)):
        notes.append(f"the optimizer state is not carried: {fmt.name} {kind} files do not keep it")
        keep = False
    if kind == MODEL_KIND and state.model_config is None:
        raise UnsupportedModelError(
            f"convert: a whole model ({fmt.name}) needs the model's architecture, but the source holds "
            "weights only. Convert to a weights path (.safetensors, .weights.h5, .h5 with --as weights, or a "
            "bare prefix), or give --like MODEL to read the weights into a saved model's architecture."
        )
    if fmt is registry.KERAS_WEIGHTS and state.model_config is None:
        raise UnsupportedModelError(
            "convert: a Keras 3 .weights.h5 is written through the Keras model, but the source holds no "
            "architecture. Give --like MODEL, or write .safetensors or a TF checkpoint instead."
        )
    variables = {k: v for k, v in state.variables.items() if k.startswith(MODEL + "/") or (keep and k.startswith(OPTIMIZER + "/"))}
    compile_config = state.compile_config if (keep or kind == MODEL_KIND) else None
    if kind == WEIGHTS and fmt is registry.HDF5:
        compile_config = None
    return ModelState(variables, state.model_config, compile_config, dict(state.metadata))


def convert(
    src: Path | str,
    dst: Path | str,
    *,
    kind: str | None = None,
    include_optimizer: bool = True,
    like: Path | str | None = None,
    check: bool = True,
    manifest: bool = True,
    on_step: Step | None = None,
) -> ConvertResult:
    """Convert ``src`` to ``dst``; ``on_step(i, total, what)`` is called before each stage.

    Either may be a URL (``s3://b/run/best.keras``): the source is downloaded (CRC-checked),
    the destination written locally, read back, then committed as one upload."""
    if is_url(src) or is_url(dst) or is_url(like):
        from modelkeep.checkpoint import remote

        if is_url(dst) and remote.exists(dst):
            raise FileExistsError(f"convert: {dst} already exists; remove it or choose another destination.")
        record: dict[str, Any] = {"converted_from": str(src)}
        with remote.local_copy(src) as local_src, remote.local_copy(like) as local_like, \
                remote.local_target(dst, metadata=record) as local_dst:  # fmt: skip
            result = convert(local_src, local_dst, kind=kind, include_optimizer=include_optimizer, like=local_like,
                             check=check, manifest=manifest, on_step=on_step)  # fmt: skip
            record["format"] = result.format_dst
        result.src, result.dst = str(src), str(dst)
        if is_url(dst):
            result.files = [str(dst)]
        return result
    src, dst = Path(src), Path(dst)
    total = 2 + int(check) + int(manifest)
    step = on_step or (lambda i, n, what: None)
    step(0, total, f"reading {src.name}")
    format_src, state = read_state(src, like=like)
    fmt, kind = destination(dst, kind, _source_kind(format_src, state))
    if dst.exists() or fmt.exists(dst):
        raise FileExistsError(f"convert: {dst} already exists; remove it or choose another destination.")
    notes: list[str] = []
    out = _prepare(state, fmt, kind, include_optimizer, notes)
    step(1, total, f"writing {dst.name} ({fmt.name})")
    files = fmt.write(out, dst)
    result = ConvertResult(str(src), str(dst), format_src, fmt.name, kind, len(out.variables), out.has_optimizer,
                           [str(f) for f in files], notes)
    if check:
        step(2, total, f"reading {dst.name} back")
        _check_written(out, dst)
        result.checked = True
    if manifest:
        step(total - 1, total, "writing the manifest")
        store.write_sidecar_manifest(dst, fmt, {"converted_from": str(src), **_summary(out.metadata)})
    step(total, total, "done")
    return result


def _summary(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in ("step", "epoch", "logs", "wall_time", "versions") if k in metadata}


def _check_written(written: ModelState, dst: Path) -> None:
    """Every variable written must read back exactly."""
    from modelkeep.errors import CorruptCheckpointError

    _, back = read_state(dst)
    report = diff_states(written, back)
    bad = report.changed + report.reshaped + report.removed
    if bad:
        first = bad[0]
        raise CorruptCheckpointError(
            f"convert: {dst} was written but variable '{first.name}' does not read back the same "
            f"({first.status}); {len(bad)} variable(s) differ. The file is kept for inspection; do not use it."
        )
