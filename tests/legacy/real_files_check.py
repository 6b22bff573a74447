"""Measure modelkeep against tf-keras 2.21 on the real TF2-era files of ``<repo>/../shared/real_files``.

For every case of ``SOURCES.md`` (a file, or a weights file with the architecture its
repository builds) one tf-keras subprocess (``TF_USE_LEGACY_KERAS=1``) loads it as a user
would, makes a synthetic input from the model's input spec and predicts; then modelkeep
loads the same case (``mk.load_model``, or ``mk.load_weights`` into the architecture built
in Keras 3) and predicts on the same input. It prints one row per case::

    python -m tests.legacy.real_files_check            # from the repository root
    python tests/legacy/real_files_check.py [ROOT]     # ROOT: the real_files folder

Columns: case, tf-keras loaded, modelkeep loaded (or what it refused), max abs difference
of the predictions, optimizer state (iterations in the file / restored by modelkeep).
Nothing here is committed data: the files stay in ``../shared``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO.parent / "shared" / "real_files"
BATCH = 4
TIME_STEPS = 6
HOTEL_VOCAB = 15050  # + "" and "[UNK]": Embedding(15052, 16)


@dataclass(frozen=True)
class Case:
    """One case: ``file`` under ``files/``; ``arch`` for weights-only files and checkpoints."""

    name: str
    file: str
    kind: str  # "model" (load_model), "weights" (load_weights into arch), "module" (tf.Module SavedModel)
    arch: tuple[str, str] | None = None  # ("json", file) | ("model", file) | ("builder", name)
    refuse: str | None = None  # the class modelkeep must name when it refuses (cannot be carried)
    notes: dict = field(default_factory=dict)


F = "files/"
CASES = [
    Case("k2.0.5-fer2013-mini-xception", "oarriaga_face_classification/fer2013_mini_XCEPTION.102-0.66.hdf5", "model"),
    Case("k2.0.2-behavioral-cloning", "AryanJ-NYC_CarND-Behavioral-Cloning-P3/model.h5", "model", refuse="Lambda"),
    Case("k2.1.5-clinton-trump-lstm", "Aspie96_ClintonOrTrump/model.h5", "model"),
    Case("k2.2.2-btc-lstm", "ChrisRusu1_Bitcoin_Prediction/16082020-165205-e2.h5", "model"),
    Case("k2.2.4-mnist-cnn", "C3NZ_mnist-nn/mnist.h5", "model"),
    Case("k2.3.1-stock-lstm", "AlexanderBurkhart_lstm_stock_pred/model.h5", "model"),
    Case("k2.3.1-chatbot-dense", "3liud_python-chatbot/chatbot_model.h5", "model"),
    Case("tf2.4-teachable-machine", "0N1cky1_teachable-machine/keras_model.h5", "model"),
    Case("tf2.5-mnist-dense", "Exusai_NN_API_Example/mnist.h5", "model"),
    Case("tf2.8-chatbot-dense", "22ridley_COVIDChatBot/chatbot_model.h5", "model"),
    Case("tf2.9-charity-dense", "neginkanani_Deep-leaning-challenge/AlphabetSoupCharity.h5", "model"),
    Case("tf2.10-imdb-embedding", "sebastianmoiras_Movie-Review-Sentiment/sentiment_model.h5", "model"),
    Case("tf2.12-stock-lstm", "0xRajvardhan_StockPredictionLSTM/keras_model.h5", "model"),
    Case("tf2.13-hgq-custom-layer", "fastmachinelearning_example-models/hgq_jet_classifier.h5", "model", refuse="FixedPointQuantizer"),
    Case("k2.0.0-hls4ml-3layer-weights", "fastmachinelearning_example-models/KERAS_3layer_weights.h5", "weights",
         ("json", "fastmachinelearning_example-models/KERAS_3layer.json")),
    Case("k2.0.6-hls4ml-jettagger-weights", "fastmachinelearning_example-models/jetTagger_Conv2D_Small_weights.h5", "weights",
         ("json", "fastmachinelearning_example-models/jetTagger_Conv2D_Small.json")),
    Case("k2.2.2-twitter-lstm-weights", "Aeryes_Twitter_Sentiment_LSTM/model.h5", "weights",
         ("json", "Aeryes_Twitter_Sentiment_LSTM/model.json")),
    Case("tf2.10-dqn-weights", "GiacomoCorradini_DQN-pendulum/weight1.h5", "weights", ("builder", "dqn_critic")),
    Case("tf2.10-dqn-savedmodel", "GiacomoCorradini_DQN-pendulum/my_model", "model"),
    Case("tf2.8-sonar-savedmodel", "Adarsh-gif-crypt_Sonar-Mine/my_model", "model"),
    Case("tf2.8-comms-lstm-savedmodel", "SirCrocker_Proyecto-1-Ppio-Comms/my_model", "model"),
    Case("tf2-serving-half-plus-two", "tensorflow_serving/saved_model_half_plus_two_tf2_cpu/00000123", "module"),
    Case("tf1-serving-half-plus-two", "tensorflow_serving/saved_model_half_plus_two_cpu/00000123", "module"),
    Case("tf2-tfjs-times-three", "tensorflow_tfjs/times_three_float", "module"),
    Case("tf2-tfjs-multi-signature", "tensorflow_tfjs/module_with_multiple_signatures", "module"),
    Case("tf2-charity-gelu-ckpt", "neginkanani_Deep-leaning-challenge/cp.ckpt", "weights",
         ("model", "neginkanani_Deep-leaning-challenge/AlphabetSoupCharity.h5")),
    Case("tf2-tutorial-cp0000-ckpt", "Nighthawks829_save-load-model/training_2/cp-0000.ckpt", "weights", ("builder", "tutorial")),
    Case("tf2-charity-adam-ckpt", "jojosaurusrex_Neural_Network_Charity_Analysis/cp.ckpt", "weights", ("builder", "charity_adam")),
    Case("tf2-hotel-textvec-lstm-ckpt", "Ilmif_nlp-hotel-review/cp.ckpt", "weights", ("builder", "hotel_textvec")),
]


# ---------------------------------------------------------------- architectures from the repos' code
def dqn_critic(K):
    inputs = K.layers.Input(shape=(3,))
    h = K.layers.Dense(16, activation="relu")(inputs)
    h = K.layers.Dense(32, activation="relu")(h)
    h = K.layers.Dense(64, activation="relu")(h)
    h = K.layers.Dense(64, activation="relu")(h)
    return K.Model(inputs, K.layers.Dense(1)(h))


def _optimizer(K, name: str):
    """The optimizer the repository's code used: tf-keras needs its legacy class for a TF 2.0-2.10 checkpoint."""
    return getattr(K.optimizers.legacy, name)() if K.__version__.startswith("2.") else name.lower()


