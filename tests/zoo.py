"""A zoo of small Keras models with data, for round trips over every format.

Each entry builds a compiled model and its data; ``train`` gives it a few steps so the
optimizer has state worth carrying.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="modelkeep_tests")
class Scale(keras.layers.Layer):
    """A registered custom layer with one trainable weight per feature."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="scale")

    def call(self, inputs):
        return inputs * self.scale


@dataclass
class Case:
    name: str
    build: Callable[[], Any]
    x: Any
    y: Any


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def tutorial() -> Any:
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(128, activation="sigmoid"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def two_in_two_out() -> Any:
    a = keras.Input((8,), name="a")
    b = keras.Input((4,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(6, activation="relu")(a), b])
    out_r = keras.layers.Dense(1, name="reg")(h)
    out_c = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    model = keras.Model([a, b], [out_r, out_c])
    model.compile(optimizer="adam", loss=["mse", "sparse_categorical_crossentropy"], metrics=[["mae"], ["accuracy"]])
    return model


def conv_bn() -> Any:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer="rmsprop", loss="mse")
    return model


def embedding_lstm() -> Any:
    model = keras.Sequential(
        [keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 8), keras.layers.LSTM(5), keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def dropout() -> Any:
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.4), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def custom_layer() -> Any:
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(4), Scale(), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def mixed_float16() -> Any:
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(8, dtype="mixed_float16", activation="relu"),
            keras.layers.Dense(4, dtype="float16"),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def cases() -> list[Case]:
    rng = _rng()
    x10 = rng.random((32, 10), dtype=np.float32)
    y1 = rng.random((32, 1), dtype=np.float32)
    return [
        Case("tutorial", tutorial, x10, (x10.sum(axis=1) > 5).astype(np.float32)),
        Case(
            "two_in_two_out",
            two_in_two_out,
            [rng.random((32, 8), dtype=np.float32), rng.random((32, 4), dtype=np.float32)],
            [y1, rng.integers(0, 3, (32,))],
        ),
        Case("conv_bn", conv_bn, rng.random((32, 8, 8, 3), dtype=np.float32), rng.random((32, 2), dtype=np.float32)),
        Case("embedding_lstm", embedding_lstm, rng.integers(0, 20, (32, 6)).astype(np.int32), y1),
        Case("dropout", dropout, x10, y1),
        Case("custom_layer", custom_layer, x10, y1),
        Case("mixed_float16", mixed_float16, x10, y1),
    ]


def trained(case: Case) -> Any:
    model = case.build()
    model.fit(case.x, case.y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    return model


def predictions(model: Any, x: Any) -> list[np.ndarray]:
    out = model.predict(x, verbose=0, batch_size=64)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


def one_step(model: Any, case: Case) -> list[np.ndarray]:
    """One more optimizer step on the whole data; the variables after it."""
    model.fit(case.x, case.y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    return [np.asarray(v) for v in model.weights]
