"""Callback state for exact resume: the ``get_state()`` / ``set_state()`` protocol.

A callback whose behaviour depends on what it saw earlier in the run (a patience
counter, a best value, a batch counter) keeps that across a restart by implementing::

    class MyCallback(keras.callbacks.Callback):
        def get_state(self) -> dict:
            return {"best": self.best, "wait": self.wait}     # JSON values and numpy arrays
        def set_state(self, state: dict) -> None:
            self.best, self.wait = state["best"], state["wait"]

``mk.fit`` calls ``get_state()`` at every backup and ``set_state(state)`` on resume,
after ``on_train_begin`` (so a reset there does not undo the restore) and before the
first batch. Values may be JSON values (``float('inf')`` included), NumPy arrays, or
lists of NumPy arrays (such as ``model.get_weights()``). The same protocol is used for
a ``keras.utils.PyDataset`` given as ``x``.

Keras's own callbacks whose state matters are covered here without the protocol:
``EarlyStopping``, ``ReduceLROnPlateau``, ``ModelCheckpoint``; ``LearningRateScheduler``,
``TerminateOnNaN``, ``ProgbarLogger``, ``History`` need nothing (the learning rate lives in
the optimizer's variables, the history is saved by ``mk.fit`` itself).

Example::

    arrays, info, missing = capture_callbacks([EarlyStopping(patience=2)])
    notes = restore_callbacks(callbacks, arrays, info)
"""

from __future__ import annotations

from typing import Any

import numpy as np

PREFIX = "callbacks"

_KERAS_ATTRS: dict[str, tuple[str, ...]] = {
    "EarlyStopping": ("wait", "stopped_epoch", "best", "best_weights", "best_epoch"),
    "ReduceLROnPlateau": ("wait", "cooldown_counter", "best"),
    "ModelCheckpoint": ("best", "_batches_seen_since_last_saving", "_last_batch_seen", "_current_epoch"),
}
_STATELESS = {
    "LearningRateScheduler", "TerminateOnNaN", "ProgbarLogger", "History", "LambdaCallback",
    "RemoteMonitor", "SwapEMAWeights",
}


def _keras_attrs(callback: Any) -> tuple[str, ...] | None:
    if type(callback).__module__.startswith("keras.") and type(callback).__name__ in _KERAS_ATTRS:
        return _KERAS_ATTRS[type(callback).__name__]
    return None


def _is_modelkeep_checkpoint(callback: Any) -> bool:
    return type(callback).__module__ == "modelkeep.checkpoint.callbacks" and hasattr(callback, "_frequency")


def _modelkeep_checkpoint_state(callback: Any) -> dict[str, Any]:
    # until mk.ModelCheckpoint implements get_state/set_state itself
    return {
        "best": callback.best,
        "_current_epoch": getattr(callback, "_current_epoch", 0),
        "_batches_total": getattr(callback, "_batches_total", 0),
        "seen_since_save": callback._frequency.seen_since_save,
        "last_batch": callback._frequency.last_batch,
    }


def get_state(callback: Any) -> dict[str, Any] | None:
    """The callback's state, or ``None`` when it has none that modelkeep knows how to keep."""
    if callable(getattr(callback, "get_state", None)):
        return dict(callback.get_state())
    if _is_modelkeep_checkpoint(callback):
        return _modelkeep_checkpoint_state(callback)
    attrs = _keras_attrs(callback)
    if attrs is None:
        return None
    return {name: getattr(callback, name) for name in attrs if hasattr(callback, name)}


def set_state(callback: Any, state: dict[str, Any]) -> None:
    if callable(getattr(callback, "set_state", None)):
        callback.set_state(state)
        return
    if _is_modelkeep_checkpoint(callback):
        state = dict(state)
        callback._frequency.seen_since_save = state.pop("seen_since_save")
        callback._frequency.last_batch = state.pop("last_batch")
    for name, value in state.items():
        setattr(callback, name, value)


def is_stateless(callback: Any) -> bool:
    return type(callback).__name__ in _STATELESS and type(callback).__module__.startswith("keras.")


# --------------------------------------------------------------------------- encoding
def encode(prefix: str, state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split a state dict into tensors (arrays) and JSON values."""
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray) or _is_tensor(value):
            arrays[f"{prefix}/{key}"] = np.asarray(value)
            info[key] = {"__array__": True}
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            for j, item in enumerate(value):
                arrays[f"{prefix}/{key}/{j}"] = item
            info[key] = {"__arrays__": len(value)}
        elif isinstance(value, np.generic):
            info[key] = value.item()
        else:
            info[key] = value
    return arrays, info


def decode(prefix: str, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, dict) and value.get("__array__"):
            state[key] = arrays[f"{prefix}/{key}"]
        elif isinstance(value, dict) and "__arrays__" in value:
            state[key] = [arrays[f"{prefix}/{key}/{j}"] for j in range(value["__arrays__"])]
        else:
            state[key] = value
    return state


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "numpy") and hasattr(value, "shape") and hasattr(value, "dtype")


# --------------------------------------------------------------------------- lists
def capture_callbacks(callbacks: list[Any]) -> tuple[dict[str, np.ndarray], list[Any], list[str]]:
    """States of the user's callbacks by position: ``(arrays, infos, names without state)``."""
    arrays: dict[str, np.ndarray] = {}
    infos: list[Any] = []
    missing: list[str] = []
    for i, callback in enumerate(callbacks):
        state = get_state(callback)
        if state is None:
            infos.append({"class": type(callback).__name__, "state": None})
            if not is_stateless(callback):
                missing.append(type(callback).__name__)
            continue
        part, info = encode(f"{PREFIX}/{i}", state)
        arrays.update(part)
        infos.append({"class": type(callback).__name__, "state": info})
    return arrays, infos, missing


def restore_callbacks(callbacks: list[Any], arrays: dict[str, np.ndarray], infos: list[Any]) -> list[str]:
    """Give each callback its saved state; return notes on the ones that could not be restored."""
    notes: list[str] = []
    if len(infos) != len(callbacks):
        return [f"callback states ({len(infos)} saved, {len(callbacks)} passed now)"]
    for i, (callback, info) in enumerate(zip(callbacks, infos)):
        if info["class"] != type(callback).__name__:
            notes.append(f"callback {i} ({info['class']} saved, {type(callback).__name__} now)")
            continue
        if info["state"] is None:
            if not is_stateless(callback):
                notes.append(f"{type(callback).__name__} state (no get_state/set_state)")
            continue
        set_state(callback, decode(f"{PREFIX}/{i}", arrays, info["state"]))
    return notes
