"""``modelkeep-model-server`` on free ports, serving TF Serving's test models (no tests here).

Two model sets, served under the names TF Serving's own tests use:

* ``built``: our equivalents (``tfserving_models``), made in a tmp directory, plus the
  models only modelkeep's tests use (strings, JPEG, tf.Module, Keras, the example clients');
* ``shared``: TF Serving's real test SavedModels in ``<repo>/../shared/tfserving/models``
  (skipped, with the reason, when that folder is absent).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import tfserving_models as tm
from test_serving_helpers import HOST, ChildServer, free_port

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "tfserving" / "models"

TFS_NAMES = ("default", "half_plus_three", "tf2", "saved_model_half_plus_two_2_versions")


class ModelServer(ChildServer):
    """``python -m modelkeep.cli.model_server --port=G --rest_api_port=R --model_config_file=...``."""

    name = "model server"

    def __init__(self, config: Path, log_dir: Path, *extra: str):
        self.grpc_port, self.rest_port = free_port(), free_port()
        args = [
            sys.executable, "-m", "modelkeep.cli.model_server", f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}", f"--host={HOST}", f"--model_config_file={config}", *extra,
        ]
        super().__init__(args, log_dir / f"model-server-{self.rest_port}.log", f"http://{HOST}:{self.rest_port}",
                         f"{HOST}:{self.grpc_port}")
        self.models: dict[str, Path] = {}

    def wait(self, path: str = "/readyz", timeout: float = 180.0, headers: dict | None = None) -> ModelServer:
        return super().wait(path, timeout, headers)


def write_config(path: Path, models: dict[str, Path], extra: dict[str, str] | None = None) -> Path:
    """A ModelServerConfig text proto (TF Serving's good_model_config.txt form)."""
    lines = ["model_config_list: {"]
    for name, base in models.items():
        more = (extra or {}).get(name, "")
        lines.append(f'  config: {{ name: "{name}", base_path: "{base}", model_platform: "tensorflow" {more}}}')
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")
    return path


TWO_VERSIONS = 'model_version_policy: { specific: { versions: 123 } } version_labels: { key: "stable" value: 123 }'


def build_models(root: Path) -> tuple[dict[str, Path], dict]:
    images, labels, weights, bias = tm.mnist_like_data(100)
    tm.write_mnist_idx(root / "mnist_data", images, labels)
    kernel = np.random.default_rng(5).normal(size=(3, 1000)).astype(np.float32)
    two = tm.half_plus_two_tf1(root / "two", "00000123")
    tm.half_plus_two_tf1(two, "00000124", plus=3.0)
    keras_base, keras_model = tm.keras_dict(root / "keras_dict")
    resnet_base, resnet_model = tm.resnet_float(root / "resnet")
    models = {
        "default": tm.half_plus_two_tf1(root / "half_plus_two"),
        "half_plus_three": tm.half_plus_two_tf1(root / "half_plus_three", plus=3.0, api_rest_regress=True),
        "tf2": tm.half_plus_two_tf2(root / "tf2"),
        "saved_model_half_plus_two_2_versions": two,
        "module": tm.module_unknown_rank(root / "module"),
        "multi": tm.module_two_signatures(root / "multi"),
        "strings": tm.strings(root / "strings"),
        "jpeg": tm.jpeg(root / "jpeg"),
        "keras_dict": keras_base,
        "mnist": tm.mnist_tf1(root / "mnist", weights, bias),
        "resnet": resnet_base,
        "resnet_jpeg": tm.resnet_jpeg(root / "resnet_jpeg", kernel),
        "keras_sequential": tm.tf_keras_sequential(root / "keras_sequential"),
    }
    extras = {"keras_model": keras_model, "resnet_model": resnet_model, "kernel": kernel, "mnist": (images, labels)}
    return models, extras


def start(kind: str, root: Path) -> ModelServer:
    if kind == "shared":
        if not SHARED.is_dir():
            pytest.skip(f"TF Serving's test models are not in {SHARED} (../shared/tfserving/models)")
        models = {
            "default": SHARED / "saved_model_half_plus_two_cpu",
            "half_plus_three": SHARED / "saved_model_half_plus_three",
            "tf2": SHARED / "saved_model_half_plus_two_tf2_cpu",
            "saved_model_half_plus_two_2_versions": SHARED / "saved_model_half_plus_two_2_versions",
        }
        extras: dict = {}
    else:
        models, extras = build_models(root)
    config = write_config(root / "models.config", models, {"saved_model_half_plus_two_2_versions": TWO_VERSIONS})
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    poll = ["--model_config_file_poll_wait_seconds=1"] if kind == "built" else []
    server = ModelServer(config, root, f"--monitoring_config_file={monitoring}", *poll)
    server.models = models
    server.extras = extras
    server.kind = kind
    server.config = config
    return server
