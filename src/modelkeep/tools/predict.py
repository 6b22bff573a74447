"""Predictions of a saved model on new data read from ``.npy`` or ``.csv`` files.

CSV files may have a header row or not: a first row that does not parse as numbers is a
header. Outputs are written as ``.npy`` (one output), ``.npz`` (one array per output) or
``.csv`` (a header row ``<output>_<i>``, one row per example).

Example::

    result = predict_files("mysavedmodel", ["x.csv"], output="y.csv", batch_size=256)
    result.outputs[0].shape
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import FormatError, IncompatibleModelError
from modelkeep.storage.fs import is_url

Progress = Callable[[int, int], None]


def read_array(path: Path | str) -> np.ndarray:
    """A 2-D (or, for ``.npy``, any) array from ``.npy`` or ``.csv`` (header row optional)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)  # never unpickles: an object array is refused
        except (ValueError, OSError, EOFError) as exc:
            if "pickle" in str(exc):  # numpy's advice (allow_pickle=True) would run code from the file: not ours to give
                raise FormatError(
                    f"predict: {path} holds Python objects (a pickle payload), not numbers; modelkeep does not "
                    "unpickle input files. Save the input as a numeric array (np.save with a float or int dtype)."
                ) from None
            raise FormatError(
                f"predict: {path} is not a plain numeric .npy array ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "object arrays (pickles) are never loaded. Save the inputs with numpy.save of a numeric array."
            ) from exc
    return _read_csv(path, suffix)


def _read_csv(path: Path, suffix: str) -> np.ndarray:
    if suffix != ".csv":
        raise FormatError(f"predict: cannot read {path}: expected a .npy or .csv file. Received: {path.name}")
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise FormatError(f"predict: {path} holds no data rows.")
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise FormatError(f"predict: the rows of {path} have different numbers of columns ({sorted(widths)}).")
    try:
        return np.array([[float(cell) for cell in row] for row in rows])
    except ValueError as exc:
        raise FormatError(f"predict: {path} has a value that is not a number ({exc}).") from exc


