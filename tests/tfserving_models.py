"""Our own equivalents of TF Serving's test models, built fresh in a test's tmp_path.

(No tests here.) Each builder writes ``base/<version>/`` (TF Serving's layout) and returns
the base path:

* ``half_plus_two_tf1``: a ``tf.compat.v1`` graph saved with ``SavedModelBuilder``:
  ``y = 0.5x + 2`` with ``serving_default`` (x → y), ``classify_x_to_y``,
  ``regress_x_to_y`` (``tf.Example`` feature ``x``), ``regress_x2_to_y3`` (``y3 = 0.5x2 + 3``);
  ``plus`` changes the 2 (half_plus_three, a second version), ``api_rest_regress`` adds the
  ``tensorflow/serving/regress`` key of TF Serving's half_plus_three;
* ``module_unknown_rank``: ``tf.saved_model.save`` of a ``tf.Module``: ``y = 3 * 2 * x``,
  ``x`` of unknown rank (TF Serving's ``test_tf_saved_model_save``);
* ``module_two_signatures``: ``serving_default`` → 1, ``custom_signature_key`` → 2;
* ``strings``: DT_STRING in, ``y_bytes`` (bytes out) and ``length`` out;
* ``jpeg``: JPEG bytes in, the mean pixel value out (a model that decodes images);
* ``mnist_tf1``: the MNIST export's signature ``predict_images`` (images → scores), TF1;
* ``keras_dict``: a Keras model with dict outputs, saved with ``mk.save_model`` as a SavedModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def half_plus_two_tf1(base: Path, version: str = "00000123", plus: float = 2.0, api_rest_regress: bool = False) -> Path:
    import tensorflow as tf

    v1 = tf.compat.v1
    export = base / version
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(plus, name="b")
        c = v1.Variable(3.0, name="c")
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})
        x = tf.identity(parsed["x"], name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        x2 = v1.placeholder(tf.float32, [None, 1], name="x2")
        y3 = tf.add(tf.multiply(a, x2), c, name="y3")
        sess.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        sig = v1.saved_model.signature_def_utils.build_signature_def
        predict = sig({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")
        classify = sig({"inputs": info(serialized)}, {"scores": info(y)}, "tensorflow/serving/classify")
        regress = sig({"inputs": info(serialized)}, {"outputs": info(y)}, "tensorflow/serving/regress")
        regress2 = sig({"inputs": info(x2)}, {"outputs": info(y3)}, "tensorflow/serving/regress")
        signatures = {"serving_default": predict, "classify_x_to_y": classify, "regress_x_to_y": regress, "regress_x2_to_y3": regress2}
        if api_rest_regress:  # saved_model_half_plus_three's key, as api_rest.md calls it
            signatures["tensorflow/serving/regress"] = regress
        builder = v1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
        builder.save()
    return base


def mnist_tf1(base: Path, weights: np.ndarray, bias: np.ndarray) -> Path:
    """softmax(images @ W + b), signature ``predict_images`` as TF Serving's mnist_saved_model.py."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        images = v1.placeholder(tf.float32, [None, 784], name="x")
        w = v1.Variable(weights.astype(np.float32))
        b = v1.Variable(bias.astype(np.float32))
        scores = tf.nn.softmax(tf.matmul(images, w) + b, name="y")
        sess.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        predict = v1.saved_model.signature_def_utils.build_signature_def(
            {"images": info(images)}, {"scores": info(scores)}, "tensorflow/serving/predict"
        )
        builder = v1.saved_model.Builder(str(base / "1"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"predict_images": predict})
        builder.save()
    return base


def module_unknown_rank(base: Path) -> Path:
    import tensorflow as tf

    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.0)
    root.v2 = tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(root, str(base / "00000123"), root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    return base


def module_two_signatures(base: Path) -> Path:
    import tensorflow as tf

    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0 + 0 * x}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0 + 0 * x}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(root, str(base / "00000123"), signatures={"serving_default": root.f, "custom_signature_key": root.g})
    return base


