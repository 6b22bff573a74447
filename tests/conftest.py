"""Shared test set-up: quiet TensorFlow, deterministic seeds, a model zoo (``zoo.py``)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    import keras

    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def tfs_built(tmp_path_factory):
    """One ``modelkeep-model-server`` serving our equivalents of TF Serving's test models
    (``tfserving_server.py``), shared by the TF Serving compatibility and client tests."""
    from tfserving_server import start

    server = start("built", tmp_path_factory.mktemp("tfs-built")).wait()
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter):
    """Say where this run happened: float results depend on the CPU and TF's kernel settings."""
    from machine import machine_line

    terminalreporter.write_line(machine_line())
