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


def pytest_terminal_summary(terminalreporter):
    """Say where this run happened: float results depend on the CPU and TF's kernel settings."""
    from machine import machine_line

    terminalreporter.write_line(machine_line())
