"""The background checkpoint writer: training copies the state, a thread writes it.

A save is split in two. The *snapshot* runs on the training thread and copies every
variable to host memory, once (``capture(copy=False)`` views, ``np.copyto`` into one reused
buffer: ``SnapshotBuffers``); it is the only part that blocks training. The *write* (encode, write, fsync, checksum, commit, manifest,
retention) runs on the writer's thread.

Rules:

* **At most one save in flight.** ``save()`` first waits for the save in flight
  (``when_busy="wait"``, the default) and only then takes the new snapshot, so two
  snapshots never coexist: peak extra memory is one copy of the state. With ``when_busy="skip"`` a save
  requested while one is in flight is dropped, with a logged reason, and ``save()``
  returns ``False``: choose it when a late checkpoint is worth less than a stalled step.
  "wait" is the default because every checkpoint the user's policy asked for (best
  model, every N batches) gets written, and a writer that keeps up never waits.
* **Errors surface.** An exception in the background is kept and raised by the next
  ``save()``/``submit()``, by ``wait()`` and by ``close()`` (the end of training).
* **Nothing is left half-done at exit.** An ``atexit`` hook waits for the save in
  flight of every open writer. A kill during a background write leaves the previous
  checkpoint good: the write goes through the same commit protocol as a synchronous one.

Why a thread and not a process: every step of the write either runs in C with the GIL
released (``os.pwrite`` of the snapshot with ``O_DIRECT``, ``fsync``, ISA-L's CRC-32) or is
tiny Python, so the thread barely holds the GIL and, with direct I/O, barely uses the CPU
(``SaveRecord.cpu_seconds`` says how much); the snapshot already is the one copy a process
would also need (into shared memory). The writer runs at normal priority by
default; ``nice=10`` lowers it. On a quiet 2-core machine neither was better in two runs of
``benchmarks/run.py`` (whichever design was measured first stalled training more), so the
default is the simpler one. ``benchmarks/run.py`` prints the figures (``gil_share``, stall sync vs async, designs).

Example::

    writer = AsyncWriter()
    writer.save(lambda: capture(model), lambda state: save_state("run", state, step=10))
    ...
    writer.close()   # waits; raises the error of a failed background save, if any
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from modelkeep.state import ModelState
from modelkeep.storage import checksums, phases

log = logging.getLogger("modelkeep.checkpoint")

S = TypeVar("S")
WAIT, SKIP = "wait", "skip"


@dataclass
class SaveRecord:
    """What happened to one background save (``AsyncWriter.history``)."""

    label: str
    submitted: float
    started: float | None = None
    finished: float | None = None
    error: BaseException | None = None
    result: Any = None
    #: CPU time the writer's thread spent on this save (its own thread only)
    cpu_seconds: float | None = None
    #: training thread: seconds ``save()`` waited for the save before it, and took the snapshot
    waited_seconds: float = 0.0
    snapshot_seconds: float = 0.0
    #: writer thread: ``{phase: [wall s, cpu s]}`` marked by the writers (``storage.phases``)
    phases: dict[str, list[float]] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


class AsyncWriter:
    """Runs save jobs on one background thread, one at a time (see the module docstring).

    ``nice`` (default 0) is added to the writer thread's scheduling priority on Linux;
    0 leaves it as is. ``history`` keeps the last ``keep_history`` ``SaveRecord``s.
    """

    def __init__(self, *, when_busy: str = WAIT, nice: int = 0, name: str = "modelkeep-writer",
                 keep_history: int = 100) -> None:  # fmt: skip
        if when_busy not in (WAIT, SKIP):
            raise ValueError(f"AsyncWriter: when_busy must be 'wait' or 'skip', not {when_busy!r}.")
        self.when_busy = when_busy
        self.nice = nice
        self.name = name
        self.history: list[SaveRecord] = []
        self.skipped = 0
        self._keep = keep_history
        self._cond = threading.Condition()
        self._job: tuple[Callable[[], Any], SaveRecord] | None = None
        self._running: SaveRecord | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        _OPEN.add(self)

    # ------------------------------------------------------------------ public API
    @property
    def busy(self) -> bool:
        """True while a save is queued or being written."""
        with self._cond:
            return self._job is not None or self._running is not None

    def save(self, snapshot: Callable[[], S], write: Callable[[S], Any], *, label: str = "checkpoint") -> bool:
        """Take ``snapshot()`` on this thread, then run ``write(snapshot)`` in the background.

        Waits for the save in flight first (or, with ``when_busy="skip"``, returns False
        without taking the snapshot). Raises the error of a previous background save.
        """
        start = time.perf_counter()
        if not self._make_room(label):
            return False
        waited = time.perf_counter()
        data = snapshot()
        snapped = time.perf_counter()
        record = self._enqueue(lambda: write(data), label)
        record.waited_seconds, record.snapshot_seconds = waited - start, snapped - waited
        return True

    def submit(self, job: Callable[[], Any], *, label: str = "checkpoint") -> bool:
        """Run ``job()`` (which already holds its data) in the background; see ``save``."""
        if not self._make_room(label):
            return False
        self._enqueue(job, label)
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Block until no save is in flight; raise the error of a failed one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._job is not None or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self.name}: a save is still being written after {timeout} s.")
                self._cond.wait(left)
        self._raise_pending()

    def close(self) -> None:
        """Wait for the last save, stop the thread, raise a pending background error."""
        try:
            self.wait()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            _OPEN.discard(self)

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _raise_pending(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _make_room(self, label: str) -> bool:
        self._raise_pending()
        if self._closed:
            raise RuntimeError(f"{self.name} is closed; create a new AsyncWriter.")
        if self.when_busy == SKIP and self.busy:
            self.skipped += 1
            with self._cond:
                current = self._running or (self._job[1] if self._job else None)
            running = current.label if current else "another save"
            log.warning("%s: skipped %s: %s is still being written (when_busy='skip').", self.name, label, running)
            return False
        self.wait()
        return True

    def _enqueue(self, job: Callable[[], Any], label: str) -> SaveRecord:
        record = SaveRecord(label, time.monotonic())
        with self._cond:
            self._job = (job, record)
            self.history.append(record)
            del self.history[: -self._keep]
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return record

    def _loop(self) -> None:
        _lower_priority(self.nice)
        checksums.prefer_direct_reads()  # what this thread checks was mostly written with O_DIRECT
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._job is None:
                    return
                job, record = self._job
                self._job, self._running = None, record
            record.started = time.monotonic()
            cpu = time.thread_time()
            try:
                with phases.collect(record.phases):
                    record.result = job()
            except BaseException as exc:  # kept for the training thread
                record.error = exc
                log.error("%s: background save %s failed: %s", self.name, record.label, exc)
                with self._cond:
                    self._error = self._error or exc
            finally:
                record.finished = time.monotonic()
                record.cpu_seconds = time.thread_time() - cpu
                with self._cond:
                    self._running = None
                    self._cond.notify_all()


class SnapshotBuffers:
    """One page-aligned host buffer that every snapshot is copied into, reused from one
    snapshot to the next.

    The arrays of ``copy(state)`` are views into that buffer, back to back in the state's
    order: exactly the data section of a safetensors file, so the writer sends it to disk
    in one direct (``O_DIRECT``) write from this memory, bypassing the page cache
    (``formats.safetensors.write_file``). Measured on a loaded 2-core VM, 256 MiB: a
    buffered write cost the writer thread 0.60 s of CPU, a direct one 0.01 s; the copy
    itself 0.03 s.

    The buffer is mapped with ``MAP_POPULATE`` (a fresh 256 MiB array page-faults on every
    4 KiB page: 0.85 s of CPU and 2.6 s wall on that VM, against 0.03 s for a copy into
    mapped memory). ``reserve(nbytes)`` maps it ahead of time, e.g. on the writer's thread
    when training starts, so the first snapshot does not pay for it either.

    Safe with an ``AsyncWriter``: the next snapshot is taken only after the previous
    write finished with the arrays. The buffer stays allocated between saves (one copy of
    the state); ``release()`` frees it.

    Example::

        buffers = SnapshotBuffers()
        writer.submit(lambda: buffers.reserve(state_nbytes))   # optional, in the background
        writer.save(lambda: buffers.copy(capture(model, copy=False)), write)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flat: np.ndarray | None = None
        self._layout: list[tuple[str, tuple[int, ...], np.dtype, int]] | None = None
        self._views: dict[str, np.ndarray] = {}

    @property
    def capacity(self) -> int:
        """Bytes mapped now (0 before the first snapshot or ``reserve``)."""
        return 0 if self._flat is None else int(self._flat.nbytes)

    def reserve_in(self, writer: AsyncWriter, nbytes: int) -> None:
        """Map ``nbytes`` on ``writer``'s thread now, while training starts (see the class)."""
        writer.submit(lambda: self.reserve(nbytes), label="snapshot buffer")

    def reserve(self, nbytes: int) -> None:
        """Map (and fault in) at least ``nbytes`` now, unless that much is mapped already."""
        with self._lock:
            if self.capacity < nbytes:
                self._flat, self._layout, self._views = _populated(nbytes), None, {}

    def copy(self, state: ModelState, *, align: int = 1) -> ModelState:
        """A copy of ``state`` whose arrays are views into this object's buffer.

        ``align=1`` lays the arrays back to back (a safetensors data section); ``align=64``
        starts each at a multiple of 64 bytes, as TensorFlow wants to share an array's
        memory without a copy (``formats.tf_checkpoint.save_tensors``)."""
        values = {key: np.asarray(value) for key, value in state.variables.items()}
        layout = [(key, value.shape, value.dtype, align) for key, value in values.items()]
        with self._lock:
            if layout != self._layout:
                self._views = self._lay_out(values, align)
                self._layout = layout
            out = {}
            for key, value in values.items():
                target = self._views[key]
                np.copyto(target, value)  # one memcpy per variable, GIL released by numpy
                out[key] = target
        return ModelState(out, state.model_config, state.compile_config, dict(state.metadata))

    def _lay_out(self, values: dict[str, np.ndarray], align: int) -> dict[str, np.ndarray]:
        offsets, offset = [], 0
        for value in values.values():
            offset = -(-offset // align) * align
            offsets.append(offset)
            offset += value.nbytes
        if self.capacity < offset:
            self._flat = None  # the old mapping goes once no view of it is left
            self._flat = _populated(offset)
        assert self._flat is not None
        views = {}
        for (key, value), start in zip(values.items(), offsets):
            chunk = self._flat[start : start + value.nbytes]
            views[key] = chunk.view(value.dtype).reshape(value.shape) if value.nbytes else np.empty(value.shape, value.dtype)
        return views

    def release(self) -> None:
        with self._lock:
            self._flat, self._layout, self._views = None, None, {}


def _populated(nbytes: int) -> np.ndarray:
    """``nbytes`` (rounded up to whole pages) of zeroed, already faulted-in, page-aligned memory."""
    size = max(mmap.PAGESIZE, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE)
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, size, flags=flags), dtype=np.uint8)


