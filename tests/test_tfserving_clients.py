"""What TF Serving's example clients do, against ``modelkeep-model-server``, written anew.

* ``mnist_client.py``: ``Predict.future`` with concurrency 4 on signature ``predict_images``,
  input ``images`` of shape ``[1, 784]`` from ``tf.make_tensor_proto``, the label read as
  ``argmax(outputs['scores'].float_val)``: the error rate must be 0 on our MNIST-like data;
* ``resnet_client.py``: REST ``{"instances": <image tensor>}`` (float form) and
  ``{"instances": [{"b64": <jpeg>}]}`` (JPEG form), ``argmax(predictions[0])``;
* ``resnet_client_grpc.py``: ``inputs['input_1']`` from ``tf.make_tensor_proto`` (the float
  image, or the raw JPEG bytes), ``argmax(outputs['activation_49'].float_val)``.

The expected classes come from the same models run in this process.
"""

from __future__ import annotations

import base64
import io
import json
import threading

import grpc
import httpx
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfserving_models import jpeg_bytes


def _stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))


def test_mnist_client_flow(tfs_built):
    images, labels = tfs_built.extras["mnist"]
    flat = images.reshape(len(images), 784).astype(np.float32) / 255.0
    stub, errors, done = _stub(tfs_built), [], threading.Semaphore(0)
    active = threading.BoundedSemaphore(4)

    def callback(label):
        def on_done(future):
            try:
                scores = np.array(future.result().outputs["scores"].float_val)
                errors.append(int(np.argmax(scores) != label))
            except grpc.RpcError as exc:  # counted as an error, as the client does
                errors.append(1)
                print(exc)
            active.release()
            done.release()

        return on_done

    for image, label in zip(flat, labels):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.model_spec.signature_name = "predict_images"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(image, shape=[1, image.size]))
        active.acquire()
        stub.Predict.future(request, 5.0).add_done_callback(callback(int(label)))
    for _ in labels:
        assert done.acquire(timeout=30)
    assert len(errors) == len(labels) and sum(errors) == 0  # "Inference error rate: 0.0%"


def _image():
    from PIL import Image

    data, _ = jpeg_bytes(seed=3, size=24)
    return data, np.array(Image.open(io.BytesIO(data)))


def test_resnet_client_float_rest_and_grpc(tfs_built):
    data, pixels = _image()
    batch = np.expand_dims(pixels / 255.0, 0)
    expected = int(np.argmax(tfs_built.extras["resnet_model"].predict(batch.astype(np.float32), verbose=0)[0]))
    for _ in range(3):
        r = httpx.post(f"{tfs_built.url}/v1/models/resnet:predict", content=json.dumps({"instances": batch.tolist()}))
        r.raise_for_status()
    assert int(np.argmax(r.json()["predictions"][0])) == expected

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "resnet"
    request.model_spec.signature_name = "serving_default"
    request.inputs["input_1"].CopyFrom(tf.make_tensor_proto(batch.astype(np.float32)))
    result = _stub(tfs_built).Predict(request, 10.0).outputs["activation_49"].float_val
    assert len(result) == 1000 and int(np.argmax(result)) == expected


def test_resnet_client_jpeg_rest_b64_and_grpc_bytes(tfs_built):
    data, _ = _image()
    means = (tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32) / 255.0).numpy().mean(axis=(0, 1))
    expected = int(np.argmax(means @ tfs_built.extras["kernel"]))
    body = '{"instances" : [{"b64": "' + base64.b64encode(data).decode("utf-8") + '"}]}'  # the client's own text
    r = httpx.post(f"{tfs_built.url}/v1/models/resnet_jpeg:predict", content=body)
    r.raise_for_status()
    assert int(np.argmax(r.json()["predictions"][0])) == expected

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "resnet_jpeg"
    request.model_spec.signature_name = "serving_default"
    request.inputs["input_1"].CopyFrom(tf.make_tensor_proto(data))  # a scalar DT_STRING, as the client sends it
    result = _stub(tfs_built).Predict(request, 10.0).outputs["activation_49"].float_val
    assert len(result) == 1000 and int(np.argmax(result)) == expected
