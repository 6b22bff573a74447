"""Keras 2 files for the legacy class tests, written (and read) by tf-keras in one subprocess.

    TF_USE_LEGACY_KERAS=1 python tests/legacy/keras2_cases.py OUT

writes, under ``OUT``:

* ``<name>.h5`` + ``<name>.npz`` (input ``x``, tf-keras predictions ``pred``) for every model of
  ``SEMANTICS`` (one entry of ``legacy_semantics`` each) and ``nested_one_element`` (a
  Functional model nested in Sequentials, as Teachable Machine exports it);
* ``textvec/ckpt`` (TextVectorization + Embedding + LSTM checkpoint, legacy RMSprop state);
* ``cudnn.h5`` (CuDNNLSTM + CuDNNGRU) with the predictions of tf-keras's own LSTM/GRU conversion;
* ``tfkeras.keras`` (tf-keras's own ``.keras`` zip) with predictions and Adam variables;
* ``sharded/ckpt`` (a TF checkpoint in several ``.data`` shards);
* ``module/`` (a ``tf.Module`` SavedModel with a serving signature, no Keras part);
* for every ``OUT/handmade/<name>_explicit.h5`` the test wrote before (Keras 2.2-style configs written by
  hand), ``handmade/<name>.npz`` with tf-keras's predictions on ``handmade/<name>.x.npy``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

VOCAB = [f"w{i}" for i in range(40)]


def _x(shape, seed=0, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype("float32")


def semantics(K):
    """name -> (model, input): one Keras 2 meaning each."""
    L = K.layers
    out = {}
    inp = K.Input((6,))
    h = L.Dense(5, activation="hard_sigmoid")(inp)
    out["hard_sigmoid_dense"] = (K.Model(inp, L.Activation("hard_sigmoid")(L.Dense(3)(h))), _x((32, 6)))
    out["hard_sigmoid_lstm"] = (K.Sequential([K.Input((5, 3)), L.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True),
                                              L.GRU(3, recurrent_activation="hard_sigmoid", reset_after=False)]), _x((16, 5, 3)))
    out["gru_reset_before"] = (K.Sequential([K.Input((4, 3)), L.GRU(5, reset_after=False), L.Dense(1)]), _x((16, 4, 3)))
    inp = K.Input((8,))
    branches = [L.LeakyReLU(alpha=0.1)(inp), L.LeakyReLU()(inp), L.ELU(alpha=0.5)(inp),
                L.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.3)(inp), L.ThresholdedReLU(theta=0.4)(inp),
                L.PReLU(alpha_initializer=K.initializers.Constant(0.25))(inp), L.Softmax()(inp)]
    out["advanced_activations"] = (K.Model(inp, L.Concatenate()(branches)), _x((32, 8)))
    inp = K.Input((4, 5))
    out["softmax_axis"] = (K.Model(inp, L.Softmax(axis=1)(inp)), _x((8, 4, 5)))
    names = ["gelu", "selu", "elu", "softplus", "softsign", "swish", "exponential", "tanh", "sigmoid", "relu", "linear", "softmax"]
    inp = K.Input((6,))
    out["activation_names"] = (K.Model(inp, L.Concatenate()([L.Dense(3, activation=n)(inp) for n in names])), _x((16, 6)))
    bn = L.BatchNormalization(axis=1, center=False, epsilon=0.01, momentum=0.9,
                              moving_mean_initializer=K.initializers.Constant(0.3),
                              moving_variance_initializer=K.initializers.Constant(2.0))
    out["batchnorm_options"] = (K.Sequential([K.Input((4, 3)), bn, L.Flatten(), L.Dense(2)]), _x((16, 4, 3)))
    out["embedding_mask_lstm"] = (K.Sequential([K.Input((7,)), L.Embedding(20, 4, mask_zero=True), L.LSTM(3)]),
                                  np.random.default_rng(1).integers(0, 20, (16, 7)).astype("int32") * (np.arange(7) < 5))
    out["masking_timedistributed"] = (K.Sequential([K.Input((6, 3)), L.Masking(mask_value=0.0), L.TimeDistributed(L.Dense(2)),
                                                    L.SimpleRNN(3)]), _x((16, 6, 3)) * (np.arange(6) < 4)[None, :, None])
    a, b = K.Input((4,)), K.Input((4,))
    merged = [L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b]), L.Maximum()([a, b]),
              L.Minimum()([a, b]), L.Dot(axes=1, normalize=True)([a, b])]
    out["merge_layers"] = (K.Model([a, b], L.Concatenate(axis=1)(merged)), [_x((16, 4), 2), _x((16, 4), 3)])
    enc, dec = K.Input((5, 3)), K.Input((6, 2))
    _, h, c = L.LSTM(4, return_state=True)(enc)
    seq = L.LSTM(4, return_sequences=True)(dec, initial_state=[h, c])
    _, g = L.GRU(3, return_state=True)(enc)
    out["rnn_initial_state"] = (K.Model([enc, dec], L.Concatenate()([L.Dense(1)(seq), L.GRU(3, return_sequences=True)(dec, initial_state=g)])),
                                [_x((8, 5, 3), 4), _x((8, 6, 2), 5)])
    a, b = K.Input((4,)), K.Input((4,))
    h = L.Dense(4)(a)
    out["tf_op_arithmetic"] = (K.Model([a, b], L.Concatenate()([h / 255.0, h + b, h * 2.0, h - b, 3.0 * h])),
                               [_x((16, 4), 6), _x((16, 4), 7)])
    out["nested_one_element"] = (nested_one_element(K), _x((4, 16, 16, 3), low=0.0, high=1.0))
    return out


def nested_one_element(K):
    """Teachable Machine's shape: Sequential(Sequential(Functional base, pooling), Sequential(Dense, Dense))."""
    L = K.layers
    inp = K.Input((16, 16, 3))
    h = L.Conv2D(4, 3, strides=2, padding="same", use_bias=False, name="Conv1")(inp)
    h = L.BatchNormalization(name="bn_Conv1")(h)
    h = L.ReLU(6.0, name="Conv1_relu")(h)
    h = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="expanded_conv_depthwise")(h)
    h = L.BatchNormalization(name="expanded_conv_depthwise_BN")(h)
    base = K.Model(inp, L.ReLU(6.0, name="out_relu")(h), name="model3")
    features = K.Sequential([base, L.GlobalAveragePooling2D()], name="sequential_9")
    head = K.Sequential([K.Input((4,)), L.Dense(5, activation="relu"), L.Dense(3, activation="softmax")], name="sequential_11")
    return K.Sequential([K.Input((16, 16, 3)), features, head], name="sequential_12")