def strings(base: Path) -> Path:
    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"y_bytes": tf.strings.join([text, b"!"]), "length": tf.strings.length(text)}

    module = Echo()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base


def jpeg(base: Path) -> Path:
    import tensorflow as tf

    class Decode(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            def one(data):
                return tf.reduce_mean(tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32))

            return {"mean": tf.map_fn(one, image_bytes, fn_output_signature=tf.float32)}

    module = Decode()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base


def keras_dict(base: Path):
    """A Keras Functional model with two inputs and dict outputs, via ``mk.save_model`` (SavedModel)."""
    import keras

    import modelkeep as mk

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], {"total": keras.layers.Dense(1, name="total")(joined), "double": keras.layers.Dense(2, name="double")(joined)})
    mk.save_model(model, base / "1")
    return base, model


def jpeg_bytes(seed: int = 0, size: int = 16) -> tuple[bytes, float]:
    """A small JPEG image and the mean of its decoded pixels (as TF decodes it)."""
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    data = tf.io.encode_jpeg(pixels).numpy()
    mean = float(tf.reduce_mean(tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32)).numpy())
    return data, mean


def resnet_float(base: Path):
    """A stand-in for TF Serving's ResNet export: ``input_1`` (images) → ``activation_49`` (1000 scores)."""
    import keras

    import modelkeep as mk

    images = keras.Input((None, None, 3), name="input_1")
    pooled = keras.layers.GlobalAveragePooling2D()(images)
    scores = keras.layers.Dense(1000, activation="softmax", name="activation_49")(pooled)
    model = keras.Model(images, scores)
    mk.save_model(model, base / "1")
    return base, model


def resnet_jpeg(base: Path, kernel: np.ndarray) -> Path:
    """The JPEG-accepting ResNet stand-in: ``input_1`` JPEG bytes (scalar or batch) → ``activation_49``."""
    import tensorflow as tf

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(kernel.astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="input_1")])
        def serve(self, input_1):
            def one(data):
                pixels = tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32) / 255.0
                return tf.reduce_mean(pixels, axis=[0, 1])

            means = tf.map_fn(one, tf.reshape(input_1, [-1]), fn_output_signature=tf.float32)
            return {"activation_49": tf.nn.softmax(tf.matmul(means, self.kernel))}

    module = Classifier()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base


def mnist_like_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images whose label k lights pixel block k, and the (W, b) that read them back: error rate 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    flat = images.reshape(n, 784)
    for i, k in enumerate(labels.tolist()):
        flat[i, k * 78 : (k + 1) * 78] = 255
    weights = np.zeros((784, 10), np.float32)
    for i in range(780):
        weights[i, i // 78] = 1.0
    return images, labels, weights, np.zeros(10, np.float32)


def write_mnist_idx(directory: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The four MNIST idx files (gzip) TF Serving's mnist_input_data reads, from our arrays."""
    import gzip
    import struct

    directory.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


def half_plus_two_tf2(base: Path, version: str = "00000123") -> Path:
    """TF Serving's saved_model_half_plus_two_tf2_cpu, rebuilt: a tf.Module with predict, classify
    and regress signatures (``x`` of shape [1]; ``tf.Example`` inputs of shape [None])."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        def _parse(self, serialized):
            return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
        def predict(self, x):
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            return {"scores": self.a * self._parse(inputs) + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": self.a * self._parse(inputs) + self.b}

    module = HalfPlusTwo()
    signatures = {"serving_default": module.predict, "classify_x_to_y": module.classify, "regress_x_to_y": module.regress}
    tf.saved_model.save(module, str(base / version), signatures=signatures)
    return base


def tf_keras_sequential(base: Path) -> Path:
    """TF Serving's test_sequential_keras_saved_model_save: a tf.keras 2 Sequential (Input ``x``,
    identity Lambda ``y``) written by ``tf.saved_model.save``."""
    import tensorflow as tf
    import tf_keras

    model = tf_keras.models.Sequential()
    model.add(tf_keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(tf_keras.layers.Lambda(lambda x: x, name="y"))
    tf.saved_model.save(model, str(base / "00000123"))
    return base
