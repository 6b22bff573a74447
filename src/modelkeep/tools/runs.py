"""A run's checkpoints: the listing ``modelkeep ls`` and ``modelkeep plot`` show, and the best one.

Example::

    run = list_run("run", monitor=None)          # monitor: val_loss if logged, else loss
    run.best.path if run.best else None
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.checkpoint.retention import direction_of
from modelkeep.checkpoint.store import OK, CheckpointInfo, list_checkpoints
from modelkeep.storage.fs import as_location


def default_monitor(infos: list[CheckpointInfo]) -> str | None:
    """``val_loss`` if any checkpoint logged it, else ``loss``, else ``None``."""
    logged = {key for info in infos for key in info.logs}
    for candidate in ("val_loss", "loss"):
        if candidate in logged:
            return candidate
    return None


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """``min`` or ``max`` for a metric (``retention.direction_of``, the rule ``prune`` uses)."""
    if mode in ("min", "max"):
        return mode
    return direction_of(monitor)


def best_checkpoint(infos: list[CheckpointInfo], monitor: str | None, mode: str = "auto") -> CheckpointInfo | None:
    """The intact checkpoint with the best logged ``monitor`` value (``None`` if none logged it)."""
    if monitor is None:
        return None
    scored = [i for i in infos if i.status == OK and isinstance(i.logs.get(monitor), (int, float))]
    if not scored:
        return None
    pick = max if monitor_mode(monitor, mode) == "max" else min
    return pick(scored, key=lambda i: i.logs[monitor])


@dataclass
class RunListing:
    """The checkpoints of a directory, newest first, with the monitored metric and the best one."""

    directory: Path
    checkpoints: list[CheckpointInfo]
    monitor: str | None
    mode: str
    best: CheckpointInfo | None
    metrics: list[str] = field(default_factory=list)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        rows = []
        for info in self.checkpoints:
            row = info.as_dict()
            row["name"] = info.path.name
            row["age_seconds"] = None if info.wall_time is None else round(now - info.wall_time, 3)
            row["best"] = info is self.best
            rows.append(row)
        return {
            "directory": str(self.directory),
            "monitor": self.monitor,
            "mode": self.mode,
            "best": str(self.best.path) if self.best else None,
            "checkpoints": rows,
        }


def list_run(directory: Path | str, *, monitor: str | None = None, mode: str = "auto", verify: bool = True) -> RunListing:
    """List ``directory``'s checkpoints (``store.list_checkpoints``) and mark the best."""
    directory = as_location(directory)  # an s3://... URL stays one
    infos = list_checkpoints(directory, verify=verify)
    monitor = monitor or default_monitor(infos)
    metrics = sorted({key for info in infos for key in info.logs})
    resolved = monitor_mode(monitor, mode) if monitor else "min"
    return RunListing(directory, infos, monitor, resolved, best_checkpoint(infos, monitor, mode), metrics)
