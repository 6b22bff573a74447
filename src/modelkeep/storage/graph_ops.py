"""Which TensorFlow ops a SavedModel's graph may hold before modelkeep runs it.

Serving a graph runs it (TF Serving does too), so a graph is only refused for what it could do
besides computing: touch the file system, talk to the network, or call back into Python.
``unsafe_ops()`` derives that list from the op registry of the installed TensorFlow, so ops
added by a newer TensorFlow are covered by the same rules:

1. ops that call Python: names containing ``PyFunc`` (``PyFunc``, ``PyFuncStateless``,
   ``EagerPyFunc``);
2. ops whose ``OpDef`` takes an input or attribute that names a file, directory or address:
   ``filename(s)``, ``file_pattern``, ``prefix``, ``logdir``, ``path``, ``directory``,
   ``output_stream`` (``PrintV2`` can write to ``file://...``), ``debug_urls``,
   ``descriptor_source`` (``DecodeProtoV2`` reads a descriptor file), ``address``,
   ``memory_region_name`` (``ImmutableConst`` maps a file);
3. ops whose name says they read or write outside the graph: ``File`` (``ReadFile``,
   ``WriteFile``, ``MatchingFiles``, ``DeleteFile`` where present, ``FileSystemSetConfiguration``),
   ``Reader`` (the TF1 readers and their state ops), ``Record``, ``Summary`` (summary writers),
   ``Sql``, ``LMDB``, ``Snapshot``, ``DataService``, ``Save``/``Restore``/``Checkpoint``,
   ``Debug``, ``Print``.

Every SavedModel holds ``SaveV2``/``RestoreV2`` in the functions its saver calls; those
(``SAVER_OPS``) are allowed only in nodes and functions reachable from ``saver_def`` alone.
``scan_saved_model`` walks the graph and its function library (protobuf only, nothing runs).

Example::

    found = scan_saved_model(Path("exported"))      # {"WriteFile": ["__inference_init_12"]}
    check_saved_model_ops(Path("exported"))         # UnsafeFileError naming the ops, or None
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

PATH_ARGS = frozenset({
    "filename", "filenames", "file_pattern", "prefix", "logdir", "path", "directory", "output_stream",
    "debug_urls", "descriptor_source", "address", "memory_region_name",
})  # fmt: skip
NAME_PATTERN = re.compile(r"PyFunc|File|Reader|Record|Summary|Sql|LMDB|Snapshot|DataService|Save|Restore|Checkpoint|Debug|Print")
SAVER_OPS = frozenset({
    "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec", "Save", "SaveSlices",
    "Restore", "RestoreSlice",
})  # fmt: skip


@functools.lru_cache(maxsize=1)
def unsafe_ops() -> frozenset[str]:
    """The op names refused by default, from the installed TensorFlow's op registry."""
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    out = set()
    for name in dir(tf.raw_ops):
        if name.startswith("_"):
            continue
        op_def = op_def_registry.get(name)
        if op_def is None:
            continue
        args = {a.name for a in op_def.input_arg} | {a.name for a in op_def.attr}
        if NAME_PATTERN.search(name) or args & PATH_ARGS:
            out.add(name)
    return frozenset(out)


def _node_name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _called(node: Any, library: set[str]) -> set[str]:
    """Functions a node calls: its op itself, or any ``func`` / list-of-``func`` attribute."""
    out = {node.op} & library
    for value in node.attr.values():
        if value.HasField("func"):
            out.add(value.func.name)
        if value.HasField("list"):
            out.update(f.name for f in value.list.func)
    return out & library


def _reach(start: set[str], calls: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls.get(name, ()))
    return seen


def _saver_nodes(meta: Any) -> set[str]:
    """Graph nodes the saver alone uses: the closure of its save and restore ops' inputs."""
    by_name = {n.name: n for n in meta.graph_def.node}
    start = {_node_name(t) for t in (meta.saver_def.save_tensor_name, meta.saver_def.restore_op_name) if t}
    seen, todo = set(), [n for n in start if n in by_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_node_name(i) for i in by_name[name].input if _node_name(i) in by_name)
    return seen


def scan_meta_graph(meta: Any) -> dict[str, list[str]]:
    """``{unsafe op: [where, ...]}`` for one ``MetaGraphDef`` (empty: nothing refused)."""
    denied = unsafe_ops()
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    names = set(library)
    calls = {name: set().union(*(_called(n, names) for n in f.node_def)) if f.node_def else set() for name, f in library.items()}
    saver = _saver_nodes(meta)
    saver -= _used_outside(meta, saver)
    found: dict[str, list[str]] = {}

    def note(op: str, where: str, in_saver: bool) -> None:
        if op in denied and not (in_saver and op in SAVER_OPS):
            found.setdefault(op, []).append(where)

    saver_calls, other_calls = set(), set()
    for node in meta.graph_def.node:
        in_saver = node.name in saver
        note(node.op, f"graph node {node.name!r}", in_saver)
        (saver_calls if in_saver else other_calls).update(_called(node, names))
    other = _reach(other_calls, calls)
    only_saver = _reach(saver_calls, calls) - other
    for name, function in library.items():
        for node in function.node_def:
            note(node.op, f"function {name!r}", name in only_saver)
    return found


def _used_outside(meta: Any, saver: set[str]) -> set[str]:
    """Saver-closure nodes that non-saver nodes also read (those get the full rules)."""
    by_name = {n.name: n for n in meta.graph_def.node}
    seen: set[str] = set()
    todo = [n for n in by_name if n not in saver]
    visited: set[str] = set()
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        for ref in by_name[name].input:
            parent = _node_name(ref)
            if parent in by_name:
                if parent in saver:
                    seen.add(parent)
                todo.append(parent)
    return seen


def scan_saved_model(path: Path) -> dict[str, list[str]]:
    """``{unsafe op: [where, ...]}`` over every meta graph of the SavedModel at ``path``."""
    from modelkeep.storage.guard import read_saved_model_proto

    found: dict[str, list[str]] = {}
    for meta in read_saved_model_proto(Path(path)).meta_graphs:
        for op, where in scan_meta_graph(meta).items():
            found.setdefault(op, []).extend(where)
    return found


def check_saved_model_ops(path: Path, *, allow_unsafe_ops: bool = False) -> None:
    """Refuse (``UnsafeFileError``) a SavedModel whose graph holds ``unsafe_ops()``, naming them,
    unless ``allow_unsafe_ops``. Called before ``tf.saved_model.load`` runs anything."""
    if allow_unsafe_ops:
        return
    found = scan_saved_model(Path(path))
    if found:
        from modelkeep.storage.guard import refuse

        shown = ", ".join(f"{op} (in {where[0]}{f' and {len(where) - 1} more' if len(where) > 1 else ''})" for op, where in sorted(found.items()))
        raise refuse(Path(path), "graph-ops", f"its graph holds ops that touch files, the network or Python: {shown}",
                     "Running it could read or write files. If you trust the file, pass allow_unsafe_ops=True "
                     "(command line: --allow-unsafe-ops).")
