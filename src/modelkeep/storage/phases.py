"""Where a save's time goes: wall and CPU time per named phase, collected per thread.

A writer marks its steps with ``phase("name")``; whoever wants the breakdown wraps the save
in ``collect(into)`` on the same thread. Outside ``collect`` a ``phase`` costs two clock
reads and records nothing. The CPU time is the calling thread's own (``time.thread_time``):
for a step that runs in Python or in C holding the GIL (h5py, ``zipfile``'s Python loop) it is
GIL time taken from training; a step in C with the GIL released (``os.pwrite``, ISA-L's CRC)
shows as CPU but leaves the GIL free, and a step waiting for the disk shows as wall only.

Example::

    found: dict[str, list[float]] = {}
    with collect(found):
        with phase("write"):
            write_everything()
    found   # {"write": [wall seconds, cpu seconds]}
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

_LOCAL = threading.local()


@contextlib.contextmanager
def collect(into: dict[str, list[float]]) -> Iterator[dict[str, list[float]]]:
    """Record every ``phase`` run on this thread inside the block into ``into``."""
    previous = getattr(_LOCAL, "into", None)
    _LOCAL.into = into
    try:
        yield into
    finally:
        _LOCAL.into = previous


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall and thread-CPU seconds to ``name`` in the current ``collect``."""
    into = getattr(_LOCAL, "into", None)
    if into is None:
        yield
        return
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        entry = into.setdefault(name, [0.0, 0.0])
        entry[0] += time.perf_counter() - wall
        entry[1] += time.thread_time() - cpu
