"""SavedModels without a Keras part (``tf.Module`` exports, TF1 graphs): an inference-only Keras model.

Nothing in such a SavedModel says how to rebuild Keras layers, but its serving signature
computes the predictions. ``load_model`` returns an ``InferenceOnlyModel``: a Keras model
whose ``predict``/``__call__`` run the signature (``serving_default`` unless told
otherwise); ``fit`` and ``train_on_batch`` are refused by name, since there are no Keras
weights to train.

Example::

    model = mk.load_model("half_plus_two/00000123")   # a notice says what it is
    model.predict(np.array([1.0, 2.0], "float32"))    # {'y': ...} or the single output
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelkeep.errors import UnsupportedModelError

DEFAULT_SIGNATURE = "serving_default"


def _model_class() -> type:
    import keras
    import tensorflow as tf

    class InferenceOnlyModel(keras.Model):
        """A SavedModel's serving signature as a Keras model: predict works, training does not."""

        def __init__(self, path: Path, signature_name: str = DEFAULT_SIGNATURE, **kwargs: Any) -> None:
            super().__init__(name=kwargs.pop("name", "inference_only_" + _safe(Path(path).name)), **kwargs)
            loaded = tf.saved_model.load(str(path))
            if signature_name not in loaded.signatures:
                raise UnsupportedModelError(
                    f"load_model: the SavedModel {path} has no '{signature_name}' signature (it has "
                    f"{sorted(loaded.signatures)}); no prediction function to wrap."
                )
            # kept out of Keras's attribute tracking: these are TensorFlow objects, not layers
            object.__setattr__(self, "_loaded", loaded)
            object.__setattr__(self, "_signature", loaded.signatures[signature_name])
            object.__setattr__(self, "source", str(path))
            object.__setattr__(self, "signature_name", signature_name)
            _, specs = self._signature.structured_input_signature
            object.__setattr__(self, "input_specs", dict(sorted(specs.items())))
            object.__setattr__(self, "output_names_", sorted(self._signature.structured_outputs))
            object.__setattr__(self, "output_names", list(self.output_names_))  # the signature's, for tools

        def _feed(self, inputs: Any) -> dict[str, Any]:
            names = list(self.input_specs)
            if isinstance(inputs, dict):
                given = inputs
            elif isinstance(inputs, list | tuple) and len(names) > 1:
                given = dict(zip(names, inputs))
            else:
                given = {names[0]: inputs}
            missing = [n for n in names if n not in given]
            if missing:
                raise ValueError(f"{self.source}: the '{self.signature_name}' signature takes inputs {names}; "
                                 f"missing {missing}.")
            return {n: tf.cast(tf.convert_to_tensor(given[n]), self.input_specs[n].dtype) for n in names}

        def call(self, inputs: Any, training: bool = False) -> Any:
            out = self._signature(**self._feed(inputs))
            return out[self.output_names_[0]] if len(self.output_names_) == 1 else dict(out)

        def _batched(self) -> bool:
            return all(spec.shape.rank and spec.shape[0] is None for spec in self.input_specs.values())

        def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", steps: Any = None,
                    callbacks: Any = None) -> Any:
            if self._batched():
                return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)
            # the signature takes a fixed shape (a scalar, one row): one call, no batching
            out = self.call(x)
            return {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else np.asarray(out)

        def _refuse(self, what: str) -> UnsupportedModelError:
            return UnsupportedModelError(
                f"{what}: {self.name} is an inference-only model wrapping the '{self.signature_name}' signature "
                f"of the SavedModel {self.source}, which has no Keras part; it has no Keras weights to train. "
                "Build the model in Keras to train it."
            )

        def fit(self, *args: Any, **kwargs: Any) -> Any:
            raise self._refuse("fit")

        def train_on_batch(self, *args: Any, **kwargs: Any) -> Any:
            raise self._refuse("train_on_batch")

        def get_config(self) -> dict:
            return {"name": self.name, "path": self.source, "signature_name": self.signature_name}

    return InferenceOnlyModel


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "savedmodel"


_CLASS: list[type] = []


def inference_model(path: Path, signature_name: str = DEFAULT_SIGNATURE, *, allow_unsafe_ops: bool = False) -> Any:
    """An ``InferenceOnlyModel`` for a SavedModel without a Keras part, with a one-line notice.

    Its graph is scanned first (protobuf only, nothing runs): file-system, network or Python ops
    are refused by name (``UnsafeFileError``) unless ``allow_unsafe_ops`` (``safe_mode=False``)."""
    from modelkeep.storage.graph_ops import check_saved_model_ops

    check_saved_model_ops(path, allow_unsafe_ops=allow_unsafe_ops)
    if not _CLASS:
        _CLASS.append(_model_class())
    model = _CLASS[0](path, signature_name)
    inputs = ", ".join(f"{n} {spec.dtype.name}{list(spec.shape) if spec.shape.rank is not None else ''}"
                       for n, spec in model.input_specs.items())
    warnings.warn(
        f"load_model: {path} is a SavedModel without a Keras part; returning an inference-only model that runs "
        f"its '{signature_name}' signature ({inputs} -> {', '.join(model.output_names_)}): predict works, fit does not.",
        stacklevel=3,
    )
    return model
