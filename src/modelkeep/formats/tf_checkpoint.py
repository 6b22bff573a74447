"""TF checkpoints: ``P.index`` + ``P.data-00000-of-00001`` and the ``checkpoint`` state file.

Written with TensorFlow's own ``SaveV2`` op and an object graph in the layout TF2-era
Keras used (``layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``), so that
``tf.train.load_checkpoint`` and ``tf.train.latest_checkpoint`` read it. The model
config and metadata travel in one extra string tensor, ``_MODELKEEP_HEADER``.

Example::

    TFCheckpointFormat().write(state, Path("run/saved_modelname"))
    tf.train.latest_checkpoint("run")   # 'run/saved_modelname'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError
from modelkeep.formats.base import Format
from modelkeep.state import MODEL, OPTIMIZER, ModelState
from modelkeep.storage.commit import commit_group, temp_sibling, write_bytes, write_error

DATA_SUFFIX = ".data-00000-of-00001"
INDEX_SUFFIX = ".index"
STATE_FILE = "checkpoint"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
HEADER_KEY = "_MODELKEEP_HEADER"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def object_path(state_key: str) -> str:
    """Where a state variable sits in the object graph."""
    if state_key.startswith(MODEL + "/"):
        return state_key[len(MODEL) + 1 :]
    if state_key.startswith(OPTIMIZER + "/"):
        return state_key
    return "_modelkeep/" + state_key


def keras2_path(path: str) -> str:
    """A model variable's object path as TF2-era Keras tracked it (what tf-keras restores).

    Keras 3 names a recurrent layer's cell ``lstm_cell`` and a Bidirectional's halves
    ``forward_lstm``/``backward_lstm``; Keras 2 tracked them as ``cell``,
    ``forward_layer`` and ``backward_layer``.
    """
    parts = path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.endswith("_cell"):
            parts[i] = "cell"
        elif part.startswith("forward_"):
            parts[i] = "forward_layer"
        elif part.startswith("backward_"):
            parts[i] = "backward_layer"
    return "/".join(parts)


def object_paths(keys: list[str]) -> list[str]:
    """Object paths for state keys: Keras 2's names where they stay unambiguous."""
    plain = [object_path(k) for k in keys]
    translated = [keras2_path(p) if k.startswith(MODEL + "/") else p for k, p in zip(keys, plain)]
    optimizer = keras2_optimizer_paths([k for k in keys if k.startswith(OPTIMIZER + "/")])
    translated = [optimizer.get(k, p) for k, p in zip(keys, translated)]
    return translated if len(set(translated)) == len(translated) else plain


def keras2_optimizer_paths(keys: list[str]) -> dict[str, str]:
    """Optimizer state keys -> where tf-keras's optimizers track them (``optimizer/_variables/N``).

    tf-keras keeps the iteration count as ``_variables/0`` (tracked as ``_iterations``) and
    each slot as ``_variables/N`` in creation order, which is Keras 3's order too. Only
    translated when the state holds nothing else (an optimizer with extra variables keeps
    modelkeep's own names rather than risk a wrong match).
    """
    prefix = OPTIMIZER + "/"
    names = [k[len(prefix) :] for k in keys]
    if not names or any(n not in ("iteration", "learning_rate") and not n.startswith("slots/") for n in names):
        return {}
    out, index = {}, 1
    for key, name in zip(keys, names):
        if name == "iteration":
            out[key] = "optimizer/_iterations"
        elif name == "learning_rate":
            out[key] = "optimizer/_learning_rate"
        else:
            out[key] = f"optimizer/_variables/{index}"
            index += 1
    return out


