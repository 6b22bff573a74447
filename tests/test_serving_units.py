"""In-process checks of the serving parts: fast paths against ``model.predict``, the
micro-batcher, and a base directory of exported (Keras-less) SavedModels."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modelkeep.serving.batching import MicroBatcher
from modelkeep.serving.metrics import Metrics
from modelkeep.serving.predictor import Predictor, RequestError
from modelkeep.serving.versions import ModelSource
from modelkeep.serving.watcher import Policy, VersionManager


def _dense_stack(activations, use_bias=True):
    import keras

    layers = [keras.Input((6,))]
    layers += [keras.layers.Dense(5, activation=a, use_bias=use_bias) for a in activations]
    return keras.Sequential(layers)


@pytest.mark.parametrize(
    "activations,use_bias",
    [(["sigmoid", None], True), (["relu", "tanh", "softmax"], True), (["linear"], False)],
)
def test_numpy_path_matches_model_predict(activations, use_bias):
    model = _dense_stack(activations, use_bias)
    predictor = Predictor.from_model(model)
    assert predictor.path == "numpy"
    x = np.random.default_rng(0).normal(size=(17, 6)).astype(np.float32) * 3
    (got,) = predictor.run([x])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_other_models_take_the_tf_function_path():
    import keras

    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dropout(0.5), keras.layers.Dense(2)]
    )
    predictor = Predictor.from_model(model)
    assert predictor.path == "tf.function"
    for rows in (1, 3, 40):  # one trace serves every batch size
        x = np.random.default_rng(rows).random((rows, 6), dtype=np.float32)
        np.testing.assert_allclose(predictor.run([x])[0], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_exported_savedmodel_base_dir_is_served_by_its_signature(tmp_path):
    from modelkeep.demo import tutorial_model

    model = tutorial_model()
    model.export(str(tmp_path / "m" / "3"), verbose=False)

    async def scenario():
        manager = VersionManager("m", ModelSource.detect(tmp_path / "m"), Policy.parse("latest"), Metrics())
        await manager.poll_once()
        try:
            entry = manager.resolve(None)
            x = np.random.default_rng(1).random((4, 10), dtype=np.float32)
            arrays = entry.predictor.check_inputs({entry.predictor.input_names[0]: x.tolist()})
            (out,) = await entry.batcher.submit(arrays)
            return entry, x, out
        finally:
            await manager.close()

    entry, x, out = asyncio.run(scenario())
    assert (entry.version, entry.predictor.path) == (3, "signature")
    assert entry.predictor.output_names == ["output_0"]
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def _batches(submits, **kwargs):
    calls = []

    def run(arrays):
        calls.append(len(arrays[0]))
        if np.any(arrays[0] < 0):
            raise ValueError("negative")
        return [arrays[0] * 2]

    async def scenario():
        batcher = MicroBatcher(run, inline=True, **kwargs)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([np.array(s, np.float32)]) for s in submits), return_exceptions=True)
        await batcher.close()
        return results

    return calls, asyncio.run(scenario())


def test_batcher_shares_passes_and_gives_each_caller_its_rows():
    submits = [[[1.0]], [[2.0], [3.0]], [[4.0]]]
    calls, results = _batches(submits, max_batch_size=64, timeout_s=0.05)
    assert calls == [4]
    for sent, (got,) in zip(submits, results):
        np.testing.assert_array_equal(got, np.array(sent, np.float32) * 2)


def test_batcher_respects_max_batch_size_and_isolates_errors():
    calls, _ = _batches([[[float(i)]] for i in range(5)], max_batch_size=2, timeout_s=0.0)
    assert calls == [2, 2, 1]
    calls, results = _batches([[[1.0]], [[-1.0]]], max_batch_size=1, timeout_s=0.0)
    assert calls == [1, 1]
    np.testing.assert_array_equal(results[0][0], [[2.0]])
    assert isinstance(results[1], ValueError)


def test_check_inputs_messages_name_expected_and_received():
    predictor = Predictor.from_model(_dense_stack(["relu"]))
    name = predictor.input_names[0]
    with pytest.raises(RequestError, match=r"expected shape float\[\?, 6\], got \[2, 5\]"):
        predictor.check_inputs({name: np.zeros((2, 5))})
    with pytest.raises(RequestError, match="ragged"):
        predictor.check_inputs({name: [[0.0] * 6, [0.0] * 5]})
    with pytest.raises(RequestError, match="unknown input name"):
        predictor.check_inputs({"other": [[0.0] * 6]})
    ok = predictor.check_inputs({name: [[1, 2, 3, 4, 5, 6]]}, allow_non_finite=False)
    assert ok[0].dtype == np.float32 and ok[0].shape == (1, 6)
    assert predictor.check_inputs({name: [[np.nan] * 6]}, allow_non_finite=True)[0].shape == (1, 6)


def test_dict_inputs_and_outputs_are_fed_and_read_by_name():
    import keras

    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    x = keras.layers.Concatenate()([a, b])
    model = keras.Model({"a": a, "b": b}, {"y": keras.layers.Dense(2, name="y")(x), "z": keras.layers.Dense(1, name="z")(x)})
    predictor = Predictor.from_model(model)
    assert (predictor.input_names, predictor.output_names) == (["a", "b"], ["y", "z"])
    rng = np.random.default_rng(2)
    feed = {"a": rng.random((4, 3), dtype=np.float32), "b": rng.random((4, 2), dtype=np.float32)}
    got = predictor.run(predictor.check_inputs(feed))
    expected = model.predict(feed, verbose=0)
    for name, value in zip(predictor.output_names, got):
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)


def test_batcher_under_waves_of_requests_answers_everyone_and_keeps_its_worker():
    seen = []

    def run(arrays):
        seen.append(len(arrays[0]))
        return [arrays[0] + 1]

    async def scenario():
        batcher = MicroBatcher(run, inline=True, max_batch_size=8, timeout_s=0.0)
        batcher.start()

        async def one(i):
            await asyncio.sleep((i % 7) * 1e-4)
            return await batcher.submit([np.array([[float(i)]], np.float32)])

        results = await asyncio.gather(*(one(i) for i in range(300)))
        alive = not batcher._task.done()
        await batcher.close()
        return results, alive

    results, alive = asyncio.run(scenario())
    assert alive  # the worker survived leaders taking its work
    assert [float(r[0][0, 0]) for r in results] == [i + 1.0 for i in range(300)]
    assert sum(seen) == 300 and max(seen) <= 8 and len(seen) < 300