def _numeric(row: list[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def write_outputs(path: Path | str, outputs: Sequence[np.ndarray], names: Sequence[str]) -> Path:
    """Write predictions as ``.npy`` (one output), ``.npz`` or ``.csv``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if len(outputs) != 1:
            raise FormatError(f"predict: the model has {len(outputs)} outputs; write them to a .npz or .csv file, not {path.name}.")
        np.save(path, outputs[0])
    elif suffix == ".npz":
        np.savez(path, **dict(zip(names, outputs)))
    elif suffix == ".csv":
        flat = [o.reshape(len(o), -1) for o in outputs]
        header = [f"{name}_{i}" for name, o in zip(names, flat) for i in range(o.shape[1])]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(np.concatenate(flat, axis=1).tolist())
    else:
        raise FormatError(f"predict: cannot write {path}: expected .npy, .npz or .csv. Received: {path.name}")
    return path


def _check_inputs(model: Any, arrays: list[np.ndarray], sources: Sequence[str]) -> list[np.ndarray]:
    specs = list(getattr(model, "inputs", None) or [])
    if specs and len(specs) != len(arrays):
        raise IncompatibleModelError(
            f"predict: the model has {len(specs)} inputs but {len(arrays)} input file(s) were given; "
            "give one --input per model input, in order."
        )
    rows = {len(a) for a in arrays}
    if len(rows) != 1:
        raise IncompatibleModelError(f"predict: the input files have different numbers of rows ({sorted(rows)}).")
    out = []
    for spec, array, source in zip(specs or [None] * len(arrays), arrays, sources):
        if spec is not None:
            want = tuple(spec.shape)[1:]
            if len(want) == array.ndim - 1 and any(w is not None and w != h for w, h in zip(want, array.shape[1:])):
                raise IncompatibleModelError(
                    f"predict: the model's input '{spec.name}' expects rows of shape {want} but {source} "
                    f"has rows of shape {array.shape[1:]}."
                )
            array = array.astype(spec.dtype, copy=False)
        out.append(array)
    return out


def predict_arrays(model: Any, inputs: list[np.ndarray], *, batch_size: int = 32, on_progress: Progress | None = None) -> list[np.ndarray]:
    """Run the model batch by batch; ``on_progress(done_rows, total_rows)`` after each batch."""
    total = len(inputs[0])
    chunks: list[list[np.ndarray]] = []
    for start in range(0, total, batch_size):
        batch = [x[start : start + batch_size] for x in inputs]
        result = model.predict_on_batch(batch if len(batch) > 1 else batch[0])
        flat = list(result.values()) if isinstance(result, dict) else (list(result) if isinstance(result, (list, tuple)) else [result])
        chunks.append([np.asarray(r) for r in flat])
        if on_progress:
            on_progress(min(start + batch_size, total), total)
    if not chunks:
        return []
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


class SignatureModel:
    """A SavedModel's ``serving_default`` signature with the two things ``predict`` uses of a
    Keras model (``inputs``, ``predict_on_batch``), for SavedModels without a Keras part."""

    def __init__(self, path: Path | str, *, allow_unsafe_ops: bool = False) -> None:
        from modelkeep.serving.predictor import Predictor

        self._predictor = Predictor.from_saved_model(str(path), allow_unsafe_ops=allow_unsafe_ops)
        self.inputs = self._predictor.inputs
        self.output_names = self._predictor.output_names

    def predict_on_batch(self, batch: Any) -> list[np.ndarray]:
        return self._predictor.run(list(batch) if isinstance(batch, list) else [batch])


def load_for_predict(path: Path | str, *, allow_unsafe_ops: bool = False) -> Any:
    """``modelkeep.load_model`` (uncompiled); a SavedModel without any Keras part is run
    through its serving signature instead (graph scanned first, see ``SignatureModel``).
    A Keras model that was refused (a Lambda layer) is never run through its graph."""
    from modelkeep.api import load_model
    from modelkeep.errors import GraphOnlyModelError
    from modelkeep.formats.savedmodel import has_keras_part

    directory = Path(path)
    if directory.is_dir() and (directory / "saved_model.pb").exists() and not has_keras_part(directory):
        return SignatureModel(path, allow_unsafe_ops=allow_unsafe_ops)
    try:
        return load_model(path, compile=False)
    except GraphOnlyModelError:
        return SignatureModel(path, allow_unsafe_ops=allow_unsafe_ops)


@dataclass
class PredictResult:
    outputs: list[np.ndarray]
    names: list[str]
    rows: int
    output_path: Path | None = None


def output_names(model: Any, count: int) -> list[str]:
    """The layer names of the model's outputs (``output``/``output_<i>`` when unknown)."""
    names = list(getattr(model, "output_names", None) or [])
    if not names:
        history = [getattr(t, "_keras_history", None) for t in (getattr(model, "outputs", None) or [])]
        names = [h.operation.name if h is not None else "" for h in history]
    if len(names) != count or len(set(names)) != count or not all(names):
        names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    return names


def predict_files(
    model_path: Path | str,
    inputs: Sequence[Path | str],
    *,
    output: Path | str | None = None,
    batch_size: int = 32,
    on_progress: Progress | None = None,
    on_loaded: Callable[[Any], None] | None = None,
    allow_unsafe_ops: bool = False,
) -> PredictResult:
    """Load a saved model (``modelkeep.load_model``), predict on the input files, optionally write.

    ``allow_unsafe_ops`` lets a graph-only SavedModel with file-system or Python ops run."""
    if batch_size < 1:
        raise ValueError(f"predict: --batch-size must be at least 1. Received: {batch_size}")
    if any(is_url(p) for p in [model_path, *inputs, output]):  # downloaded (CRC-checked) / committed
        from modelkeep.checkpoint import remote

        with contextlib.ExitStack() as stack:
            local_model = stack.enter_context(remote.local_copy(model_path))
            local_inputs = [stack.enter_context(remote.local_copy(p)) for p in inputs]
            local_output = stack.enter_context(remote.local_target(output, metadata={"format": "predictions"}))
            result = predict_files(local_model, local_inputs, output=local_output, batch_size=batch_size,
                                   on_progress=on_progress, on_loaded=on_loaded, allow_unsafe_ops=allow_unsafe_ops)  # fmt: skip
        if result.output_path is not None and is_url(output):
            result.output_path = remote.RemotePath(str(output))
        return result
    arrays = [read_array(p) for p in inputs]
    model = load_for_predict(model_path, allow_unsafe_ops=allow_unsafe_ops)
    if on_loaded:
        on_loaded(model)
    arrays = _check_inputs(model, arrays, [str(p) for p in inputs])
    outputs = predict_arrays(model, arrays, batch_size=batch_size, on_progress=on_progress)
    result = PredictResult(outputs, output_names(model, len(outputs)), len(arrays[0]))
    if output is not None:
        result.output_path = write_outputs(output, outputs, result.names)
    return result
