"""``modelkeep-model-server``: TF Serving's flags and config files, parsed as TF Serving parses them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelkeep.cli.model_server import build_parser, config_from_args
from modelkeep.errors import ModelkeepError


def test_tf_serving_flags_unchanged(tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 5000 }\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    (tmp_path / "half" / "1").mkdir(parents=True)
    args = build_parser().parse_args([
        "--port=8500", "--rest_api_port=8501", "--model_name=half", f"--model_base_path={tmp_path / 'half'}",
        "--file_system_poll_wait_seconds=3", f"--monitoring_config_file={monitoring}", "--enable_batching",
        f"--batching_parameters_file={batching}", "--rest_api_timeout_in_ms=30000", "--tensorflow_intra_op_parallelism=2",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
    ])
    config = config_from_args(args)
    assert (config.grpc_port, config.port, config.rest) == (8500, 8501, True)  # --port is gRPC, as in TF Serving
    assert [(m.name, str(m.path)) for m in config.models] == [("half", str(tmp_path / "half"))]
    assert (config.poll_seconds, config.max_batch_size, config.batch_timeout_ms) == (3, 32, 5.0)
    assert config.monitoring_path == "/monitoring/prometheus/metrics"
    assert config.grpc_options == [("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb")]
    assert config.allow_non_finite and config.host == "0.0.0.0"  # TF Serving accepts NaN and binds every interface
    plain = config_from_args(build_parser().parse_args([f"--model_base_path={tmp_path / 'half'}"]))
    assert not plain.rest and not plain.tensor_content  # REST off, typed gRPC fields: TF Serving's defaults
    packed = build_parser().parse_args([f"--model_base_path={tmp_path / 'half'}", "--enable_serialization_as_tensor_content=true"])
    assert config_from_args(packed).tensor_content


def test_model_config_file_policies_and_labels(tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text("""model_config_list: {
      config: { name: "a", base_path: "/m/a", model_platform: "tensorflow" },
      config: { name: "b", base_path: "/m/b", model_version_policy: { specific: { versions: 1 versions: 3 } }
                version_labels: { key: "stable" value: 1 } version_labels: { key: "canary" value: 3 } },
      config: { name: "c", base_path: "/m/c", model_version_policy: { all: {} } },
      config: { name: "d", base_path: "/m/d", model_version_policy: { latest: { num_versions: 2 } } }
    }""")
    config = config_from_args(build_parser().parse_args([f"--model_config_file={config_file}"]))
    assert [(m.name, m.policy) for m in config.models] == [("a", "latest"), ("b", "specific:1,3"), ("c", "all"), ("d", "newest:2")]
    assert config.models[1].labels == {"stable": 1, "canary": 3}
    from modelkeep.serving.watcher import Policy

    assert Policy.parse("specific:1,3").wanted([1, 2, 3, 4]) == [3, 1]
    assert Policy.parse("all").wanted([1, 2, 3]) == [3, 2, 1]


def test_bad_model_config_file_is_tf_serving_error(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list: { config: { name: oops base_path: } }")
    with pytest.raises(ModelkeepError, match="Error parsing text-format tensorflow.serving.ModelServerConfig"):
        config_from_args(build_parser().parse_args([f"--model_config_file={bad}"]))
    with pytest.raises(ModelkeepError, match="Both server_model_config and model_base_path are empty"):
        config_from_args(build_parser().parse_args([]))


def test_unknown_flag_exits_nonzero_and_version_prints():
    cmd = [sys.executable, "-m", "modelkeep.cli.model_server"]
    bad = subprocess.run([*cmd, "--no_such_flag=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--no_such_flag" in bad.stderr
    ok = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("TensorFlow ModelServer: modelkeep-")