def build_object_graph(paths: list[str]) -> bytes:
    """A serialized ``TrackableObjectGraph`` whose leaves are the given slash paths."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2 as pb

    graph = pb.TrackableObjectGraph()
    graph.nodes.add()  # the root
    children: dict[tuple[int, str], int] = {}
    for path in paths:
        node_id = 0
        parts = path.split("/")
        for depth, part in enumerate(parts):
            key = (node_id, part)
            if key not in children:
                graph.nodes.add()
                child_id = len(graph.nodes) - 1
                graph.nodes[node_id].children.add(node_id=child_id, local_name=part)
                children[key] = child_id
            node_id = children[key]
            if depth == len(parts) - 1:
                graph.nodes[node_id].attributes.add(
                    name="VARIABLE_VALUE", full_name=path, checkpoint_key=path + VALUE_SUFFIX
                )
    return graph.SerializeToString()


def save_tensors(prefix: Path, named: dict[str, Any]) -> None:
    """Write ``{checkpoint key: array or bytes}`` as a TF bundle: from a snapshot buffer with
    direct I/O (``formats.tf_bundle``), else with TensorFlow's SaveV2 op."""
    import tensorflow as tf

    from modelkeep.formats.tf_bundle import write_bundle_direct
    from modelkeep.storage.phases import phase

    with phase("TF bundle from the snapshot (O_DIRECT, CRC-32C)"):
        if write_bundle_direct(Path(prefix), named):
            return

    names = list(named)
    converted: dict[int, Any] = {}  # one tensor per array, however many keys name it
    tensors = []
    for name in names:
        value = named[name]
        if id(value) not in converted:
            converted[id(value)] = _as_tensor(value)
        tensors.append(converted[id(value)])
    try:
        with phase("TF bundle with SaveV2 (page cache)"):
            tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    except tf.errors.OpError as exc:
        # TensorFlow reports a full disk or a denied write as an OpError; say it as an OSError
        import errno

        text = str(exc)
        code = errno.ENOSPC if "space" in text.lower() else errno.EACCES if "ermission" in text else errno.EIO
        raise OSError(code, text.strip().splitlines()[0] if text.strip() else type(exc).__name__) from exc


_DLPACK_KINDS = "fiub"


def _as_tensor(value: Any) -> Any:
    """A tensor of ``value``: a large aligned C-contiguous array is shared through DLPack
    (no copy: SaveV2 reads the array's own memory), anything else copied by ``tf.constant``."""
    import tensorflow as tf

    if (
        isinstance(value, np.ndarray) and value.nbytes >= 1 << 20 and value.flags.c_contiguous
        and value.dtype.kind in _DLPACK_KINDS and value.dtype.byteorder in "=|<"
        and value.__array_interface__["data"][0] % 64 == 0
    ):  # fmt: skip
        try:
            return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
        except (AttributeError, BufferError, TypeError, ValueError, tf.errors.OpError):
            pass
    return tf.constant(value)


def update_state_file(prefix: Path, *, keep: list[Path] | None = None) -> None:
    """Point the directory's ``checkpoint`` file at ``prefix``, atomically, as TF does."""
    import tensorflow as tf
    from google.protobuf import text_format

    directory = prefix.parent.absolute()  # a relative save_dir makes TF write "../name"
    previous = _read_state(directory)
    others = keep if keep is not None else [Path(p) for p in previous if Path(p).name != prefix.name]
    names = [_relative(p, directory) for p in others if _relative(p, directory) != prefix.name]
    proto = tf.compat.v1.train.generate_checkpoint_state_proto(
        str(directory), prefix.name, all_model_checkpoint_paths=names + [prefix.name]
    )
    write_bytes(directory / STATE_FILE, text_format.MessageToString(proto).encode())


def _relative(path: Path | str, directory: Path) -> str:
    path = Path(path)
    return path.name if path.parent in (directory, Path(".")) else str(path)


def _read_state(directory: Path) -> list[str]:
    from modelkeep.storage.guard import read_state_file

    try:
        state = read_state_file(directory)
    except Exception:  # noqa: BLE001 - a corrupt state file is replaced, not fatal
        return []
    return list(state.all_model_checkpoint_paths) if state else []


def write_bundle(state: ModelState, prefix: Path) -> None:
    """Write ``prefix.index`` + ``prefix.data-00000-of-00001`` (no commit, no state file).

    Object paths are the Keras 2 ones (``cell``, ``forward_layer``) so tf-keras reads them;
    the header records them with the variable order.
    """
    paths = object_paths(list(state.variables))
    named: dict[str, Any] = {p + VALUE_SUFFIX: v for p, v in zip(paths, state.variables.values())}
    header = json.loads(state.header_json())
    header["order"] = list(state.variables)
    header["paths"] = paths
    named[HEADER_KEY] = np.array(json.dumps(header).encode(), dtype=object)
    named[OBJECT_GRAPH_KEY] = np.array(build_object_graph(paths), dtype=object)
    save_tensors(prefix, named)


def data_shards(prefix: Path) -> list[Path]:
    """The ``.data-0000K-of-0000N`` files of a checkpoint: all N shards (one when none is there yet)."""
    counts = set()
    for found in Path(prefix).parent.glob(Path(prefix).name + ".data-*-of-*"):
        tail = found.name[len(Path(prefix).name) + len(".data-") :]
        shard, _, total = tail.partition("-of-")
        if shard.isdigit() and total.isdigit():
            counts.add(total)
    if len(counts) != 1 or int(next(iter(counts))) <= 1:
        return [Path(str(prefix) + DATA_SUFFIX)]
    total = next(iter(counts))
    return [Path(f"{prefix}.data-{i:0{len(total)}d}-of-{total}") for i in range(int(total))]


