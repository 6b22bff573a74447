"""What every on-disk format provides: a reader and a writer of ``ModelState``.

Model-level operations have defaults built on the state-level ones; a format that
must go through Keras itself (the Keras 3 ``.keras`` zip) overrides them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelkeep.capture import build_model, capture, restore
from modelkeep.errors import CheckpointNotFoundError
from modelkeep.state import ModelState


class Format:
    """One on-disk format. Subclasses set ``name`` and implement ``write``/``read``/``files``.

    Every subclass's ``read``, ``load_weights`` and ``load_model`` run under
    ``storage.guard.malformed``: whatever a damaged or hostile file makes a parser raise comes
    out as a ``CorruptCheckpointError`` naming the file, never as a bare ``TypeError``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from modelkeep.storage.guard import guarded

        for method, action, path_arg in (("read", "load", 0), ("load_model", "load_model", 0), ("load_weights", "load_weights", 1)):
            fn = cls.__dict__.get(method)
            if fn is not None and not getattr(fn, "__guarded__", False):
                setattr(cls, method, guarded(action, path_arg)(fn))

    name = "format"
    #: what the format can hold: "weights", "model" or both
    holds: tuple[str, ...] = ("weights",)
    keeps_optimizer = False

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        """Write ``state`` under ``path`` with the commit protocol; return the files written."""
        raise NotImplementedError

    def read(self, path: Path) -> ModelState:
        raise NotImplementedError

    def files(self, path: Path) -> list[Path]:
        """The files that make up the saved object at ``path`` (for listing and checksums)."""
        return [path]

    def exists(self, path: Path) -> bool:
        return path.exists()

    def require(self, path: Path) -> None:
        if not self.exists(path):
            raise CheckpointNotFoundError(
                f"File not found: filepath={path}. load: no {self.name} there. Check the path; a directory of checkpoints "
                "can be given to load_weights to take the newest one."
            )

    # ----------------------------------------------------------- model-level defaults
    def save_weights(self, model: Any, path: Path) -> list[Path]:
        return self.write(capture(model, include_optimizer=False), path, model=model)

    def save_model(self, model: Any, path: Path, *, include_optimizer: bool = True) -> list[Path]:
        return self.write(capture(model, include_optimizer=include_optimizer), path, model=model)

    def load_weights(self, model: Any, path: Path) -> None:
        self.require(path)
        restore(model, self.read(path), source=str(path), optimizer=False)

    def load_model(self, path: Path, **kwargs: Any) -> Any:
        self.require(path)
        return build_model(self.read(path), source=str(path), **kwargs)
