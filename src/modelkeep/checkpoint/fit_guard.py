"""When ``model.fit`` raises, no background save of that run is left in flight.

Keras calls no callback when ``fit`` ends with an exception, so a save that the async
writer was still writing would go on after the exception reached the caller (whose
cleanup then races it) and its failure would only show in the next run. At
``on_train_begin`` a modelkeep callback wraps, for this ``fit`` only, the hooks of the
``CallbackList`` that ``fit`` made and the model's ``train_function``/``test_function``: an exception
passing through them first waits for every save in flight; a save that failed is
reported then (a warning, and a note on the exception), in that run. ``on_train_end``
takes the wrappers off again.

The validation's ``test_function`` is guarded too, from its ``on_test_begin`` on. Not
covered: an exception raised by ``fit`` itself outside a step and outside the callbacks
(the data iterator); ``mk.wait_for_saves()`` covers that.

Example::

    guard = FitGuard.install(callback)    # in on_train_begin
    guard.remove()                        # in on_train_end
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from modelkeep.checkpoint import writer as writer_module

log = logging.getLogger("modelkeep.checkpoint")

HOOKS = (
    "on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
    "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
)  # fmt: skip
MARK = "__modelkeep_inner__"


def finish_in_flight(exc: BaseException) -> None:
    """Wait for every background save; report the failed ones on ``exc`` and as a warning."""
    for writer in list(writer_module._OPEN):
        try:
            writer.wait()
        except BaseException as error:  # noqa: BLE001 - reported, the original exception goes on
            message = f"modelkeep: a checkpoint save of this run failed before fit ended: {error}"
            log.error("%s", message)
            warnings.warn(message, stacklevel=3)
            if hasattr(exc, "add_note"):
                exc.add_note(message)


def _wrap(function: Any) -> Any:
    if getattr(function, MARK, None) is not None:
        return function

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            finish_in_flight(exc)
            raise

    setattr(guarded, MARK, function)
    return guarded


def _callback_list() -> Any:
    import keras

    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, keras.callbacks.CallbackList):
            return candidate
        frame = frame.f_back
    return None


class FitGuard:
    """The wrappers installed for one ``fit`` (see the module docstring)."""

    def __init__(self, model: Any, callback_list: Any) -> None:
        self.model = model
        self.callback_list = callback_list
        self.wrapped: list[tuple[Any, str]] = []

    @classmethod
    def install(cls, callback: Any) -> FitGuard:
        guard = cls(callback.model, _callback_list())
        targets = [(guard.callback_list, name) for name in HOOKS] if guard.callback_list is not None else []
        targets.append((guard.model, "train_function"))
        for owner, name in targets:
            current = getattr(owner, name, None)
            if owner is guard.callback_list and name == "on_test_begin" and current is not None:
                current = guard._also_guarding_test_function(current)
            if current is None:
                continue
            if getattr(current, MARK, None) is not None:
                if owner is guard.model:  # left by a fit that raised, or by another callback
                    guard.wrapped.append((owner, name))
                continue
            try:
                setattr(owner, name, _wrap(current))
            except AttributeError:
                continue
            guard.wrapped.append((owner, name))
        return guard

    def _also_guarding_test_function(self, on_test_begin: Any) -> Any:
        """Validation makes ``test_function`` just before ``on_test_begin``: guard it then."""

        def hook(*args: Any, **kwargs: Any) -> Any:
            result = on_test_begin(*args, **kwargs)
            current = getattr(self.model, "test_function", None)
            if current is not None:
                self.model.test_function = _wrap(current)  # no-op when already guarded
                if (self.model, "test_function") not in self.wrapped:
                    self.wrapped.append((self.model, "test_function"))
            return result

        return hook

    def remove(self) -> None:
        for owner, name in self.wrapped:
            current = getattr(owner, name, None)
            inner = getattr(current, MARK, None)
            if inner is None:
                continue
            if owner is self.callback_list:
                owner.__dict__.pop(name, None)
            else:
                setattr(owner, name, inner)
        self.wrapped = []
