"""Dynamic micro-batching on the server's event loop.

Requests for one model version are queued; a single worker task takes every queued request
(up to ``max_batch_size`` rows, waiting at most ``timeout_s`` after the first for more),
concatenates their inputs, runs one forward pass, and hands each caller its own rows. With
``timeout_s=0`` it waits for nothing: it takes what arrived while the previous pass ran,
so a lone request pays no delay and concurrent ones share a pass.

Cheap forward passes (the NumPy path) run inline on the loop; others run on one worker
thread so the loop keeps accepting and decoding requests meanwhile. Inline with no timeout,
the first request of a batch runs the pass itself (one loop turn later), saving the hop to
the worker task.

Starting a batcher freezes the heap (``gc.freeze``): the hundreds of thousands of objects
TensorFlow and the model hold are then never scanned by the cyclic garbage collector, whose
full collections otherwise stall the loop for 0.3-3 s at random (the c=32 p99 of issue 19).
Closing one while the server goes on collects once (the retired version's cycles) and
freezes again.

Example::

    batcher = MicroBatcher(predictor.run, max_batch_size=64, timeout_s=0.0, inline=True)
    outputs = await batcher.submit([x])     # x: (rows, ...) array per input
    await batcher.close()
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

RunBatch = Callable[[list[np.ndarray]], list[np.ndarray]]

STOPPING: list[bool] = []  # set by the server before it closes every version: no collection then


def settle_heap() -> None:
    """Move every object alive now out of the collector's reach (they are the loaded models)."""
    gc.freeze()


def collect_heap() -> None:
    """One full collection (a retired version's cycles), then freeze what is left."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class MicroBatcher:
    """Queue + one worker task; ``submit`` returns this request's slice of the outputs."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int = 64,
        timeout_s: float = 0.0,
        inline: bool = False,
        executor: Executor | None = None,
        on_batch: Callable[[int], Any] | None = None,
    ):
        self._run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.timeout_s = max(0.0, float(timeout_s))
        self._inline = inline
        self._executor = executor
        self._on_batch = on_batch
        self._queue: deque[tuple[list[np.ndarray], int, asyncio.Future]] = deque()
        self._rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._leading = False

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._worker())
        settle_heap()

    async def submit(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Queue one request's inputs; wait for its outputs."""
        if self._closing or self._task is None:
            raise RuntimeError("batcher is closed")
        future = asyncio.get_running_loop().create_future()
        rows = len(arrays[0])
        self._queue.append((arrays, rows, future))
        self._rows += rows
        if self._inline and self.timeout_s == 0.0:
            if not self._leading:
                await self._lead(future)
            # else the leader running now takes it (or hands it to the worker)
        else:
            self._wake.set()
        return await future

    async def _lead(self, future: asyncio.Future) -> None:
        """Inline, no timeout: the first caller runs the pass itself (no hop to the worker).

        One turn of the loop lets requests already in flight queue behind it; it then runs
        passes until its own request is answered, and leaves any rest to the worker."""
        self._leading = True
        try:
            await asyncio.sleep(0)
            while self._queue and not future.done():
                await self._execute(self._take())
        finally:
            self._leading = False
        if self._queue:
            self._wake.set()

    async def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
            if not STOPPING:
                collect_heap()

    def _take(self) -> list[tuple[list[np.ndarray], int, asyncio.Future]]:
        batch, rows = [], 0
        while self._queue and (not batch or rows + self._queue[0][1] <= self.max_batch_size):
            item = self._queue.popleft()
            batch.append(item)
            rows += item[1]
            self._rows -= item[1]
        return batch

    async def _gather_more(self) -> None:
        """Wait up to ``timeout_s`` for the queue to fill (0: one turn of the loop)."""
        if self.timeout_s == 0.0:
            await asyncio.sleep(0)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while self._rows < self.max_batch_size and not self._closing:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break

    async def _worker(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather_more()
            batch = self._take()
            if batch:  # a leader may have taken everything meanwhile
                await self._execute(batch)

    async def _execute(self, batch: list[tuple[list[np.ndarray], int, asyncio.Future]]) -> None:
        n_inputs = len(batch[0][0])
        if len(batch) == 1:
            arrays = batch[0][0]
        else:
            arrays = [np.concatenate([item[0][i] for item in batch]) for i in range(n_inputs)]
        total = sum(item[1] for item in batch)
        if self._on_batch is not None:
            self._on_batch(total)
        try:
            if self._inline:
                outputs = self._run(arrays)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, arrays)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for _, rows, future in batch:
            if not future.done():
                future.set_result([o[start : start + rows] for o in outputs])
            start += rows
