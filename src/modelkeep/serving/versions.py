"""Where versions come from: one saved model, a TF Serving base directory, or a training run.

* a model file or SavedModel directory: one version, ``1``;
* a base directory with numbered subdirectories (``base/1/``, ``base/2/``, TF Serving's
  layout): the number is the version;
* a training run's checkpoint directory: every checkpoint ``list_checkpoints`` reports, the
  version being its ``step``; only status ``ok`` (checksums verified) is ever loaded.

Example::

    source = ModelSource.detect("runs/exp1")
    for c in source.scan():            # Candidate(version=120, path=..., status='ok', ...)
        model = source.load(c)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkeep.checkpoint import store
from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, GraphOnlyModelError
from modelkeep.storage.fs import is_url

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class Candidate:
    """One version found on disk (not necessarily loadable)."""

    version: int  # -1: not known (a checkpoint without a manifest)
    path: Path
    status: str  # 'ok' | 'corrupt' | 'incomplete'
    backup: bool = False  # modelkeep's own ckpt-<step>/ layout (state, not a model file)
    problem: str | None = None
    stamp: float = 0.0  # mtime: a rewritten path is a new candidate


def _stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except (OSError, AttributeError):  # AttributeError: a RemotePath (its commit's time is used)
        return 0.0


class ModelSource:
    """A served path and the rule that turns it into versions."""

    def __init__(self, path: Path, kind: str):
        self.path = path
        self.kind = kind  # 'single' | 'base' | 'run'
        self._verified: dict[tuple[str, float, float, int], store.CheckpointInfo] = {}

    @classmethod
    def detect(cls, path: str | Path) -> ModelSource:
        """Decide what ``path`` is; raises ``CheckpointNotFoundError`` when it is not there."""
        if is_url(path):  # s3://...: one committed model, or a run directory (checkpoint.remote)
            from modelkeep.checkpoint import remote

            directory, name = remote.split(path)
            if directory.entry(name) is not None or str(path).endswith(MODEL_SUFFIXES) or remote.holds_saved_model(path):
                return cls(remote.RemotePath(str(path)), "single")
            return cls(remote.RemotePath(str(path)), "base" if remote.is_base_directory(path) else "run")
        path = Path(path)
        if not path.exists():
            raise CheckpointNotFoundError(
                f"serve: {path} does not exist. Give a saved model (.keras, .h5, SavedModel directory), "
                "a TF Serving base directory (numbered version subdirectories) or a training run's directory."
            )
        if path.is_file() or (path / "saved_model.pb").exists():
            return cls(path, "single")
        if any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
            return cls(path, "base")
        return cls(path, "run")

    @property
    def watches(self) -> bool:
        """Whether new versions can appear (a single model file is loaded once)."""
        return self.kind != "single"

    def scan(self) -> list[Candidate]:
        """Every version on disk now, newest first."""
        if self.kind == "single":
            return [Candidate(1, self.path, store.OK, stamp=_stamp(self.path))]
        if self.kind == "base":
            return self._scan_base()
        return self._scan_run()

    def _scan_base(self) -> list[Candidate]:
        if is_url(self.path):  # committed versions by their record; uploaded folders by their files
            from modelkeep.checkpoint import remote

            return [Candidate(v, p, status, problem=problem, stamp=stamp)
                    for v, p, status, problem, stamp in remote.base_versions(self.path)]  # fmt: skip
        found = []
        for sub in self.path.iterdir():
            if not (sub.is_dir() and sub.name.isdigit()):
                continue
            if (sub / "saved_model.pb").exists():
                found.append(Candidate(int(sub.name), sub, store.OK, stamp=_stamp(sub / "saved_model.pb")))
                continue
            files = sorted(p for p in sub.iterdir() if p.suffix in MODEL_SUFFIXES)
            if files:
                found.append(Candidate(int(sub.name), files[0], store.OK, stamp=_stamp(files[0])))
            else:
                found.append(Candidate(int(sub.name), sub, store.INCOMPLETE, problem="no saved_model.pb or model file yet"))
        return sorted(found, key=lambda c: c.version, reverse=True)

    def _scan_run(self) -> list[Candidate]:
        """List without reading the checkpoints; verify each new one once (cached by mtime and size)."""
        if is_url(self.path):  # sizes checked by the listing; every CRC-32 on download (load)
            return [Candidate(int(i.step), i.path, i.status, i.format == "modelkeep backup", i.problem,
                              float(i.wall_time or 0.0))  # fmt: skip
                    for i in store.list_checkpoints(self.path) if i.step is not None]  # fmt: skip
        found = []
        for info in store.list_checkpoints(self.path, verify=False):
            if info.status == store.OK:
                key = (str(info.path), _stamp(store.manifest_path(info.path)), _stamp(info.path), info.size)
                if key not in self._verified:
                    self._verified[key] = store.info_for(info.path, verify=True)
                info = self._verified[key]
            if info.step is None:  # no manifest (yet): no version to give it; reported, not served
                if info.status != store.OK:
                    found.append(Candidate(-1, info.path, info.status, problem=info.problem, stamp=_stamp(info.path)))
                continue
            backup = info.format == "modelkeep backup"
            found.append(Candidate(int(info.step), info.path, info.status, backup, info.problem, _stamp(info.path)))
        return found

    def verify(self, candidate: Candidate) -> None:
        """Check a run checkpoint's checksums again just before loading it."""
        if self.kind != "run" or is_url(self.path):  # a download checks every CRC-32 itself
            return
        info = store.info_for(candidate.path, verify=True)
        if info.status != store.OK:
            raise CorruptCheckpointError(f"serve: {candidate.path} is {info.status} now: {info.problem}")

    def load(self, candidate: Candidate) -> Any:
        """The Keras model of a candidate (uncompiled: serving needs no optimizer), checksums checked again."""
        self.verify(candidate)
        if candidate.backup:
            from modelkeep.capture import build_model

            state = store.load_state(candidate.path)
            return build_model(state, compile=False, source=str(candidate.path))
        if is_url(candidate.path):  # downloaded (every CRC-32 checked), loaded, the copy dropped
            from modelkeep.checkpoint import remote

            with remote.fetched(candidate.path) as local:
                return _load_model(local)
        return _load_model(candidate.path)


def _load_model(path: Path) -> Any:
    from modelkeep.api import load_model
    from modelkeep.formats.savedmodel import has_keras_part

    if path.is_dir() and (path / "saved_model.pb").exists() and not has_keras_part(path):
        # served by its signatures as TF Serving does (Predictor.from_saved_model, ops scanned
        # first), not through the inference-only Keras wrapper load_model would return
        raise GraphOnlyModelError(f"serve: {path} is a SavedModel without a Keras part")
    return load_model(path, compile=False)