def _lower_priority(nice: int) -> None:
    """Make the calling thread (and threads it starts) yield the CPU to training."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:  # not permitted or not Linux: run at normal priority
        pass


# ---------------------------------------------------------------------- at exit
_OPEN: weakref.WeakSet[AsyncWriter] = weakref.WeakSet()


def wait_for_saves(*, raise_errors: bool = True) -> None:
    """Wait until no background save of any writer is in flight.

    ``fit`` waits for its callbacks' last save when it ends normally; when it ends with an
    exception, Keras calls no callback, so the last save may still be being written when
    the exception reaches you. Call this before looking at the checkpoints then.
    With ``raise_errors=False`` errors of those saves are logged instead of raised.

    Example::

        try:
            model.fit(x, y, callbacks=[mk.BackupAndRestore("run/backup")])
        except KeyboardInterrupt:
            mk.wait_for_saves()
    """
    first: BaseException | None = None
    for writer in list(_OPEN):
        try:
            writer.wait()
        except BaseException as exc:  # every writer is waited for before raising
            log.error("%s: a background save failed: %s", writer.name, exc)
            first = first or exc
    if first is not None and raise_errors:
        raise first


@atexit.register
def _finish_all() -> None:
    """Interpreter exit waits for the save in flight of every open writer."""
    for writer in list(_OPEN):
        try:
            writer.close()
        except BaseException as exc:  # at exit nobody can catch it: say it loudly
            log.error("%s: the last background save failed: %s", writer.name, exc)
            print(f"modelkeep: the last background save failed: {exc}", flush=True)  # noqa: T201
