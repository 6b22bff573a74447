"""Path -> format, as TensorFlow 2 did it (DESIGN.md table).

| path            | weights            | whole model        |
|-----------------|--------------------|--------------------|
| no extension    | TF checkpoint      | SavedModel dir     |
| .h5, .hdf5      | HDF5 weights       | one HDF5 file      |
| .weights.h5     | Keras 3 weights    | —                  |
| .keras          | —                  | Keras 3 zip        |
| .safetensors    | safetensors        | —                  |

Example::

    weights_format(Path("saved_modelname")).name   # 'TF checkpoint'
    model_format(Path("mysavedmodel.h5")).name     # 'HDF5'
"""

from __future__ import annotations

from pathlib import Path

from modelkeep.errors import CheckpointNotFoundError, FormatError
from modelkeep.formats.base import Format
from modelkeep.formats.hdf5 import HDF5Format
from modelkeep.formats.keras_extra import KerasDirFormat, KerasShardedWeightsFormat, is_keras_dir
from modelkeep.formats.keras_zip import KerasWeightsFormat, KerasZipFormat
from modelkeep.formats.safetensors import SafetensorsFormat
from modelkeep.formats.savedmodel import SavedModelFormat
from modelkeep.formats.tf_checkpoint import INDEX_SUFFIX, TFCheckpointFormat, data_shards

TF_CHECKPOINT = TFCheckpointFormat()
SAVED_MODEL = SavedModelFormat()
HDF5 = HDF5Format()
KERAS_ZIP = KerasZipFormat()
KERAS_WEIGHTS = KerasWeightsFormat()
SAFETENSORS = SafetensorsFormat()
KERAS_DIR = KerasDirFormat()
KERAS_SHARDED = KerasShardedWeightsFormat()

ALL: tuple[Format, ...] = (TF_CHECKPOINT, SAVED_MODEL, HDF5, KERAS_ZIP, KERAS_WEIGHTS, SAFETENSORS, KERAS_DIR, KERAS_SHARDED)

_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras", ".safetensors")
_KNOWN = ".h5 .hdf5 .weights.h5 .keras .safetensors, or no extension"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".weights.h5", ".weights.json"):
        if name.endswith(double):
            return double
    for suffix in (".h5", ".hdf5", ".keras", ".safetensors", INDEX_SUFFIX):
        if name.endswith(suffix):
            return suffix
    if path.suffix.lower().startswith(".data-"):
        return ".data"
    return path.suffix.lower()


def _unknown(path: Path, what: str) -> FormatError:
    keras_words = "Invalid filepath extension for saving" if what.startswith("save") else "File format not supported"
    return FormatError(
        f"{keras_words}: filepath={path}. {what}: cannot tell the format of {path} from its "
        f"extension '{path.suffix}'. Expected one of {_KNOWN}. Received: {path}"
    )


def weights_format(path: Path, what: str = "save_weights") -> Format:
    """The format ``save_weights``/``load_weights`` use for ``path``."""
    suffix = _suffix(path)
    table = {".weights.h5": KERAS_WEIGHTS, ".weights.json": KERAS_SHARDED, ".h5": HDF5, ".hdf5": HDF5,
             ".safetensors": SAFETENSORS}  # fmt: skip
    if suffix in table:
        return table[suffix]
    if suffix == ".keras":
        raise FormatError(
            f"{what}: {path} ends in .keras, which holds a whole model. Use "
            "modelkeep.save_model for .keras, or a weights path (.weights.h5, .h5, "
            ".safetensors, or a bare prefix for a TF checkpoint)."
        )
    if suffix in ("", ".index", ".data") or _looks_like_prefix(path):
        return TF_CHECKPOINT
    raise _unknown(path, what)


def model_format(path: Path, what: str = "save_model") -> Format:
    """The format ``save_model``/``load_model`` use for ``path``."""
    suffix = _suffix(path)
    table = {".keras": KERAS_ZIP, ".h5": HDF5, ".hdf5": HDF5}
    if suffix in table:
        return table[suffix]
    if suffix in (".weights.h5", ".weights.json", ".safetensors"):
        raise FormatError(
            f"{what}: {path} ends in {suffix}, which holds weights only. Use "
            "modelkeep.save_weights for it, or a whole-model path (.keras, .h5, or a "
            "directory name for a SavedModel)."
        )
    if suffix == "" or path.is_dir() or _looks_like_prefix(path):
        return SAVED_MODEL
    raise _unknown(path, what)


def _looks_like_prefix(path: Path) -> bool:
    # "model.v2" or "ckpt-0010": a dotted prefix is still a prefix if its index exists
    return Path(str(path) + INDEX_SUFFIX).exists() or not path.suffix[1:].isalpha()


def strip_tf_suffix(path: Path) -> Path:
    """``x.index`` or ``x.data-00000-of-00001`` -> the prefix ``x``."""
    text = str(path)
    if text.endswith(INDEX_SUFFIX):
        return Path(text[: -len(INDEX_SUFFIX)])
    if ".data-" in path.name:
        return Path(text[: text.rindex(".data-")])
    return path


def detect(path: Path) -> Format:
    """The format of something that exists on disk (for reading, listing and the CLI)."""
    path = strip_tf_suffix(Path(path))
    if not path.exists() and not any(Path(str(path) + s).exists() for s in (INDEX_SUFFIX, ".data-00000-of-00001")):
        prefix = f" (nor a TF checkpoint {path}{INDEX_SUFFIX})" if _suffix(path) not in _SUFFIXES else ""
        raise CheckpointNotFoundError(
            f"{path} does not exist: there is no file or directory of that name{prefix}. "
            f"Check the path and the current directory ({Path.cwd()})."
        )
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return SAVED_MODEL
        if is_keras_dir(path):
            return KERAS_DIR
        raise FormatError(
            f"load: {path} is a directory but not a SavedModel (no saved_model.pb). For a "
            "directory of checkpoints use load_weights(model, directory) or `modelkeep ls`."
        )
    if Path(str(path) + INDEX_SUFFIX).exists() or data_shards(path)[0].exists():
        return TF_CHECKPOINT
    suffix = _suffix(path)
    if suffix == ".h5" and path.exists() and _is_keras3_weights(path):
        return KERAS_WEIGHTS
    if suffix == ".keras" and path.is_file() and _starts_with(path, HDF5_MAGIC):
        return HDF5  # tf.keras <= 2.11 wrote HDF5 under the .keras name: the content decides
    table = {".weights.h5": KERAS_WEIGHTS, ".weights.json": KERAS_SHARDED, ".h5": HDF5, ".hdf5": HDF5, ".keras": KERAS_ZIP,
             ".safetensors": SAFETENSORS}  # fmt: skip
    if suffix in table:
        return table[suffix]
    raise _unknown(path, "load")


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False


def _is_keras3_weights(path: Path) -> bool:
    from modelkeep.errors import ModelkeepError
    from modelkeep.storage.guard import open_hdf5

    try:
        with open_hdf5(path) as f:  # a refused file is reported by the format's own open
            return "layer_names" not in f.attrs and "model_weights" not in f and "layers" in f
    except (OSError, ModelkeepError):
        return False