def textvec(K):
    vectorize = K.layers.TextVectorization(max_tokens=len(VOCAB) + 2)  # no vocabulary given: adapt state tracked
    vectorize.set_vocabulary(VOCAB)
    model = K.Sequential([K.Input((1,), dtype="string"), vectorize, K.layers.Embedding(len(VOCAB) + 2, 4, mask_zero=True),
                          K.layers.LSTM(3), K.layers.Dense(1, activation="sigmoid")])
    optimizer = K.optimizers.legacy.RMSprop() if K.__version__.startswith("2.") else "rmsprop"
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model


def sharded_model(K):
    model = K.Sequential([K.Input((6,)), K.layers.Dense(16, activation="relu"), K.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    return model


def sentences(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([[" ".join(f"w{w}" for w in rng.integers(0, len(VOCAB) + 5, 6))] for _ in range(n)], dtype=object)


def write(out: Path) -> None:
    import tensorflow as tf
    import tf_keras as K

    K.utils.set_random_seed(0)
    for name, (model, x) in semantics(K).items():
        model.save(str(out / f"{name}.h5"))
        arrays = {f"x{i}": v for i, v in enumerate(x)} if isinstance(x, list) else {"x0": x}
        np.savez(out / f"{name}.npz", pred=model.predict(x, verbose=0), **arrays)
        print("written", name, flush=True)
    model = textvec(K)
    x = sentences()
    model.fit(x, np.ones((8, 1)), epochs=1, verbose=0)
    (out / "textvec").mkdir()
    model.save_weights(str(out / "textvec" / "ckpt"))
    np.savez(out / "textvec.npz", x=x.astype(str), pred=model.predict(x, verbose=0),
             iterations=int(model.optimizer.iterations.numpy()),
             rms=[v.numpy() for v in model.optimizer.variables() if "rms" in v.name][0])

    sharded = sharded_model(K)
    sharded.fit(_x((16, 6)), _x((16, 2)), epochs=1, verbose=0)
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=400)
    sharded.save_weights(str(out / "sharded" / "ckpt"), options=tf.train.CheckpointOptions(experimental_sharding_callback=policy))
    np.savez(out / "sharded.npz", x=_x((8, 6), 5), pred=sharded.predict(_x((8, 6), 5), verbose=0))

    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * self.w + 1.0}

    module = Affine()
    tf.saved_model.save(module, str(out / "module"), signatures={"serving_default": module.serve})
    for path in sorted((out / "handmade").glob("*_explicit.h5")) if (out / "handmade").exists() else []:
        x = np.load(str(path)[: -len(".h5")] + ".x.npy")
        loaded = K.models.load_model(str(path))
        np.savez(str(path)[: -len(".h5")] + ".npz", pred=loaded.predict(x, verbose=0),
                 config=json.dumps(loaded.get_config()))
        print("read", path.name, flush=True)



def write_cudnn(out: Path) -> None:
    """A CuDNNLSTM + CuDNNGRU model (Keras 2's GPU-only layers) and tf-keras's own conversion's predictions."""
    import tensorflow as tf
    import tf_keras as K

    v1 = tf.compat.v1.keras.layers
    model = K.Sequential([K.Input((5, 3)), v1.CuDNNLSTM(4, return_sequences=True), v1.CuDNNGRU(3)])
    rng = np.random.default_rng(9)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.get_weights()])
    model.save(str(out / "cudnn.h5"))
    # what tf-keras computes from that file: its LSTM/GRU with the weights converted on load
    portable = K.Sequential([K.Input((5, 3)), K.layers.LSTM(4, return_sequences=True),
                             K.layers.GRU(3, reset_after=True)])
    portable.load_weights(str(out / "cudnn.h5"))
    x = _x((8, 5, 3), 8)
    np.savez(out / "cudnn.npz", x0=x, pred=portable.predict(x, verbose=0))


def write_keras_zip(out: Path) -> None:
    """A ``.keras`` zip of tf-keras (Keras 2's own v3 format): config, weights and Adam state."""
    import tf_keras as K

    inp = K.Input((5,))
    model = K.Model(inp, K.layers.Dense(2)(K.layers.Dense(6, activation="hard_sigmoid")(inp)))
    model.compile(optimizer=K.optimizers.Adam(learning_rate=0.01), loss="mse")
    model.fit(_x((16, 5)), _x((16, 2)), epochs=1, batch_size=8, verbose=0)
    model.save(str(out / "tfkeras.keras"))
    x = _x((8, 5), 3)
    np.savez(out / "tfkeras_zip.npz", x=x, pred=model.predict(x, verbose=0),
             **{f"opt_{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})


if __name__ == "__main__":
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise SystemExit("run with TF_USE_LEGACY_KERAS=1")
    write(Path(sys.argv[1]))
    write_cudnn(Path(sys.argv[1]))
    write_keras_zip(Path(sys.argv[1]))