def tutorial(K):
    model = K.Sequential([K.layers.Dense(512, activation="relu", input_shape=(784,)), K.layers.Dropout(0.2), K.layers.Dense(10)])
    model.compile(optimizer="adam", loss=K.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[K.metrics.SparseCategoricalAccuracy()])
    return model


def charity_adam(K):
    model = K.Sequential([K.layers.Dense(90, activation="tanh", input_dim=19), K.layers.Dense(30, activation="tanh"),
                          K.layers.Dense(10, activation="tanh"), K.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy", optimizer=_optimizer(K, "Adam"), metrics=["accuracy"])
    return model


def hotel_textvec(K):
    """TextVectorization (adapted: Keras 2 tracks its adapt state), Embedding(mask_zero), 2 LSTMs."""
    vectorize = K.layers.TextVectorization(max_tokens=HOTEL_VOCAB + 2)
    vectorize.set_vocabulary([f"w{i}" for i in range(HOTEL_VOCAB)])
    model = K.Sequential([
        K.Input(shape=(1,), dtype="string"),
        vectorize,
        K.layers.Embedding(HOTEL_VOCAB + 2, 16, mask_zero=True),
        K.layers.LSTM(16, return_sequences=True),
        K.layers.LSTM(16),
        K.layers.Dropout(0.5),
        K.layers.Dense(8, activation="relu"),
        K.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(loss="binary_crossentropy", optimizer=_optimizer(K, "RMSprop"), metrics=["accuracy"])
    return model


BUILDERS = {f.__name__: f for f in (dqn_critic, tutorial, charity_adam, hotel_textvec)}


# ---------------------------------------------------------------- inputs
def synthetic_input(specs: list[tuple[tuple, str, int | None]], seed: int = 0):
    """One array per input ``(shape, dtype, embedding input_dim or None)``; None dims -> fixed sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype, vocab in specs:
        dims = [BATCH if shape[0] is None else int(shape[0])] + [TIME_STEPS if d is None else int(d) for d in shape[1:]]
        if "string" in dtype:
            words = rng.integers(0, HOTEL_VOCAB + 40, size=(BATCH, 9))  # some out of vocabulary
            out.append(np.array([[" ".join(f"w{w}" for w in row)] for row in words], dtype=object))
        elif vocab:
            out.append(rng.integers(0, vocab, size=dims).astype(dtype if "int" in dtype else "float32"))
        else:
            out.append(rng.uniform(-1.0, 1.0, size=dims).astype(dtype if dtype.startswith("float") else "float32"))
    return out


def keras_input_specs(model) -> list[tuple[tuple, str, int | None]]:
    """Input specs of a Keras model (tf-keras or Keras 3): shape, dtype, and the first Embedding's vocabulary."""
    vocab = None
    for layer in _flat_layers(model):
        if type(layer).__name__ == "Embedding":
            vocab = int(layer.input_dim)
            break
        if type(layer).__name__ not in ("InputLayer",):
            break
    specs = []
    for tensor in model.inputs:
        dtype = tensor.dtype if isinstance(tensor.dtype, str) else tensor.dtype.name
        specs.append((tuple(tensor.shape), dtype, vocab))
    return specs


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)
        else:
            yield layer


def module_inputs(signature) -> dict[str, np.ndarray]:
    """Synthetic inputs for a SavedModel signature (by input name)."""
    _, kwargs = signature.structured_input_signature
    rng = np.random.default_rng(0)
    out = {}
    for name, spec in sorted(kwargs.items()):
        dims = [BATCH if d is None else int(d) for d in spec.shape]
        out[name] = rng.uniform(-1.0, 1.0, size=dims).astype(spec.dtype.as_numpy_dtype)
    return out


def _tensors(x):
    """String inputs as TF string tensors (Keras 3 takes no numpy object arrays)."""
    import tensorflow as tf

    if isinstance(x, list):
        return [_tensors(v) for v in x]
    if isinstance(x, dict):
        return {k: _tensors(v) for k, v in x.items()}
    return tf.constant(x.astype(str)) if x.dtype == object else x


def _as_list(pred) -> list[np.ndarray]:
    if isinstance(pred, dict):
        return [np.asarray(pred[k]) for k in sorted(pred)]
    return [np.asarray(p) for p in pred] if isinstance(pred, list | tuple) else [np.asarray(pred)]


# ---------------------------------------------------------------- tf-keras side (subprocess)
def run_tf_keras(root: Path, out: Path) -> None:
    import tensorflow as tf
    import tf_keras as K

    for case in CASES:
        result = {"name": case.name}
        arrays: dict[str, np.ndarray] = {}
        try:
            path = root / F / case.file
            if case.kind == "module":
                obj = K.models.load_model(str(path))
                result["object"] = type(obj).__name__
                signature = obj.signatures["serving_default"]
                x = module_inputs(signature)
                preds = _as_list({k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in x.items()}).items()})
                arrays.update({f"x_{k}": v for k, v in x.items()})
            else:
                if case.kind == "model":
                    model = K.models.load_model(str(path))
                else:
                    model = _tf_keras_arch(K, root, case)
                    model.load_weights(str(path))
                result["object"] = type(model).__name__
                opt = getattr(model, "optimizer", None)
                if opt is not None:
                    result["iterations"] = int(opt.iterations.numpy())
                x = synthetic_input(keras_input_specs(model))
                preds = _as_list(model.predict(x if len(x) > 1 else x[0], verbose=0))
                arrays.update({f"x{i}": v for i, v in enumerate(x)})
            arrays.update({f"pred{i}": p for i, p in enumerate(preds)})
            np.savez(out / f"{case.name}.npz", **arrays)
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result["ok"] = False
            result["error"] = f"{type(exc).__name__}: {exc}"[:300]
        print("RESULT " + json.dumps(result), flush=True)


def _tf_keras_arch(K, root: Path, case: Case):
    how, what = case.arch
    if how == "json":
        return K.models.model_from_json((root / F / what).read_text())
    if how == "model":
        return K.models.load_model(str(root / F / what))
    return BUILDERS[what](K)


def tf_keras_results(root: Path, out: Path, timeout: int = 1800) -> dict[str, dict]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--tf-keras", str(root), str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            results[r["name"]] = r
    if not results:
        raise RuntimeError(f"the tf-keras subprocess printed no results: {done.stderr[-2000:]}")
    return results


# ---------------------------------------------------------------- modelkeep side
def file_iterations(root: Path, case: Case) -> int | None:
    """The optimizer iteration count stored in the file (None: the file holds no optimizer state)."""
    import h5py

    path = root / F / case.file
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            if "optimizer_weights" not in f:
                return None
            group = f["optimizer_weights"]
            for raw in group.attrs["weight_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                if name.removesuffix(":0").rsplit("/", 1)[-1].rstrip("_0123456789") in ("iterations", "iter", "iteration"):
                    return int(np.asarray(group[name]))
        return None
    import tensorflow as tf

    prefix = path / "variables" / "variables" if path.is_dir() else path
    if not Path(str(prefix) + ".index").exists():
        return None
    for name, _ in tf.train.list_variables(str(prefix)):
        if name.startswith("optimizer/") and name.split("/")[1] in ("iter", "_iterations", "iterations"):
            return int(tf.train.load_checkpoint(str(prefix)).get_tensor(name))
    return None


def _slots_from_file(root: Path, case: Case, model) -> tuple[int, int]:
    """(Keras 3 optimizer slots equal bit for bit to an optimizer array of the file, Keras 3 slots)."""
    import h5py
    import tensorflow as tf

    from modelkeep.capture import optimizer_variable_keys

    path = root / F / case.file
    arrays = []
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            group = f["optimizer_weights"]
            arrays = [np.asarray(group[n.decode() if isinstance(n, bytes) else n]) for n in group.attrs["weight_names"]]
    else:
        prefix = path / "variables" / "variables" if path.is_dir() else path
        reader = tf.train.load_checkpoint(str(prefix))
        arrays = [reader.get_tensor(n) for n, _ in tf.train.list_variables(str(prefix))
                  if "OPTIMIZER_SLOT" in n or n.startswith("optimizer/")]
    by_bytes = {(a.shape, np.asarray(a, dtype="float32").tobytes()) for a in arrays if a.ndim}
    slots = [v.numpy() for k, v in optimizer_variable_keys(model) if k.startswith("slots/")]
    return sum((v.shape, v.astype("float32").tobytes()) in by_bytes for v in slots), len(slots)


def modelkeep_row(root: Path, case: Case, tfk: dict, out: Path) -> dict:
    import keras

    import modelkeep as mk
    from modelkeep.formats import legacy

    row = {"case": case.name, "tf_keras": "ok" if tfk.get("ok") else "fails", "mk": "", "diff": None, "optimizer": "-",
           "warnings": 0}
    path = root / F / case.file
    ref = np.load(out / f"{case.name}.npz", allow_pickle=True) if tfk.get("ok") else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if case.kind == "weights":
                how, what = case.arch
                if how == "json":
                    model = legacy.build_keras3_model(json.loads((root / F / what).read_text()), None, source=what)
                elif how == "model":
                    model = mk.load_model(root / F / what)
                else:
                    model = BUILDERS[what](keras)
                mk.load_weights(model, path)
            else:
                model = mk.load_model(path)
            row["mk"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported in the table
            text = f"{type(exc).__name__}: {exc}"
            named = case.refuse is not None and case.refuse in str(exc)
            row["mk"] = ("refused by name" if named else "fails") + f" ({text[:150]})"
            row["error"] = text
            row["warnings"] = len([w for w in caught if "modelkeep" in str(w.filename) or "load" in str(w.message)])
            return row
    row["class"] = type(model).__name__
    row["warnings"] = len(caught)
    row["warning_texts"] = [str(w.message) for w in caught]
    if ref is not None:
        if case.kind == "module":
            x = {k[2:]: ref[k] for k in ref.files if k.startswith("x_")}
        else:
            xs = [ref[k] for k in sorted((k for k in ref.files if k.startswith("x") and k[1:].isdigit()), key=lambda k: int(k[1:]))]
            x = xs if len(xs) > 1 else xs[0]
        want = [ref[k] for k in sorted((k for k in ref.files if k.startswith("pred")), key=lambda k: int(k[4:]))]
        try:
            got = _as_list(model.predict(_tensors(x), verbose=0))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            row["mk"] = f"loads, predict fails ({type(exc).__name__}: {str(exc)[:120]})"
            return row
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
            row["diff"] = float("nan")
            row["mk"] = f"ok but outputs {[g.shape for g in got]} != {[w.shape for w in want]}"
        else:
            row["diff"] = max(float(np.max(np.abs(g.astype("float64") - w.astype("float64")))) if g.size else 0.0
                              for g, w in zip(got, want))
    stored = file_iterations(root, case)
    opt = getattr(model, "optimizer", None)
    got_it = int(opt.iterations.numpy()) if opt is not None and getattr(opt, "built", False) else None
    if stored is not None:
        same, total = _slots_from_file(root, case, model)
        row["optimizer"] = f"it {stored}: mk {got_it}, slots {same}/{total}"
        row["optimizer_restored"] = got_it == stored and same == total
    return row


def measure(root: Path = DEFAULT_ROOT) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tfk = tf_keras_results(root, out)
        return [modelkeep_row(root, case, tfk.get(case.name, {}), out) for case in CASES]


def print_table(rows: list[dict]) -> None:
    print(f"{'case':34} {'tf-keras':8} {'max abs diff':>12}  {'optimizer (iterations)':34} modelkeep")
    for r in rows:
        diff = "-" if r["diff"] is None else f"{r['diff']:.2e}"
        print(f"{r['case']:34} {r['tf_keras']:8} {diff:>12}  {r['optimizer']:34} {r['mk']}")
    loaded_tfk = sum(r["tf_keras"] == "ok" for r in rows)
    loaded_mk = sum(r["mk"].startswith("ok") for r in rows)
    both = [r for r in rows if r["tf_keras"] == "ok" and r["mk"].startswith("ok")]
    within = sum(r["diff"] is not None and r["diff"] <= 1e-5 for r in both)
    refused = sum(r["mk"].startswith("refused by name") for r in rows)
    with_state = [r for r in rows if "optimizer_restored" in r]
    largest = max((r["diff"] for r in both if r["diff"] is not None), default=0.0)
    print(f"\n{len(rows)} cases: tf-keras loads {loaded_tfk}, modelkeep loads {loaded_mk} "
          f"({within} of the {len(both)} both load predict within 1e-5), refused by name {refused}")
    print(f"largest difference {largest:.2g}; optimizer state restored in {sum(r['optimizer_restored'] for r in with_state)} "
          f"of the {len(with_state)} files that have it (iterations equal, every slot equal bit for bit to one of "
          f"the file's arrays); modelkeep warnings: {sum(r['warnings'] for r in rows)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--tf-keras":
        run_tf_keras(Path(sys.argv[2]), Path(sys.argv[3]))
        raise SystemExit(0)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    where = Path(args[0]) if args else DEFAULT_ROOT
    if not (where / "SOURCES.md").exists():
        raise SystemExit(f"no real files at {where} (expected SOURCES.md there)")
    table = measure(where)
    print_table(table)
    if "--verbose" in sys.argv:
        for r in table:
            for text in r.get("warning_texts", [])[:5]:
                print(f"  {r['case']}: warning: {text[:160]}")
