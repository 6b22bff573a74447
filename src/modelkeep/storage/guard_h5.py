"""Guarded opening of HDF5 files and TF checkpoints (part of ``storage.guard``; import from there).

HDF5: before any dataset or attribute value is read, every link of the file is visited with
h5py's low-level ``H5Lvisit`` (which does not follow soft or external links) and every object
reached by hard links is opened by ``H5Oopen`` and checked:

* links: only hard links; soft links (Keras refuses them too), external links and user-defined
  links are refused, so nothing resolves to another file or to a path chosen by the file;
* datasets: no external storage (raw data in other files), no virtual layout (data mapped from
  other files), only the filters of ``limits.h5_filters``, and a declared size either under
  ``h5_bomb_floor`` or within ``max_h5_expansion`` times the bytes it stores; the file's datasets
  together declare at most ``max_h5_total_expansion`` times the file's size;
* attributes: each at most ``max_h5_attr_bytes`` declared.

TF checkpoints: the ``.index`` and ``.data`` files must be regular files in the prefix's own
directory (not symlinks leaving it), and every tensor's declared size must fit in the data
files, checked from the index before a tensor is read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from modelkeep.errors import CheckpointNotFoundError, CorruptCheckpointError, FormatError, UnsafeFileError
from modelkeep.storage import limits

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _refuse(source: Any, check: str, found: str, todo: str = "") -> UnsafeFileError:
    from modelkeep.storage.guard import refuse

    return refuse(source, check, found, todo)


def _declared_bytes(shape: tuple[int, ...] | None, dtype: Any) -> int:
    if not shape:
        return int(getattr(dtype, "itemsize", 8) or 8)
    return math.prod(int(n) for n in shape) * int(getattr(dtype, "itemsize", 8) or 8)


def _check_attrs(objid: Any, where: str, source: Any) -> None:
    from h5py import h5a, h5o

    cap = limits.current().max_h5_attr_bytes
    if h5o.get_info(objid).num_attrs == 0:
        return
    names: list[bytes] = []
    h5a.iterate(objid, lambda name, *_: names.append(name))
    for name in names:
        attr = h5a.open(objid, name)
        declared = _declared_bytes(attr.shape, attr.dtype)
        if declared > cap:
            raise _refuse(source, "hdf5-attribute-size", f"attribute {name.decode(errors='replace')!r} of {where} declares "
                          f"{declared} bytes, over the cap of {cap}")


def _check_dataset(dsid: Any, where: str, source: Any) -> int:
    from h5py import h5d

    caps = limits.current()
    plist = dsid.get_create_plist()
    if plist.get_external_count() > 0:
        files = [plist.get_external(i)[0].decode(errors="replace") for i in range(plist.get_external_count())]
        raise _refuse(source, "hdf5-external-storage", f"dataset {where!r} keeps its data in other files {files[:3]}",
                      "modelkeep reads nothing outside the file it was given.")
    if plist.get_layout() == h5d.VIRTUAL:
        raise _refuse(source, "hdf5-virtual-dataset", f"dataset {where!r} is a virtual dataset (its data is mapped from other files)",
                      "modelkeep reads nothing outside the file it was given.")
    for i in range(plist.get_nfilters()):
        code, _flags, _values, fname = plist.get_filter(i)
        if code not in caps.h5_filters:
            raise _refuse(source, "hdf5-filter", f"dataset {where!r} uses HDF5 filter {code} ({fname.decode(errors='replace')}), "
                          f"not one of {sorted(caps.h5_filters)}")
    declared = _declared_bytes(dsid.shape, dsid.dtype)
    stored = dsid.get_storage_size()
    if declared > caps.h5_bomb_floor and declared > caps.max_h5_expansion * stored:
        raise _refuse(source, "hdf5-size-bomb", f"dataset {where!r} declares shape {tuple(dsid.shape)} ({declared} bytes) "
                      f"but stores {stored} bytes")
    return declared


def check_hdf5_structure(file: Any, *, source: Any, size: int | None = None) -> int:
    """Walk an HDF5 file (a path, a file object or an open ``h5py.File``) without reading data;
    raise ``UnsafeFileError`` at the first link kind, layout or size this module refuses.

    Returns the number of datasets. Example: ``check_hdf5_structure(Path("w.h5"), source="w.h5")``.
    """
    import h5py

    if isinstance(file, h5py.File):
        return _walk(file, source, size)
    with _h5_file(file, source) as handle:
        return _walk(handle, source, size)


def _walk(handle: Any, source: Any, size: int | None) -> int:
    from h5py import h5l, h5o

    caps = limits.current()
    if size is None:
        try:
            size = handle.id.get_filesize()
        except Exception:  # noqa: BLE001 - a file object without a size: use the floor only
            size = 0
    links: list[tuple[bytes, int]] = []

    def visit(name: bytes, info: Any) -> None:
        links.append((name, info.type))
        if len(links) > caps.max_h5_objects:
            return 1  # type: ignore[return-value]  # stops H5Lvisit
        return None

    handle.id.links.visit(visit, info=True)
    if len(links) > caps.max_h5_objects:
        raise _refuse(source, "hdf5-objects", f"it holds more than {caps.max_h5_objects} objects")
    kinds = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}
    for name, kind in links:
        if kind != h5l.TYPE_HARD:
            where = name.decode(errors="replace")
            target = ""
            try:
                target = f" to {handle.id.links.get_val(name)!r}"
            except Exception:  # noqa: BLE001 - a user-defined link has no value h5py can show
                pass
            raise _refuse(source, "hdf5-link", f"{where!r} is an {kinds.get(kind, f'user-defined link (type {kind})')}{target}",
                          "modelkeep (like Keras) follows only hard links inside the file.")
    _check_attrs(handle.id, "/", source)
    total, datasets = 0, 0
    for name, _ in links:
        objid = h5o.open(handle.id, name)
        where = "/" + name.decode(errors="replace")
        _check_attrs(objid, where, source)
        if h5o.get_info(objid).type == h5o.TYPE_DATASET:
            total += _check_dataset(objid, where, source)
            datasets += 1
    allowed = caps.h5_bomb_floor + caps.max_h5_total_expansion * size
    if total > allowed:
        raise _refuse(source, "hdf5-size-bomb", f"its datasets declare {total} bytes together, more than "
                      f"{caps.max_h5_total_expansion} times the file's {size} bytes")
    return datasets


def _h5_file(file: Any, source: Any) -> Any:
    import h5py

    try:
        return h5py.File(file, "r")
    except (OSError, ValueError) as exc:
        magic = b""
        if isinstance(file, (str, os.PathLike)):
            try:
                with open(file, "rb") as handle:
                    magic = handle.read(8)
            except FileNotFoundError:
                raise CheckpointNotFoundError(f"load: no file at {file}.") from exc
            except OSError:
                pass
            if magic != HDF5_MAGIC:
                raise FormatError(
                    f"load: {source} has an HDF5 extension but is not an HDF5 file (it starts with {magic!r}). "
                    "Rename it to its real format's extension."
                ) from exc
        raise CorruptCheckpointError(f"load: the HDF5 file {source} cannot be opened ({exc}); it is truncated or corrupt.") from exc


def open_hdf5(file: Any, *, source: Any = None) -> Any:
    """An ``h5py.File`` opened read-only after ``check_hdf5_structure`` passed; close it (``with``).

    ``file`` is a path or a seekable binary file object. A path must be a regular file.
    Example: ``with open_hdf5(Path("model.h5")) as f: f.attrs["model_config"]``.
    """
    source = source if source is not None else file
    if isinstance(file, (str, os.PathLike)):
        from modelkeep.storage.guard import regular_file

        if not os.path.exists(file):
            raise CheckpointNotFoundError(f"load: no file at {file}.")
        regular_file(Path(file), source=source, what="HDF5 file")
    handle = _h5_file(file, source)
    try:
        _walk(handle, source, None)
    except BaseException:
        handle.close()
        raise
    return handle


# ----------------------------------------------------------------------- TF checkpoints
_STRING = 7  # DT_STRING


def open_tf_checkpoint(prefix: Path | str, *, source: Any = None) -> Any:
    """``tf.train.load_checkpoint(prefix)`` after the files and the declared sizes were checked.

    Raises ``UnsafeFileError`` when ``.index``/``.data`` leave the prefix's directory or are not
    regular files, or a tensor declares more bytes than the data files hold;
    ``CorruptCheckpointError`` when TensorFlow cannot parse the index.
    """
    import tensorflow as tf

    from modelkeep.storage.guard import inside, regular_file

    prefix = Path(prefix)
    source = source if source is not None else prefix
    if prefix.is_dir():  # TensorFlow would follow the directory's `checkpoint` state file
        raise FormatError(f"load: {source} is a directory, not a TF checkpoint prefix.")
    directory = prefix.parent
    index = Path(str(prefix) + ".index")
    data_files = sorted(directory.glob(prefix.name + ".data-*")) if directory.is_dir() else []
    for path in [index, *data_files]:
        if not path.exists():
            continue
        if path.is_symlink() and not inside(directory, path):
            raise _refuse(source, "path-containment", f"{path.name} is a symlink to {os.readlink(path)!r}, outside {directory}",
                          "Replace the symlink with the file itself.")
        regular_file(path, source=source, what="checkpoint file")
    data_bytes = sum(p.stat().st_size for p in data_files)
    if index.exists() and data_files:
        from modelkeep.formats.tf_bundle_reader import open_bundle

        open_bundle(prefix)  # every index block and entry parsed first: TensorFlow aborts the process on some
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpointError(
            f"load: the TF checkpoint {source} cannot be read ({text}). Its .index or .data file is truncated or "
            "corrupt; use another checkpoint."
        ) from exc
    caps = limits.current()
    if len(shapes) > caps.max_tf_tensors:
        raise _refuse(source, "tf-tensors", f"its index lists {len(shapes)} tensors, over the cap of {caps.max_tf_tensors}")
    total = 0
    for key, shape in shapes.items():
        count = math.prod(int(n) for n in shape) if shape else 1
        itemsize = _itemsize(dtypes.get(key))
        declared = count * itemsize
        total += declared
        # two keys may share one tensor's bytes (a SavedModel names each variable twice, as the
        # Keras variable and its tf.Variable; modelkeep's bundle writer stores them once): up to 2x
        if declared > data_bytes or total > 2 * data_bytes + len(shapes):
            raise _refuse(source, "tf-size-bomb", f"tensor {key!r} declares shape {list(shape)} ({declared} bytes) but the "
                          f"data files hold {data_bytes} bytes in all")
    return reader


def _itemsize(dtype: Any) -> int:
    """Bytes per element in the data file (strings: at least their 1-byte length)."""
    if dtype is None or dtype.as_datatype_enum == _STRING:
        return 1
    try:
        return max(int(dtype.size), 1)
    except (TypeError, ValueError, AttributeError):
        return 1
