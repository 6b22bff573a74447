"""Keras 3's own files: the ``.keras`` zip (whole model) and ``.weights.h5`` (weights).

These are Keras's formats, so Keras writes and reads them; modelkeep adds the commit
protocol (Keras writes in place) and clear errors.
"""

from __future__ import annotations

import contextlib
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from modelkeep.capture import build_model, capture, deserialization_error, restore_rng
from modelkeep.errors import CorruptCheckpointError, DeserializationError, FormatError
from modelkeep.formats.base import Format
from modelkeep.state import RNG, ModelState
from modelkeep.storage.commit import atomic_path

RNG_MEMBER = "modelkeep_rng.safetensors"


def _model_for(state: ModelState, model: Any) -> Any:
    return model if model is not None else build_model(state)


class KerasZipFormat(Format):
    name = "Keras zip (.keras)"
    holds = ("model",)
    keeps_optimizer = True

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        model = _model_for(state, model)
        with atomic_path(path, keep_suffix=".keras") as tmp:
            model.save(tmp, include_optimizer=state.has_optimizer)
            rng = state.group(RNG)
            if rng and state.has_optimizer:
                # Keras's zip does not keep seed-generator states; they ride in a member of ours
                with zipfile.ZipFile(tmp, "a") as archive:
                    archive.writestr(RNG_MEMBER, save_tensors(rng))
        return [path]

    def save_model(self, model: Any, path: Path, *, include_optimizer: bool = True) -> list[Path]:
        return self.write(capture(model, include_optimizer=include_optimizer), path, model=model)

    def require(self, path: Path) -> None:
        if not path.exists():
            from modelkeep.errors import CheckpointNotFoundError

            raise CheckpointNotFoundError(
                f"File not found: filepath={path}. Please ensure the file is an accessible `.keras` zip "
                "file. (load: nothing at that path; check it.)"
            )

    def load_model(self, path: Path, *, custom_objects: dict | None = None, compile: bool = True, safe_mode: bool = True) -> Any:
        import keras

        from modelkeep.storage import guard

        self.require(path)
        if not zipfile.is_zipfile(path):
            raise _not_a_zip(path)
        guard.check_keras_zip(path)  # members, config.json and the inner HDF5 checked before Keras reads them
        from modelkeep.formats import legacy_semantics, legacy_zip

        legacy_semantics.ensure_registered()  # a model translated from Keras 2 may use keras2_hard_sigmoid

        if str(legacy_zip.keras_version(path) or "").startswith("2."):  # tf.keras 2.13-2.15, tf-keras 2.16+
            return legacy_zip.load_keras2_zip(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
        try:
            model = keras.saving.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
            with guard.open_zip(path) as archive:
                if compile and RNG_MEMBER in archive.namelist():
                    rng = _load_member_tensors(archive, path)
                    restore_rng(model, ModelState({f"{RNG}/{k}": v for k, v in rng.items()}), source=str(path))
            return model
        except zipfile.BadZipFile as exc:
            raise CorruptCheckpointError(f"load_model: {path} is a damaged zip ({exc}); use another copy.") from exc
        except (TypeError, ValueError) as exc:
            unknown = _unregistered_classes(path, custom_objects)
            if unknown:
                names = ", ".join(f"'{n}'" for n in unknown)
                raise DeserializationError(
                    f"load_model: {path} uses class(es) {names}, which are not Keras 3 built-ins and are not "
                    "registered here. Import the code that defines them (with "
                    "@keras.saving.register_keras_serializable()) or pass custom_objects={'Name': Class}; "
                    "or build the model in code and load its weights."
                ) from exc
            raise deserialization_error(exc, str(path)) from exc

    def read(self, path: Path) -> ModelState:
        return capture(self.load_model(path, compile=True))


def _load_member_tensors(archive: zipfile.ZipFile, path: Path) -> dict:
    from safetensors import SafetensorError

    from modelkeep.storage import guard

    source = f"{path}!{RNG_MEMBER}"
    try:
        return load_tensors(guard.read_member(archive, RNG_MEMBER, source=source))
    except SafetensorError as exc:
        raise CorruptCheckpointError(f"load_model: {source} is not a readable safetensors member ({exc}); the archive is corrupt.") from exc


def _unregistered_classes(path: Path, custom_objects: dict | None) -> list[str]:
    """Registered names in a ``.keras`` config that neither Keras nor ``custom_objects`` resolve."""
    import keras

    from modelkeep.errors import ModelkeepError
    from modelkeep.storage import guard

    try:
        with guard.open_zip(path) as archive:
            config = guard.load_json(guard.read_member(archive, "config.json", source=f"{path}!config.json"),
                                     source=f"{path}!config.json", what="config.json")
    except (ModelkeepError, OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: list[str] = []

    def walk(obj: object) -> None:
        if isinstance(obj, dict):
            name = obj.get("registered_name")
            if isinstance(name, str) and "class_name" in obj and not str(obj.get("module") or "").startswith("keras"):
                known = name in (custom_objects or {}) or obj["class_name"] in (custom_objects or {})
                if not known and keras.saving.get_registered_object(name) is None and name not in found:
                    found.append(name)
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(config)
    return found


def _not_a_zip(path: Path) -> Exception:
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic.startswith(b"PK"):
        return CorruptCheckpointError(
            f"load_model: {path} starts like a zip but is truncated or corrupt; use another copy."
        )
    return FormatError(
        f"load_model: {path} has the .keras extension but is not a zip archive (it starts with "
        f"{magic!r}). Rename it to its real format's extension."
    )


class KerasWeightsFormat(Format):
    name = "Keras weights (.weights.h5)"
    holds = ("weights",)

    def write(self, state: ModelState, path: Path, *, model: Any = None) -> list[Path]:
        return self.save_weights(_model_for(state, model), path)

    def save_weights(self, model: Any, path: Path, *, objects_to_skip: Any = None) -> list[Path]:
        with atomic_path(path, keep_suffix=".weights.h5") as tmp:
            if objects_to_skip is None:
                model.save_weights(tmp)
                _add_own_state(model, tmp)
            else:
                from keras.src.saving import saving_lib

                saving_lib.save_weights_only(model, str(tmp), objects_to_skip=objects_to_skip)
        return [path]

    def load_weights(self, model: Any, path: Path) -> None:
        from modelkeep.formats.hdf5 import _fits_model, _open

        self.require(path)
        with _open(path) as f:  # a clear error for a file that is not HDF5; links and sizes checked
            _fits_model(f, model, path)
        try:
            model.load_weights(path)
            _load_own_state(model, path)
        except ValueError as exc:
            from modelkeep.errors import IncompatibleModelError

            raise IncompatibleModelError(
                f"{str(exc).strip()} load_weights: {path} does not fit the model. The file was saved "
                "from a different architecture; skip_mismatch=True loads the parts that fit."
            ) from exc

    def read(self, path: Path) -> ModelState:
        raise FormatError(
            f"read: {path} is a Keras 3 weights file, which holds no architecture; load it into a "
            "model you build with modelkeep.load_weights(model, path)."
        )


OWN_GROUP = "modelkeep_layer_state"


def _add_own_state(model: Any, path: Path) -> None:
    """Keras's ``.weights.h5`` has no assets (an adapted vocabulary); keep every layer's own
    state in one extra group, which Keras's loader does not read."""
    import h5py

    from modelkeep.own_state import capture_own

    arrays, info = capture_own(model)
    if not info:
        return
    with h5py.File(path, "a") as f:
        group = f.create_group(OWN_GROUP)
        group.attrs["info"] = json.dumps(info)
        for key, array in arrays.items():
            group.create_dataset(key, data=array)


def _load_own_state(model: Any, path: Path) -> None:
    import h5py

    from modelkeep.formats.hdf5 import _open
    from modelkeep.own_state import restore_own

    with _open(path) as f:  # the guarded opening
        if OWN_GROUP not in f:
            return
        group = f[OWN_GROUP]
        info = json.loads(group.attrs["info"])
        arrays: dict[str, Any] = {}
        group.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    restore_own(model, arrays, info, source=str(path))


# ------------------------------------------------------------------ .keras from a snapshot
class KerasZipSnapshot:
    """A ``.keras`` zip's content copied from a live model, to be written later on any thread.

    ``take`` runs on the training thread: Keras's own serializer gives ``config.json`` and
    ``metadata.json``, and Keras's own state walk (``saving_lib._save_state``) hands every
    array it would put in ``model.weights.h5`` to a recording store instead of a file; the
    arrays are read without a copy (``capture``'s host views) and copied once into
    ``buffers`` (``checkpoint.writer.SnapshotBuffers``). ``write`` makes the zip that
    ``model.save`` makes (Keras's HDF5 groups, attributes and datasets, the two JSON files),
    writing the tensor bytes itself (``formats.keras_zip_direct``). ``take`` returns None for a model whose
    layers keep assets (``TextVectorization``, ``StringLookup``): save it live.

    Example::

        snap = KerasZipSnapshot.take(model, buffers)
        snap.write(Path("c-1.keras"))      # later, on the writer's thread
    """

    def __init__(self, config_json: str, metadata_json: str, entries: list, arrays: dict[str, Any], rng: dict) -> None:
        self.config_json, self.metadata_json = config_json, metadata_json
        #: (group path, group attributes or None, [(dataset name, key into arrays)])
        self.entries = entries
        self.arrays = arrays
        self.rng = rng

    @classmethod
    def take(cls, model: Any, buffers: Any = None, *, copy: bool = True) -> KerasZipSnapshot | None:
        from keras.src.saving import saving_lib

        from modelkeep.capture import rng_variable_keys

        if any(hasattr(layer, "save_assets") for layer in model._flatten_layers(include_self=True)):
            return None
        config_json, metadata_json = saving_lib._serialize_model_as_json(model)
        entries, sources = _walk(model)
        arrays = {slot: _host_array(value) for slot, value in sources}
        rng = {k: _host_array(v) for k, v in rng_variable_keys(model)}
        if rng:
            arrays.update({f"{RNG}/{k}": v for k, v in rng.items()})
        if buffers is not None:
            arrays = buffers.copy(ModelState(arrays), align=4096).variables  # page-aligned: direct writes
        elif copy:
            arrays = {k: np.array(v) for k, v in arrays.items()}
        # else: read-only views of the variables (kept by copy-on-write); the caller copies them
        rng = {k[len(RNG) + 1 :]: arrays[k] for k in list(arrays) if k.startswith(RNG + "/")}
        return cls(config_json, metadata_json, entries, arrays, rng)

    def write(self, path: Path) -> list[Path]:
        """The ``.keras`` zip at ``path``, committed atomically (fsync, rename).

        modelkeep lays the zip out and sends the tensor bytes to their offsets itself
        (``formats.keras_zip_direct``); a snapshot whose arrays h5py would convert (bfloat16,
        strings) goes through Keras's own ``H5IOStore`` and ``zipfile`` instead."""
        from modelkeep.formats import keras_zip_direct as direct
        from modelkeep.storage.checksums import remember_crc32
        from modelkeep.storage.phases import phase

        crc = None
        with atomic_path(path, keep_suffix=".keras") as tmp:
            layout = direct.h5_layout(self.entries, self.arrays, tmp.with_name(tmp.name + ".skeleton.h5"))
            if layout is None:
                with phase("H5IOStore + zipfile (GIL held)"):
                    self._write_with_keras(tmp)
            else:
                members = [("metadata.json", self.metadata_json.encode()), ("config.json", self.config_json.encode())]
                after = [(RNG_MEMBER, save_tensors(self.rng))] if self.rng else []
                writes, crc = direct.plan(members, layout, self.arrays, after=after)
                direct.write_file(tmp, writes)
        if crc is not None:
            remember_crc32(path, crc)  # the manifest takes it from memory (and verifies the file)
        return [path]

    def _write_with_keras(self, tmp: Path) -> None:
        """Keras's own writers: the recording replayed into ``H5IOStore``, zipped with ``zipfile``."""
        import zipfile

        from keras.src.saving import saving_lib

        weights = tmp.with_name(tmp.name + ".weights.h5")
        try:
            store = saving_lib.H5IOStore(str(weights), mode="w")
            try:
                for group, attrs, items in self.entries:
                    store.make(group, metadata=attrs)
                    for name, key in items:
                        store[name] = self.arrays[key]
            finally:
                store.close()
            with zipfile.ZipFile(tmp, "w") as archive:
                archive.writestr(saving_lib._METADATA_FILENAME, self.metadata_json)
                archive.writestr(saving_lib._CONFIG_FILENAME, self.config_json)
                _add_stored(archive, weights, saving_lib._VARS_FNAME_H5)
                if self.rng:
                    archive.writestr(RNG_MEMBER, save_tensors(self.rng))
        finally:
            weights.unlink(missing_ok=True)


def _add_stored(archive: Any, source: Path, name: str) -> None:
    """Add a file as a stored member in 16 MiB pieces (``ZipFile.write`` copies 8 KiB at a time)."""
    import zipfile

    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = source.stat().st_size
    with open(source, "rb") as src, archive.open(info, "w", force_zip64=True) as dest:
        while chunk := src.read(16 << 20):
            dest.write(chunk)


_SKIPSET_KINDS = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def _walk(model: Any) -> tuple[list, list[tuple[str, Any]]]:
    """Keras's own state walk (``saving_lib._save_state``) recorded: the entries and, per slot,
    the value Keras would write.

    Keras 3.15's walk means to cache the attribute skip-sets it builds from reference objects
    (a ``Layer()`` per call) but stores them under another key (``saving_attr_skipset_*``) than
    it reads (``saving_attr_skiplist_*``), so every save builds them again: 30 of the walk's 36
    ms a save for the 16-layer benchmark model, on the training thread. The sets are stored
    under the key Keras reads (its global state is per thread, as are these calls)."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    for kind in _SKIPSET_KINDS:
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key, None) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(kind))
    recorder = _RecordingStore()
    with _optimizer_hands_variables(model):
        saving_lib._save_state(model, weights_store=recorder, assets_store=None, inner_path="", visited_saveables=set())
    return recorder.entries, list(recorder.sources.items())


@contextlib.contextmanager
def _optimizer_hands_variables(model: Any) -> Iterator[None]:
    """During the walk, the optimizer hands the recorder its variables, where Keras's own
    ``save_own_variables`` hands ``variable.numpy()`` copies (for Adam, two more copies of the
    weights on the training thread before the snapshot's own copy). Same slots, same values; only
    an optimizer that keeps Keras's base ``save_own_variables`` is shadowed, for the walk alone."""
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or getattr(type(optimizer), "save_own_variables", None) is not BaseOptimizer.save_own_variables:
        yield
        return

    def save_own_variables(store: Any) -> None:
        for i, variable in enumerate(optimizer.variables):
            store[str(i)] = variable

    object.__setattr__(optimizer, "save_own_variables", save_own_variables)  # no tracking of a function
    try:
        yield
    finally:
        object.__delattr__(optimizer, "save_own_variables")


def _host_array(value: Any) -> np.ndarray:
    from modelkeep.capture import _to_numpy

    if hasattr(value, "path") and hasattr(value, "assign"):
        return _to_numpy(value, copy=False)
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def _recording_store_class() -> type:
    from keras.src.saving import saving_lib

    class RecordingStore(saving_lib.H5IOStore):
        """An ``H5IOStore`` that writes nothing: it keeps what Keras's state walk hands it."""

        def __init__(self) -> None:  # no file: saving_lib only calls make and __setitem__
            self.mode = "w"
            self.entries: list[tuple[str, dict | None, list[tuple[str, str]]]] = []
            self.sources: dict[str, Any] = {}

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict | None = None) -> RecordingStore:
            self.entries.append((path, dict(metadata) if metadata else None, []))
            return self

        def __setitem__(self, key: str, value: Any) -> None:
            group, _attrs, items = self.entries[-1]
            slot = f"{len(self.sources)}:{group}/{key}"
            self.sources[slot] = value  # read by the caller (a computed value is read once, here)
            items.append((key, slot))

        def close(self) -> None:
            pass

    return RecordingStore


def _RecordingStore() -> Any:  # noqa: N802 - a class made on first use (Keras imported late)
    return _recording_store_class()()
