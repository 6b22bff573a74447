"""Which versions are loaded, and the poller that loads new ones without a pause.

``VersionManager.poll_once`` scans the source (in a worker thread), decides which versions
the policy wants, loads each new one in the background (load, build the fast path, check
it against ``model.predict``, warm it up), then swaps it in by replacing one dict: a request
picks its version object once and finishes on it even if a newer one is swapped in
meanwhile. Retired versions drain their queue before they stop. Corrupt, incomplete and
unloadable checkpoints are never served; each is logged once and counted.

Policies: ``latest`` (the newest version only), ``pinned:V`` (only V), ``newest:N`` (the N
newest loaded; requests without a version go to the newest), ``all``, ``specific:V1,V2``.

Example::

    manager = VersionManager("model", source, Policy.parse("newest:2"), metrics)
    await manager.poll_once()
    version = manager.resolve(None)        # the newest ModelVersion
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from modelkeep.errors import CorruptCheckpointError, GraphOnlyModelError
from modelkeep.serving.batching import MicroBatcher
from modelkeep.serving.metrics import Metrics
from modelkeep.serving.predictor import Predictor
from modelkeep.serving.versions import Candidate, ModelSource
from modelkeep.storage.fs import is_url

log = logging.getLogger("modelkeep.serve")


@dataclass(frozen=True)
class Policy:
    """``latest``, ``pinned:V`` or ``newest:N``."""

    kind: str
    value: int = 1
    versions: tuple[int, ...] = ()  # kind 'specific' (TF Serving's model_version_policy.specific)

    @classmethod
    def parse(cls, text: str) -> Policy:
        kind, _, arg = text.partition(":")
        if kind == "latest" and not arg:
            return cls("latest", 1)
        if kind in ("pinned", "newest") and arg.isdigit() and (kind == "pinned" or int(arg) >= 1):
            return cls(kind, int(arg))
        if kind == "all" and not arg:
            return cls("newest", 2**62)
        if kind == "specific" and arg and all(p.isdigit() for p in arg.split(",")):
            return cls("specific", 0, tuple(int(p) for p in arg.split(",")))
        raise ValueError(
            f"--policy: expected latest, pinned:VERSION, newest:N (N >= 1), all or specific:V1,V2, got {text!r}."
        )

    def wanted(self, versions: list[int]) -> list[int]:
        """The versions to keep loaded, newest first, from the loadable ones."""
        ordered = sorted(set(versions), reverse=True)
        if self.kind == "pinned":
            return [v for v in ordered if v == self.value]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[: self.value]


@dataclass
class ModelVersion:
    """One loaded version: its predictor and its micro-batcher."""

    version: int
    candidate: Candidate
    predictor: Predictor
    batcher: MicroBatcher
    loaded_at: float = field(default_factory=time.time)

    @cached_property
    def version_header(self) -> bytes:
        return str(self.version).encode()


@dataclass
class VersionState:
    """What ``GetModelStatus`` reports for a version (TF Serving's states)."""

    state: str  # START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str = "OK"
    error_message: str = ""


class VersionManager:
    """The loaded versions of one served model and the rules that change them."""

    def __init__(
        self,
        name: str,
        source: ModelSource,
        policy: Policy,
        metrics: Metrics,
        *,
        max_batch_size: int = 64,
        batch_timeout_s: float = 0.0,
        allow_unsafe_ops: bool = False,
    ):
        self.allow_unsafe_ops = allow_unsafe_ops
        self.name = name
        self.source = source
        self.policy = policy
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.loaded: dict[int, ModelVersion] = {}
        self.states: dict[int, VersionState] = {}
        self._failed: dict[tuple[str, float], str] = {}
        self._reported: set[tuple[str, str, float]] = set()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="mk-load")
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="mk-infer")
        self._lock = asyncio.Lock()
        self.latest: ModelVersion | None = None

    # ----------------------------------------------------------------- requests
    def resolve(self, version: int | None) -> ModelVersion | None:
        """The version a request goes to: the one asked for, or the newest loaded."""
        if version is None:
            return self.latest
        return self.loaded.get(version)

    @property
    def ready(self) -> bool:
        return self.latest is not None

    # ----------------------------------------------------------------- polling
    async def run(self, poll_seconds: float, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set (once only for a single model file)."""
        # TensorFlow imported here, on the event loop's thread, before any loader thread: several
        # models' loaders importing it for the first time at once deadlock or register ops twice
        import tensorflow  # noqa: F401

        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the poller must outlive a bad scan
                log.warning("serve: scanning %s failed: %s", self.source.path, exc)
            if not self.source.watches:
                return
            try:
                await asyncio.wait_for(stop.wait(), poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def poll_once(self) -> None:
        """Scan, load what the policy wants and is not loaded, retire what it no longer wants."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            candidates = await loop.run_in_executor(self._io, self.source.scan)
            usable = {}
            for c in candidates:
                if c.status != "ok":
                    self._reject(c, c.status, c.problem or c.status)
                elif (str(c.path), c.stamp) not in self._failed:
                    usable.setdefault(c.version, c)
            wanted = self.policy.wanted(list(usable))
            for version in wanted:
                if version not in self.loaded:
                    await self._load(usable[version])
            keep = [v for v in self.policy.wanted(list(usable)) if v in self.loaded]
            if keep:
                for version in [v for v in self.loaded if v not in keep]:
                    await self._retire(version)

    def _reject(self, c: Candidate, reason: str, problem: str) -> None:
        key = (str(c.path), reason, c.stamp)
        if key in self._reported:
            return
        self._reported.add(key)
        self.metrics.rejected.inc((self.name, reason))
        level = logging.INFO if reason == "incomplete" else logging.WARNING
        version = c.version if c.version >= 0 else "unknown"
        log.log(level, "serve: not serving %s (version %s): %s: %s", c.path, version, reason, problem)
        if c.version >= 0 and c.version not in self.loaded:
            self.states[c.version] = VersionState("END", _ERROR_CODES.get(reason, "UNKNOWN"), f"{reason}: {problem}")

    def _build(self, candidate: Candidate) -> Predictor:
        try:
            directory = candidate.path if not is_url(candidate.path) and candidate.path.is_dir() else None
            predictor = Predictor.from_model(self.source.load(candidate), saved_model_dir=directory)
        except GraphOnlyModelError:  # exported without any Keras part; a refused Keras model never gets here
            from modelkeep.checkpoint import remote

            # on a URL: downloaded again (every CRC-32 checked), loaded, the copy dropped
            with remote.local_copy(candidate.path) as local:
                predictor = Predictor.from_saved_model(local, allow_unsafe_ops=self.allow_unsafe_ops)
        predictor.warm_up(tuple(sorted({1, 2, min(8, self.max_batch_size), self.max_batch_size})))
        return predictor

    async def _load(self, candidate: Candidate) -> None:
        version = candidate.version
        self.states[version] = VersionState("LOADING")
        started = time.perf_counter()
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(self._io, self._build, candidate)
        except Exception as exc:  # noqa: BLE001 - an unloadable checkpoint is skipped, not fatal
            self._record_load(candidate, False, started)
            self._failed[(str(candidate.path), candidate.stamp)] = str(exc)
            reason = "corrupt" if isinstance(exc, CorruptCheckpointError) else "load_failed"
            self._reject(candidate, reason, f"{type(exc).__name__}: {exc}")
            return
        batcher = MicroBatcher(
            predictor.run,
            max_batch_size=self.max_batch_size,
            timeout_s=self.batch_timeout_s,
            inline=predictor.path == "numpy",
            executor=self._compute,
            on_batch=self._observe_batch,
        )
        batcher.start()
        entry = ModelVersion(version, candidate, predictor, batcher)
        self.loaded = {**self.loaded, version: entry}  # one assignment: requests see old or new
        self.latest = self.loaded[max(self.loaded)]
        self.states[version] = VersionState("AVAILABLE")
        self.metrics.reloads.inc((self.name,))
        self._record_load(candidate, True, started)
        self._update_gauges()
        log.warning(
            "serve: model '%s' version %d loaded from %s in %.2fs (%s path)",
            self.name, version, candidate.path, time.perf_counter() - started, predictor.path,
        )

    async def _retire(self, version: int) -> None:
        entry = self.loaded[version]
        remaining = {v: e for v, e in self.loaded.items() if v != version}
        self.loaded = remaining
        self.latest = remaining[max(remaining)] if remaining else None
        self.states[version] = VersionState("UNLOADING")
        self._update_gauges()
        await entry.batcher.close()  # requests already queued finish on this version
        self.states[version] = VersionState("END")
        log.warning("serve: model '%s' version %d unloaded", self.name, version)

    def _record_load(self, candidate: Candidate, ok: bool, started: float) -> None:
        tfs = getattr(self.metrics, "tfs", None)
        if tfs is not None:  # TF Serving's :tensorflow:cc:saved_model:load_attempt_count / load_latency
            tfs.record_load(str(candidate.path), ok, time.perf_counter() - started)

    def _observe_batch(self, rows: int) -> None:
        self.metrics.batch_size.observe((self.name,), rows)

    def _update_gauges(self) -> None:
        self.metrics.versions_loaded.set((self.name,), len(self.loaded))
        self.metrics.version_served.set((self.name,), self.latest.version if self.latest else 0)

    async def close(self) -> None:
        for version in list(self.loaded):
            await self._retire(version)
        self._io.shutdown(wait=False, cancel_futures=True)
        self._compute.shutdown(wait=False, cancel_futures=True)

    def model_states(self) -> dict[int, VersionState]:
        """Known versions and their states, newest first (loaded ones always included)."""
        states = dict(self.states)
        return {v: states[v] for v in sorted(states, reverse=True)}

    def describe(self) -> dict[str, Any]:
        return {v: e.predictor.path for v, e in self.loaded.items()}


_ERROR_CODES = {"corrupt": "DATA_LOSS", "incomplete": "UNAVAILABLE", "load_failed": "FAILED_PRECONDITION"}
