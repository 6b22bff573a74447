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
