"""How two saved models or checkpoints differ: variables added, removed, reshaped, and per
variable the largest absolute and relative difference.

Variables are matched by their structural name (``model/layer_with_weights-0/kernel``);
when the two files share no name but hold the same number of variables with the same
shapes in the same order (a Keras 3 ``.weights.h5`` read without a model beside a file
with structural names), they are matched by position and the report says so.

The relative difference of a variable is ``max|a - b| / max|a|`` (0 when both are zero).

Example::

    report = diff_paths("run/ckpt-000000010", "run/ckpt-000000020")
    report.identical, [v.name for v in report.changed]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.state import ModelState
from modelkeep.tools.reading import read_state

EQUAL, CHANGED, RESHAPED, ADDED, REMOVED = "equal", "changed", "reshaped", "added", "removed"


@dataclass
class VariableDiff:
    """One variable's comparison. ``status`` is equal, changed, reshaped, added or removed."""

    name: str
    status: str
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    name_b: str | None = None


@dataclass
class DiffReport:
    """The whole comparison of A with B."""

    a: str
    b: str
    format_a: str = ""
    format_b: str = ""
    matched_by: str = "name"
    variables: list[VariableDiff] = field(default_factory=list)
    config_equal: bool | None = None

    def _with(self, status: str) -> list[VariableDiff]:
        return [v for v in self.variables if v.status == status]

    added = property(lambda self: self._with(ADDED))
    removed = property(lambda self: self._with(REMOVED))
    reshaped = property(lambda self: self._with(RESHAPED))
    changed = property(lambda self: self._with(CHANGED))
    equal = property(lambda self: self._with(EQUAL))

    @property
    def identical(self) -> bool:
        """Same variables, shapes, dtypes and values (the model config is reported apart)."""
        return all(v.status == EQUAL for v in self.variables)

    def groups(self) -> dict[str, dict[str, int]]:
        """Per variable group (``model``, ``optimizer``, ...), how many of each status."""
        out: dict[str, dict[str, int]] = {}
        for v in self.variables:
            counts = out.setdefault(v.name.split("/", 1)[0], {})
            counts[v.status] = counts.get(v.status, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["identical"] = self.identical
        out["counts"] = {s: len(self._with(s)) for s in (EQUAL, CHANGED, RESHAPED, ADDED, REMOVED)}
        out["groups"] = self.groups()
        return out


def _compare(name: str, a: np.ndarray, b: np.ndarray, name_b: str | None = None) -> VariableDiff:
    diff = VariableDiff(name, EQUAL, list(a.shape), list(b.shape), str(a.dtype), str(b.dtype), name_b=name_b)
    if a.shape != b.shape:
        diff.status = RESHAPED
        return diff
    if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
        fa, fb = a.astype(np.float64), b.astype(np.float64)
        delta = np.abs(fa - fb)
        diff.max_abs = float(np.nanmax(delta)) if delta.size else 0.0
        if np.isnan(fa).any() or np.isnan(fb).any():
            diff.max_abs = float("nan") if not np.array_equal(fa, fb, equal_nan=True) else diff.max_abs
        scale = float(np.nanmax(np.abs(fa))) if fa.size else 0.0
        diff.max_rel = 0.0 if diff.max_abs == 0 else (diff.max_abs / scale if scale else float("inf"))
        same = np.array_equal(fa, fb, equal_nan=True)
    else:
        same = np.array_equal(a, b)
    if not same or a.dtype != b.dtype:
        diff.status = CHANGED
    return diff


def _by_position(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    if set(a) & set(b) or len(a) != len(b) or not a:
        return False
    return all(x.shape == y.shape for x, y in zip(a.values(), b.values()))


def diff_states(a: ModelState, b: ModelState, *, label_a: str = "A", label_b: str = "B") -> DiffReport:
    """Compare two states variable by variable."""
    report = DiffReport(label_a, label_b)
    groups = dict.fromkeys(k.split("/", 1)[0] for k in [*a.variables, *b.variables])
    for group in groups:
        va = {k: v for k, v in a.variables.items() if k.split("/", 1)[0] == group}
        vb = {k: v for k, v in b.variables.items() if k.split("/", 1)[0] == group}
        if _by_position(va, vb):
            report.matched_by = "position"
            report.variables += [_compare(ka, x, y, name_b=kb) for (ka, x), (kb, y) in zip(va.items(), vb.items())]
            continue
        report.variables += [
            _compare(name, array, vb[name]) if name in vb
            else VariableDiff(name, REMOVED, list(array.shape), None, str(array.dtype))
            for name, array in va.items()
        ]
        report.variables += [
            VariableDiff(name, ADDED, None, list(array.shape), None, str(array.dtype))
            for name, array in vb.items() if name not in va
        ]
    if a.model_config is not None and b.model_config is not None:
        report.config_equal = _canonical(a.model_config) == _canonical(b.model_config)
    return report


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def diff_paths(a: Path | str, b: Path | str, *, like: Path | str | None = None) -> DiffReport:
    """Read two saved files (any formats) and compare them.

    ``like``: a whole model to read Keras 3 ``.weights.h5`` files through (structural names).
    """
    format_a, state_a = read_state(a, like=like)
    format_b, state_b = read_state(b, like=like)
    report = diff_states(state_a, state_b, label_a=str(a), label_b=str(b))
    report.format_a, report.format_b = format_a, format_b
    return report
