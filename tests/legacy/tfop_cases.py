"""tf-keras Functional models whose ``tf.*`` calls and operators tf.keras records as ``TFOpLambda``.

    TF_USE_LEGACY_KERAS=1 python tests/legacy/tfop_cases.py OUT

writes, for every family of ``FAMILIES`` (one per group of ``legacy_tfops``' table),
``OUT/<family>.h5`` and ``OUT/<family>.keras`` (tf-keras's zip; not for ``ellipsis``, which
tf-keras cannot write as one) and ``OUT/<family>.npz`` (inputs ``x0``, ``x1``, ... and tf-keras's
outputs ``out0``, ``out1``, ...), ``OUT/<family>_savedmodel/`` (tf-keras's SavedModel) for
``shapes`` and ``ellipsis``; and ``OUT/unknown.h5`` (a call modelkeep
does not translate: ``tf.linalg.band_part``) and ``OUT/unknown_argument.h5`` (one it translates,
with an argument value it cannot carry: ``tf.math.cumsum(exclusive=True)``) and
``OUT/unknown_rank.h5`` (``tf.squeeze`` without an axis: a rank known only at run time).

    TF_USE_LEGACY_KERAS=1 python tests/legacy/tfop_cases.py OUT graph

writes ``OUT/raw_ops.h5`` + ``.npz`` in graph mode, where tf-keras records each raw graph op
(``RealDiv``, ``StridedSlice``, ...) as a ``TensorFlowOpLayer``, as TF 2.0-2.3 did, and
``OUT/raw_unknown.h5`` (``MatrixBandPart``, not translated).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _x(shape, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype("float32")


def families(tf, K):
    """name -> (inputs, outputs, input arrays)."""
    out = {}
    a, b = K.Input((4, 6)), K.Input((4, 6))
    h = K.layers.Dense(6, name="dense")(a)
    outs = [tf.reshape(h, (-1, 24)), tf.reshape(h, [tf.shape(h)[0], 2, -1]), tf.concat([h, b], axis=-1),
            tf.concat([h, b, a], 1), tf.concat([h], axis=-1), tf.stack([h]), tf.stack([h, b], axis=1), tf.expand_dims(h, 1), tf.compat.v1.expand_dims(h, dim=-1),
            tf.squeeze(tf.expand_dims(h, 2), axis=2), tf.compat.v1.squeeze(h[:, :1], squeeze_dims=[1]),
            tf.transpose(h, perm=[0, 2, 1]), tf.transpose(h), tf.tile(h, [1, 2, 1]),
            tf.pad(h, [[0, 0], [1, 0], [0, 2]]), tf.pad(h, [[0, 0], [1, 1], [2, 0]], mode="REFLECT"),
            tf.pad(h, [[0, 0], [0, 1], [1, 1]], mode="SYMMETRIC"), tf.pad(h, [[0, 0], [0, 1], [0, 0]], constant_values=1.5),
            *tf.split(h, 2, axis=-1), *tf.split(h, [1, -1, 2], axis=1), tf.gather(h, [0, 2], axis=1), tf.gather(h, [2, 0]),
            tf.compat.v1.gather(h, [1, 1], axis=-1), h[:, 1:-1, ::2], h[:, -1], h[:, ::-1, 1:5:2],
            h[1:], h[:, tf.newaxis], h[:, : tf.shape(h)[1] - 1]]
    out["shapes"] = ([a, b], outs, [_x((3, 4, 6), 1), _x((3, 4, 6), 2)])
    a = K.Input((4, 6))
    h = K.layers.Dense(6, name="dense")(a)
    out["ellipsis"] = ([a], [h[..., None, 0], h[..., 1:], h[0, ..., -2]], [_x((3, 4, 6), 8)])  # no .keras: tf-keras cannot write it
    a = K.Input((5,))
    h = K.layers.Dense(5, name="dense")(a)
    pos = tf.abs(h) + 0.5
    outs = [tf.abs(h), tf.math.exp(h), tf.math.log(pos), tf.sqrt(pos), tf.square(h), tf.sigmoid(h), tf.nn.sigmoid(h),
            tf.tanh(h), tf.math.negative(h), -h, tf.math.reciprocal(pos), tf.math.rsqrt(pos), tf.math.log1p(pos),
            tf.math.expm1(h), tf.sin(h), tf.cos(h), tf.floor(h), tf.math.ceil(h), tf.round(h * 2.0), tf.sign(h),
            tf.math.softplus(h), tf.nn.softplus(h), tf.math.erf(h), abs(h), tf.math.softsign(h), tf.math.log_sigmoid(h),
            tf.math.logical_not(h > 0.0)]
    out["math_unary"] = ([a], outs, [_x((8, 5), 3)])
    a = K.Input((3, 4))
    h = K.layers.Dense(4, name="dense")(a)
    outs = [tf.reduce_sum(h, 2), tf.math.reduce_mean(h, axis=1, keepdims=True), tf.reduce_max(h, axis=[1, 2]),
            h - tf.reduce_min(h), tf.reduce_prod(h, axis=-1, keepdims=True), tf.compat.v1.reduce_sum(h, reduction_indices=1, keep_dims=True),
            tf.compat.v1.reduce_max(h, axis=1), tf.reduce_any(h > 1.0, axis=1), tf.reduce_all(h > -1.0, axis=-1),
            tf.argmax(h), tf.argmin(h, axis=-1, output_type=tf.int32), tf.math.cumsum(h, axis=1),
            tf.reduce_sum(tf.cast(h > 0.0, "int8"), axis=1)]
    out["reductions"] = ([a], outs, [_x((6, 3, 4), 4)])
    a, b = K.Input((3, 4)), K.Input((3, 4))
    h = K.layers.Dense(4, name="dense")(a)
    outs = [tf.matmul(h, b, transpose_b=True), tf.linalg.matmul(h, b, transpose_a=True), tf.matmul(h, b, adjoint_b=True),
            h @ tf.transpose(b, [0, 2, 1]), tf.nn.relu(h), tf.nn.relu6(h * 4.0), tf.nn.softmax(h), tf.nn.softmax(h, axis=1),
            tf.nn.log_softmax(h), tf.math.l2_normalize(h, axis=-1), tf.nn.l2_normalize(h, axis=[1, 2]),
            tf.math.l2_normalize(h), tf.clip_by_value(h, -0.5, 0.5), tf.maximum(h, b), tf.minimum(h, 0.25),
            tf.where(h > 0, h, b), tf.where(h > b, 1.0, h), tf.nn.elu(h), tf.nn.selu(h), tf.nn.gelu(h),
            tf.nn.gelu(h, approximate=True), tf.nn.leaky_relu(h), tf.nn.leaky_relu(h, alpha=0.05), tf.nn.silu(h),
            tf.nn.swish(h), tf.math.add_n([h, b, a]), tf.math.squared_difference(h, b)]
    out["nn_linalg"] = ([a, b], outs, [_x((5, 3, 4), 5), _x((5, 3, 4), 6)])
    a = K.Input((4,))
    h = K.layers.Dense(4, name="dense")(a)
    ints = tf.cast(h * 3.0, "int32")
    img = tf.reshape(tf.tile(h, [1, 4]), [-1, 4, 4, 1])
    outs = [tf.cast(h, "int32"), tf.cast(h, tf.float16), ints / 2, tf.cast(ints, "int16") / 3, ints // 2, ints % 3,
            h // 0.5, h % 0.75, h ** 2, 2.0 ** h, h / 255.0, 3.0 * h, 1.0 - h, h + a, h * a, h - a, h / (tf.abs(a) + 1.0),
            tf.math.greater_equal(h, a), h < a, tf.equal(ints, 1), tf.math.not_equal(ints, 0),
            tf.logical_and(h > 0.0, a > 0.0), tf.shape(h), tf.compat.v1.shape(img, out_type=tf.int64),
            tf.one_hot(tf.abs(ints) % 4, 4), tf.one_hot(tf.abs(ints), 3, on_value=2.0, off_value=-1.0, axis=1),
            tf.image.resize(img, (6, 6)), tf.image.resize(img, [8, 3], method="nearest"),
            tf.image.resize(img, (3, 3), method="bicubic"), tf.image.resize(img, (2, 2), method="area"),
            tf.compat.v1.div(ints, 2), tf.math.pow(h, 3), tf.cast(h > 0, "float32") * h]
    out["dtypes_dynamic"] = ([a], outs, [_x((7, 4), 7)])
    a = K.Input((3, 4))
    h = K.layers.Dense(4, name="dense")(a)
    small = tf.tanh(h) * 0.9
    outs = [tf.math.atan(h), tf.math.asin(small), tf.math.acos(small), tf.math.sinh(h), tf.math.cosh(h), tf.math.asinh(h),
            tf.math.acosh(tf.abs(h) + 1.0), tf.math.atanh(small), tf.math.rint(h * 2.0), tf.math.atan2(h, a),
            tf.math.divide_no_nan(h, tf.nn.relu(a)), tf.math.reduce_logsumexp(h, axis=-1), tf.math.reduce_variance(h, axis=1),
            tf.math.reduce_std(h, axis=[1, 2], keepdims=True), tf.math.reduce_euclidean_norm(h, axis=2), tf.norm(h, axis=-1),
            tf.norm(h) + 0.0 * h, tf.math.cumprod(h, axis=2), tf.zeros_like(h), tf.ones_like(h, dtype="int32"),
            *tf.unstack(h, axis=1), tf.reverse(h, axis=[1]), tf.broadcast_to(h[:, :1], [tf.shape(h)[0], 3, 4]),
            tf.repeat(h, 2, axis=1), tf.sort(h, axis=-1), tf.sort(h, direction="DESCENDING", axis=1),
            tf.nn.bias_add(h, [0.5, -1.0, 2.0, 0.0])]
    out["more"] = ([a], outs, [_x((5, 3, 4), 9)])
    return out


def raw_ops(tf, K):
    """In graph mode tf-keras records raw graph ops as ``TensorFlowOpLayer``s, as TF 2.0-2.3 did."""
    a, b = K.Input((4, 6)), K.Input((4, 6))
    h = K.layers.Dense(6, name="dense")(a)
    outs = [h / 255.0, h + b, 2.0 * h - 1.0, tf.reshape(h, (-1, 24)), tf.concat([h, b], axis=-1), h[:, 1:-1, ::2],
            h[..., None, 0], h[:, -1], tf.reduce_mean(h, axis=1, keepdims=True), tf.reduce_sum(h, [1, 2]),
            tf.matmul(h, b, transpose_b=True), tf.nn.relu(h), tf.math.l2_normalize(h, axis=-1), tf.transpose(h, [0, 2, 1]),
            tf.expand_dims(h, 1), tf.squeeze(h[:, :1], [1]), tf.cast(h, "int32"), tf.stack([h, b], 1), tf.nn.softmax(h),
            *tf.split(h, 2, axis=-1), tf.gather(h, [0, 2], axis=1), tf.tile(h, [1, 2, 1]), tf.pad(h, [[0, 0], [1, 0], [0, 2]]),
            tf.where(h > 0, h, b), tf.clip_by_value(h, -0.5, 0.5), tf.maximum(h, b), tf.sigmoid(h), tf.exp(h),
            tf.argmax(h, axis=-1), tf.one_hot(tf.cast(tf.abs(h), "int32"), 3), tf.shape(h), tf.nn.relu6(h * 3.0),
            tf.math.squared_difference(h, b), tf.abs(h), tf.sqrt(tf.abs(h)), -h, h // 0.5]
    return [a, b], outs, [_x((3, 4, 6), 10), _x((3, 4, 6), 11)]


def write_graph_mode(out: Path) -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import tf_keras as K

    inputs, outputs, xs = raw_ops(tf, K)
    model = K.Model(inputs, outputs, name="raw_ops")
    assert any(type(layer).__name__ == "TensorFlowOpLayer" for layer in model.layers)
    model.save(out / "raw_ops.h5")
    preds = model.predict(xs)
    np.savez(out / "raw_ops.npz", **{f"x{i}": x for i, x in enumerate(xs)},
             **{f"out{i}": np.asarray(p) for i, p in enumerate(preds)})
    a = K.Input((3, 3))
    K.Model(a, tf.linalg.band_part(a, 0, -1)).save(out / "raw_unknown.h5")


def write(out: Path) -> None:
    import tensorflow as tf
    import tf_keras as K

    for name, (inputs, outputs, xs) in families(tf, K).items():
        model = K.Model(inputs, outputs, name=name)
        model.save(out / f"{name}.h5")
        if name != "ellipsis":
            model.save(out / f"{name}.keras")
        if name in ("shapes", "ellipsis"):
            model.save(out / f"{name}_savedmodel", save_format="tf")
        preds = model.predict(xs, verbose=0)
        arrays = {f"x{i}": x for i, x in enumerate(xs)}
        arrays.update({f"out{i}": np.asarray(p) for i, p in enumerate(preds)})
        np.savez(out / f"{name}.npz", **arrays)
    a = K.Input((3, 3))
    K.Model(a, tf.linalg.band_part(a, 0, -1)).save(out / "unknown.h5")
    K.Model(a, tf.math.cumsum(a, axis=1, exclusive=True)).save(out / "unknown_argument.h5")
    K.Model(a, tf.squeeze(a[:, :1, :1])).save(out / "unknown_rank.h5")


if __name__ == "__main__":
    (write_graph_mode if sys.argv[2:] == ["graph"] else write)(Path(sys.argv[1]))
