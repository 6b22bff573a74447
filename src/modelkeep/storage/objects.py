"""The commit protocol on an object store (S3, GCS, any fsspec URL): no rename, yet a reader
never sees a partial or mixed checkpoint.

On an object store each object is written whole or not at all, but a checkpoint of several
objects is not, and nothing can be renamed. So a checkpoint named ``N`` in the directory
``D`` is kept as generations, each committed by one small object written last::

    D/N.mk/g000000007-<host>-<pid>-<token>/<files>    the files of one save (one generation)
    D/N.mk/commit-000000007.json                      its commit record: the commit point

1. The writer lists ``D/N.mk/`` and takes the next sequence number ``k``.
2. It uploads every file of the checkpoint (written to a local temporary directory by the
   format's own writer) under a new generation prefix, in parallel, large files in
   concurrent multipart parts. Nothing a reader looks at has changed yet.
3. It writes ``commit-<k>.json`` -- every object of the generation with its size and
   CRC-32 (computed from the local bytes while they upload, never read back) and the
   checkpoint's metadata -- *only if no object has that name yet*, where the file system
   takes ``mode="create"`` (s3fs: S3 ``If-None-Match: *``; memory://). Of two writers that raced to ``k``, one wins; the other gets
   ``ConcurrentWriteError`` and removes its generation. On a store without conditional
   writes the name is checked just before the write and the record read back after it; a
   writer that finds another's record there raises the same error, but a race inside that
   window can let the later record replace the earlier one (each names a complete
   generation: the checkpoint is one writer's or the other's, never a mix).
4. It deletes the generations older than the previous one (the previous stays, so a reader
   that is downloading it finishes).

A reader takes, for each name, the newest commit record whose objects are all present with
the listed sizes, and checks each file's CRC-32 as it downloads; a mismatch falls back to
the next older good commit. A kill at any instant leaves the last commit and its objects in
place: a fixed name (``best.keras``) is never without a good checkpoint. Leftovers of a
killed upload (a generation without a record) are listed as incomplete and removed by
``ObjectDir.clean`` once their writer is gone.

Example::

    d = ObjectDir("s3://bucket/run")
    d.publish("best.keras", Path(tmp), [Path(tmp) / "best.keras"], {"step": 10})
    d.fetch("best.keras", Path(other_tmp))          # verified copy in other_tmp/best.keras
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.errors import CheckpointNotFoundError, ConcurrentWriteError, CorruptCheckpointError
from modelkeep.storage import fs as sfs
from modelkeep.storage.checksums import known_crc32
from modelkeep.storage.commit import pid_alive

SUFFIX = ".mk"
COMMIT = "commit-"
RECORD_VERSION = 1
OK, CORRUPT, INCOMPLETE = "ok", "corrupt", "incomplete"
_HOST = socket.gethostname().replace("-", "_")[:40] or "host"


@dataclass
class Commit:
    """One commit record: which generation holds the checkpoint, and its files."""

    name: str
    seq: int
    generation: str
    files: dict[str, dict[str, int]]
    metadata: dict[str, Any]
    writer: str = ""

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())


@dataclass
class Entry:
    """What a listing knows of one name: its commits (newest first) and which verify by size."""

    name: str
    status: str
    good: list[Commit] = field(default_factory=list)
    problem: str | None = None
    wall_time: float | None = None

    @property
    def commit(self) -> Commit | None:
        return self.good[0] if self.good else None


def _gen_seq(generation: str) -> int:
    digits = generation[1:].split("-", 1)[0]
    return int(digits) if digits.isdigit() else -1


class ObjectDir:
    """A directory URL holding checkpoints under the protocol of this module's docstring."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = str(url).rstrip("/")
        self.options = storage_options
        sfs.filesystem(self.url, storage_options)  # an unknown scheme fails here

    def _url(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    # ------------------------------------------------------------------- write
    def publish(self, name: str, root: Path, files: list[Path], metadata: dict[str, Any], *,
                known: dict[Path, tuple[int, int]] | None = None) -> Commit:  # fmt: skip
        """Upload ``files`` (under the local ``root``) as a new generation of ``name``, commit it.

        ``known``: ``{file: (size, crc32)}`` the writer already computed (its manifest); a file
        whose size still matches is not read again for its checksum."""
        known = known or {}
        tree = self._tree(name)
        seq = 1 + max((s for s in _commit_seqs(tree)), default=0)
        seq = max(seq, 1 + max((_gen_seq(g) for g in _generations(tree)), default=0))
        token = uuid.uuid4().hex[:12]
        generation = f"g{seq:09d}-{_HOST}-{os.getpid()}-{token}"
        rels = [str(Path(f).relative_to(root)) for f in files]
        sizes = [os.stat(f).st_size for f in files]
        crcs: list[int] = []
        crc_error: list[BaseException] = []

        def checksum() -> None:  # from the bytes the format wrote (or remembered from the write)
            try:
                crcs.extend(known[f][1] if f in known and known[f][0] == s else known_crc32(f)
                            for f, s in zip(files, sizes))  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                crc_error.append(exc)

        worker = threading.Thread(target=checksum, daemon=True)
        worker.start()
        targets = [self._url(name + SUFFIX, generation, rel) for rel in rels]
        try:
            sfs.upload_files(list(zip(files, targets)), storage_options=self.options)
        except BaseException:
            worker.join()
            self._remove_quietly(targets)
            raise
        worker.join()
        if crc_error:
            raise crc_error[0]
        record = {
            "modelkeep_commit": RECORD_VERSION,
            "name": name,
            "seq": seq,
            "generation": generation,
            "writer": token,
            "files": {rel: {"size": size, "crc32": crc} for rel, size, crc in zip(rels, sizes, crcs)},
            "metadata": {**metadata, "wall_time": metadata.get("wall_time", time.time())},
        }
        data = json.dumps(record, indent=1, default=str).encode()
        record_url = self._url(name + SUFFIX, f"{COMMIT}{seq:09d}.json")
        try:
            enforced = sfs.put_bytes(record_url, data, exclusive=True, storage_options=self.options)
            if not enforced and json.loads(sfs.read_many([record_url], storage_options=self.options)[record_url]).get("writer") != token:
                raise FileExistsError(record_url)
        except FileExistsError:
            self._remove_quietly(targets)
            raise ConcurrentWriteError(
                17,
                f"save: another writer committed {self._url(name)} (commit {seq}) while this one was "
                "uploading; its checkpoint stands and this save was dropped. Give each writer its own "
                "directory or file name.",
            ) from None
        commit = Commit(name, seq, generation, record["files"], record["metadata"], token)
        self._collect(name, tree, keep_from=seq - 1)
        return commit

    def _remove_quietly(self, urls: list[str]) -> None:
        try:
            sfs.remove(urls, storage_options=self.options)
        except OSError:
            pass  # a leftover generation: listed as incomplete, removed by clean()

    def _collect(self, name: str, tree: dict[str, int], *, keep_from: int) -> None:
        """Delete commits below ``keep_from`` and generations no kept commit can name."""
        doomed = [self._url(name + SUFFIX, rel) for rel in tree
                  if rel.startswith(COMMIT) and _seq_of(rel) < keep_from]  # fmt: skip
        doomed += [self._url(name + SUFFIX, rel) for rel in tree
                   if not rel.startswith(COMMIT) and _gen_seq(rel.split("/", 1)[0]) < keep_from]  # fmt: skip
        self._remove_quietly(sorted(doomed, key=lambda u: COMMIT not in u))  # records first

    def delete(self, name: str) -> None:
        """Remove a checkpoint: its commit records first (it is gone for readers), then its data."""
        tree = self._tree(name)
        records = [self._url(name + SUFFIX, r) for r in tree if r.startswith(COMMIT)]
        sfs.remove(records, storage_options=self.options)
        sfs.remove([self._url(name + SUFFIX, r) for r in tree if not r.startswith(COMMIT)], storage_options=self.options)

    def delete_all(self) -> None:
        """Remove every checkpoint of the directory (records first)."""
        for name in self.entries():
            self.delete(name)

    def clean(self) -> list[str]:
        """Remove generations that no commit names and whose writer (this host) is gone."""
        removed = []
        by_name = self._trees()
        for name, sub in by_name.items():
            named = {c.generation for c in self._records(name, sub)}
            for generation in _generations(sub):
                parts = generation.split("-")
                if generation in named or len(parts) < 4 or parts[1] != _HOST or not parts[2].isdigit():
                    continue
                if pid_alive(int(parts[2])):
                    continue
                urls = [self._url(name + SUFFIX, r) for r in sub if r.startswith(generation + "/")]
                self._remove_quietly(urls)
                removed.append(self._url(name + SUFFIX, generation))
        return removed

    # ------------------------------------------------------------------- read
    def _trees(self) -> dict[str, dict[str, int]]:
        """Every checkpoint's objects (path below ``name + SUFFIX`` → size), from one listing."""
        by_name: dict[str, dict[str, int]] = {}
        for rel, size in sfs.list_tree(self.url, storage_options=self.options).items():
            head, _, rest = rel.partition("/")
            if head.endswith(SUFFIX) and rest:
                by_name.setdefault(head[: -len(SUFFIX)], {})[rest] = size
        return by_name

    def _tree(self, name: str) -> dict[str, int]:
        return sfs.list_tree(self._url(name + SUFFIX), storage_options=self.options)

    def _records(self, name: str, tree: dict[str, int]) -> list[Commit]:
        rels = sorted((r for r in tree if r.startswith(COMMIT)), key=_seq_of, reverse=True)
        urls = [self._url(name + SUFFIX, r) for r in rels]
        got = sfs.read_many(urls, storage_options=self.options)
        out = []
        for url in urls:
            commit = _parse(name, got[url])
            if commit is not None:
                out.append(commit)
        return out

    def entries(self) -> dict[str, Entry]:
        """Every checkpoint name of the directory, with its good commits, from one listing."""
        by_name = self._trees()
        return {name: self._entry(name, sub) for name, sub in sorted(by_name.items())}

    def entry(self, name: str) -> Entry | None:
        tree = self._tree(name)
        return self._entry(name, tree) if tree else None

    def _entry(self, name: str, tree: dict[str, int]) -> Entry:
        records = [r for r in tree if r.startswith(COMMIT)]
        commits = self._records(name, tree)
        if not records:
            return Entry(name, INCOMPLETE, problem="no commit record: the upload did not finish")
        good, problems = [], []
        for commit in commits:
            problem = _size_problem(commit, tree)
            if problem is None:
                good.append(commit)
            else:
                problems.append(f"commit {commit.seq}: {problem}")
        if len(commits) < len(records):
            problems.append(f"{len(records) - len(commits)} commit record(s) unreadable")
        if not good:
            return Entry(name, CORRUPT, problem="; ".join(problems) or "no readable commit record")
        return Entry(name, OK, good, problem=None, wall_time=good[0].metadata.get("wall_time"))

    def fetch(self, name: str, dest: Path, *, entry: Entry | None = None) -> Commit:
        """Download the newest good commit of ``name`` into ``dest`` (files at their relative
        names), checking every CRC-32; fall back to an older commit on a mismatch."""
        return self._first_good(name, entry, lambda commit: self._download(commit, dest))[0]

    def fetch_memory(self, name: str, *, entry: Entry | None = None) -> tuple[Commit, dict[str, Any]]:
        """``fetch`` into memory: the newest good commit and ``{relative name: buffer}``, every
        CRC-32 checked on arrival (``fs.download_buffers``); nothing is staged on disk."""
        return self._first_good(name, entry, self._download_memory)

    def _first_good(self, name: str, entry: Entry | None, get: Any) -> tuple[Commit, Any]:
        entry = entry or self.entry(name)
        if entry is None:
            raise CheckpointNotFoundError(f"load: no checkpoint {self._url(name)} (no {name}{SUFFIX}/ objects).")
        problems = [entry.problem] if entry.problem else []
        for commit in entry.good:
            try:
                return commit, get(commit)
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                problems.append(f"commit {commit.seq}: {exc}")
                warnings.warn(f"load: {self._url(name)} commit {commit.seq} does not verify ({exc}); "
                              "trying an older one.", stacklevel=3)  # fmt: skip
        raise CorruptCheckpointError(
            f"load: no commit of {self._url(name)} verifies: {'; '.join(problems) or 'none committed'}. "
            "Use another checkpoint."
        )

    def _items(self, commit: Commit) -> list[tuple[str, str, int, int]]:
        return [(self._url(commit.name + SUFFIX, commit.generation, rel), rel, int(meta["size"]), int(meta["crc32"]))
                for rel, meta in commit.files.items()]  # fmt: skip

    def _download(self, commit: Commit, dest: Path) -> None:
        items = self._items(commit)
        crcs = sfs.download_files([(url, dest / rel, size) for url, rel, size, _ in items], storage_options=self.options)
        for (url, _rel, _size, expected), crc in zip(items, crcs):
            _check_crc(url, expected, crc)

    def _download_memory(self, commit: Commit) -> dict[str, Any]:
        items = self._items(commit)
        got = sfs.download_buffers([(url, size) for url, _rel, size, _ in items], storage_options=self.options)
        for (url, _rel, _size, expected), (_buffer, crc) in zip(items, got):
            _check_crc(url, expected, crc)
        return {rel: buffer for (_url, rel, _size, _crc), (buffer, _) in zip(items, got)}


def _check_crc(url: str, expected: int, found: int) -> None:
    if found != expected:
        raise CorruptCheckpointError(
            f"load: {url} fails its CRC-32 check (expected {expected:08x}, found {found:08x}): the object is corrupt."
        )


def _seq_of(rel: str) -> int:
    digits = rel[len(COMMIT) :].split(".", 1)[0]
    return int(digits) if digits.isdigit() else -1


def _commit_seqs(tree: dict[str, int]) -> list[int]:
    return [_seq_of(r) for r in tree if r.startswith(COMMIT)]


def _generations(tree: dict[str, int]) -> list[str]:
    return sorted({r.split("/", 1)[0] for r in tree if "/" in r and r.startswith("g")})


def _parse(name: str, raw: bytes | BaseException) -> Commit | None:
    if isinstance(raw, BaseException):
        return None
    try:
        doc = json.loads(raw)
        return Commit(name, int(doc["seq"]), str(doc["generation"]), dict(doc["files"]),
                      dict(doc.get("metadata") or {}), str(doc.get("writer", "")))  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


def _size_problem(commit: Commit, tree: dict[str, int]) -> str | None:
    for rel, meta in commit.files.items():
        key = f"{commit.generation}/{rel}"
        if key not in tree:
            return f"{rel} is missing"
        if tree[key] != int(meta["size"]):
            return f"{rel} has {tree[key]} bytes, the record says {meta['size']}"
    return None