class TFCheckpointFormat(Format):
    name = "TF checkpoint"
    holds = ("weights",)
    keeps_optimizer = True

    def files(self, path: Path) -> list[Path]:
        return [Path(str(path) + INDEX_SUFFIX), *data_shards(path)]

    def exists(self, path: Path) -> bool:
        return Path(str(path) + INDEX_SUFFIX).exists()

    def require(self, path: Path) -> None:
        index, data, *more = self.files(path)
        missing = [p.name for p in more if not p.exists()]
        if data.exists() and missing:
            raise CheckpointNotFoundError(
                f"load: the TF checkpoint {path} is written in {len(more) + 1} shards but "
                f"{', '.join(missing)} is missing. Copy every .data shard, or use another checkpoint."
            )
        if not index.exists() and not data.exists():
            raise CheckpointNotFoundError(
                f"load: no TF checkpoint at {path} (expected {index.name} and {data.name}). "
                "Check the prefix, or give the directory to take its latest checkpoint."
            )
        if not data.exists():
            raise CheckpointNotFoundError(
                f"load: {index} is there but {data.name} is missing: only half of the TF "
                "checkpoint was copied. Copy the .data file too, or use another checkpoint."
            )
        if not index.exists():
            raise CheckpointNotFoundError(
                f"load: {data} is there but {index.name} is missing: the TF checkpoint is "
                "incomplete. Copy the .index file too, or use another checkpoint."
            )

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_prefix = temp_sibling(path)
        final = [Path(str(path) + INDEX_SUFFIX), Path(str(path) + DATA_SUFFIX)]  # one shard, whatever was there
        try:
            write_bundle(state, tmp_prefix)
            temps = [Path(str(tmp_prefix) + DATA_SUFFIX), Path(str(tmp_prefix) + INDEX_SUFFIX)]
            commit_group([(temps[0], final[1]), (temps[1], final[0])])
        except OSError as exc:
            raise write_error(path, exc) from exc
        finally:
            for leftover in path.parent.glob(tmp_prefix.name + "*"):
                leftover.unlink(missing_ok=True)
        update_state_file(path)
        return final

    def _reader(self, path: Path) -> tuple[Any, dict]:
        from modelkeep.storage.guard import open_tf_checkpoint

        self.require(path)
        reader = open_tf_checkpoint(path)  # companions beside the prefix, declared sizes checked
        return reader, reader.get_variable_to_shape_map()

    def load_weights(self, model: Any, path: Path) -> None:
        reader, shapes = self._reader(path)
        if HEADER_KEY not in shapes:
            # written by tf-keras: match by object graph, optimizer state included as Keras 2 did
            from modelkeep.formats import legacy

            legacy.load_checkpoint_into(model, path, reader)
            from modelkeep.own_state import restore_own

            restore_own(model, {}, None, source=str(path))  # Normalization: from its variables
            return
        super().load_weights(model, path)

    def read(self, path: Path) -> ModelState:
        reader, shapes = self._reader(path)
        if HEADER_KEY not in shapes:
            from modelkeep.formats import legacy

            return legacy.read_tf_keras_checkpoint(path, reader)
        from modelkeep.storage.guard import load_json

        header = load_json(_get(reader, HEADER_KEY, path), source=path, what="modelkeep header tensor")
        variables = {}
        order = header.pop("order")
        for key, object_key in zip(order, header.pop("paths", None) or [object_path(k) for k in order]):
            variables[key] = _get(reader, object_key + VALUE_SUFFIX, path)
        return ModelState(variables, header.get("model_config"), header.get("compile_config"), header.get("metadata") or {})


def _get(reader: Any, key: str, path: Path) -> Any:
    import tensorflow as tf

    try:
        value = reader.get_tensor(key)
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as exc:
        raise CorruptCheckpointError(
            f"load: tensor '{key}' of the TF checkpoint {path} cannot be read "
            f"({_first_line(exc)}); the .data file is corrupt. Use another checkpoint."
        ) from exc
    if isinstance(value, bytes):
        return value.decode()
    return np.asarray(value)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def latest_in(directory: Path) -> Path | None:
    """The newest checkpoint named by a directory's ``checkpoint`` state file; the file is read
    through ``storage.guard`` and the name must stay inside ``directory``."""
    from modelkeep.storage.guard import read_state_file, state_file_target

    state = read_state_file(directory)
    if state is None or not state.model_checkpoint_path:
        return None
    prefix = state_file_target(directory, state.model_checkpoint_path, source=directory / STATE_FILE)
    return prefix if Path(str(prefix) + INDEX_SUFFIX).exists() else None

