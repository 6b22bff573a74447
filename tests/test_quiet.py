"""No TensorFlow start-up lines (absl pre-init warning, CUDA drivers, cuInit) on the stderr of a
CLI command or of a Python session that imports modelkeep first, on a CPU-only machine; any
other line written to stderr meanwhile still shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("absl::InitializeLog", "Could not find cuda drivers", "cuInit", "oneDNN custom operations")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MODELKEEP_TF_LOGS")}
    return {**env, "PYTHONPATH": str(ROOT / "src"), **extra}


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(n in line for n in NOISE)]


def test_cli_command_that_imports_tensorflow_has_a_clean_stderr(tmp_path):
    """`modelkeep verify` of a TF checkpoint (which imports TensorFlow): stderr holds nothing.

    (A Python session that imports modelkeep first is checked by tests/test_readme.py.)"""
    import keras

    import modelkeep as mk

    mk.save_weights(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), tmp_path / "ckpt")
    done = subprocess.run([sys.executable, "-m", "modelkeep.cli.main", "verify", "ckpt"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not _noise(done.stderr)
    assert "all 1 intact" in done.stdout and done.stderr.strip() == "", done.stderr  # (the progress bar leaves a newline)


def test_captured_stderr_keeps_every_other_line():
    """The filter drops only the known start-up lines, written at the file-descriptor level."""
    code = (
        "import os, sys\n"
        "from modelkeep.quiet import captured_stderr\n"
        "with captured_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n')\n"
        "    os.write(2, b'a real error line\\n')\n"
        "    print('a Python warning', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "a real error line\na Python warning\nafter\n"


def test_the_hook_can_be_turned_off():
    """MODELKEEP_TF_LOGS=1: the hook is not installed (and a process that imported TF first is left alone)."""
    code = ("import sys, modelkeep.quiet as q\n"
            "print(q._FINDER in sys.meta_path)\n")
    off = subprocess.run([sys.executable, "-c", code], env=_env(MODELKEEP_TF_LOGS="1"), capture_output=True, text=True, timeout=60)
    on = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert (off.stdout, on.stdout) == ("False\n", "True\n"), (off.stderr, on.stderr)


@pytest.mark.slow
def test_make_demo_has_a_clean_stderr(tmp_path):
    """What `make demo` runs (`modelkeep demo` with the Makefile's TF_CPP_MIN_LOG_LEVEL=2): no start-up lines."""
    done = subprocess.run([sys.executable, "-m", "modelkeep.cli.main", "demo", "--dir", str(tmp_path / "demo")],
                          env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predictions all equal bit for bit" in done.stdout
    assert not _noise(done.stderr), done.stderr


def test_validation_under_op_determinism_prints_no_node_def_line(tmp_path):
    """`mk.fit(validation_split=...)` under op determinism (the README's resume block): TensorFlow
    logs a C++ `E0000 node_def_util` line about `use_unbounded_threadpool` at the first evaluate
    with a partial last batch; it is dropped, and a line written to stderr meanwhile still shows."""
    code = (
        "import modelkeep as mk, keras, numpy as np, os, tensorflow as tf\n"
        "keras.utils.set_random_seed(1)\n"
        "tf.config.experimental.enable_op_determinism()\n"
        "class Say(keras.callbacks.Callback):\n"
        "    def on_test_begin(self, logs=None):\n"
        "        os.write(2, b'kept: a line from a callback\\n')\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])\n"
        "m.compile('adam', 'mse')\n"
        "x = np.random.rand(70, 4).astype('float32')\n"
        "mk.fit(m, x, x[:, :1], batch_size=32, epochs=2, validation_split=0.2, callbacks=[Say()],\n"
        "       backup_dir='run', verbose=0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "node_def_util" not in done.stderr and "E0000" not in done.stderr, done.stderr
    assert done.stderr.count("kept: a line from a callback") == 2, done.stderr


def test_the_node_def_line_shows_without_modelkeeps_filter():
    """The same evaluate through Keras alone does print it (so the test above can fail)."""
    code = (
        "import keras, numpy as np, tensorflow as tf\n"
        "tf.config.experimental.enable_op_determinism()\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])\n"
        "m.compile('adam', 'mse')\n"
        "x = np.random.rand(13, 4).astype('float32')\n"
        "m.evaluate(x, x[:, :1], batch_size=32, verbose=0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=_env(TF_CPP_MIN_LOG_LEVEL="0"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "use_unbounded_threadpool" in done.stderr
