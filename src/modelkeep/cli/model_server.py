"""``modelkeep-model-server``: ``tensorflow_model_server``'s command line, unchanged.

A Dockerfile or Kubernetes manifest written for TF Serving works by swapping the command::

    modelkeep-model-server --port=8500 --rest_api_port=8501 \\
        --model_name=half --model_base_path=/models/half
    modelkeep-model-server --model_config_file=/models/models.config \\
        --monitoring_config_file=/models/monitoring.config

Flags take ``--flag=value`` or ``--flag value``; booleans also ``--flag`` / ``--flag=false``.
``--port`` is gRPC and ``--rest_api_port`` REST (0: none), as in TF Serving; both listen on
every interface (``--host`` narrows it: modelkeep's one addition). Flags of TF Serving that
have no meaning here (thread counts, TPU, TFLite, ALTS, ...) are accepted and ignored with
a log line; unknown flags are an error, as in TF Serving.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from modelkeep.errors import ModelkeepError

log = logging.getLogger("modelkeep.serve")

_IGNORED = (
    "grpc_socket_path", "rest_api_num_threads", "rest_api_timeout_in_ms", "rest_api_enable_cors_support",
    "num_load_threads", "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "flush_filesystem_caches", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "use_alts_credentials", "platform_config_file", "saved_model_tags",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup", "prefer_tflite_model",
    "enable_profiler", "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "per_process_gpu_memory_fraction", "ssl_config_file",
    "allow_version_labels_for_unavailable_models", "response_tensor_type",
)


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelkeep-model-server",
        description="TensorFlow Serving's tensorflow_model_server command line, served by modelkeep.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--port", type=int, default=8500, help="gRPC port (default 8500; 0: none)")
    add("--rest_api_port", type=int, default=0, help="REST port (default 0: no REST API)")
    add("--model_name", default="default", help="model name (default 'default')")
    add("--model_base_path", default="", help="base directory of the model's numbered versions")
    add("--model_config_file", default="", help="ModelServerConfig text proto (several models, version policies, labels)")
    add("--model_config_file_poll_wait_seconds", type=int, default=0, help="re-read the config file this often (0: never)")
    add("--file_system_poll_wait_seconds", type=float, default=1.0, help="how often to look for new versions (default 1)")
    add("--monitoring_config_file", default="", help="MonitoringConfig text proto: prometheus_config { enable, path }")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False, help="accepted; micro-batching is always on")
    add("--batching_parameters_file", default="", help="BatchingParameters text proto: max_batch_size, batch_timeout_micros")
    add("--grpc_channel_arguments", default="", help="gRPC server options, key=value,key=value")
    add("--enable_serialization_as_tensor_content", type=_bool, nargs="?", const=True, default=False,
        help="gRPC outputs in tensor_content instead of the typed fields")
    add("--version", type=_bool, nargs="?", const=True, default=False, help="print the version and exit")
    add("--host", default="0.0.0.0", help="modelkeep only: the address to listen on (default every interface, as TF Serving)")
    for name in _IGNORED:
        add(f"--{name}", nargs="?", const="true", default=None, help=argparse.SUPPRESS)
    return p


def models_from_config(path: str) -> list[Any]:
    """The ``ModelEntry`` of each ``model_config_list`` entry, version policy and labels included."""
    from modelkeep.serving.model_config import read_model_config

    return read_model_config(path)


def monitoring_path(path: str) -> str | None:
    """``prometheus_config { enable: true path: "..." }`` → the path (TF Serving's default path if unset)."""
    text = Path(path).read_text()
    block = re.search(r"prometheus_config\s*:?\s*\{(?P<body>[^}]*)\}", text)
    if block is None:
        return None
    if not re.search(r"enable\s*:\s*true", block["body"]):
        return None
    found = re.search(r'path\s*:\s*"(?P<path>[^"]*)"', block["body"])
    return found["path"] if found else "/monitoring/prometheus/metrics"


def batching(path: str) -> tuple[int, float]:
    """``max_batch_size { value: N }`` and ``batch_timeout_micros { value: M }`` of a BatchingParameters file."""
    text = Path(path).read_text()

    def value(name: str, default: int) -> int:
        found = re.search(name + r"\s*:?\s*\{\s*value\s*:\s*(\d+)\s*\}", text)
        return int(found[1]) if found else default

    return value("max_batch_size", 64), value("batch_timeout_micros", 0) / 1000.0


def grpc_options(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return out


def config_from_args(args: argparse.Namespace) -> Any:
    from modelkeep.serving.model_config import ModelEntry
    from modelkeep.serving.server import ServeConfig

    if args.model_config_file and args.model_base_path:
        raise ModelkeepError("Invalid arguments: both --model_config_file and --model_base_path are set; give one.")
    if args.model_config_file:
        models = models_from_config(args.model_config_file)
    elif args.model_base_path:
        models = [ModelEntry(args.model_name, args.model_base_path)]
    else:
        raise ModelkeepError("Both server_model_config and model_base_path are empty! (modelkeep: give --model_base_path or --model_config_file)")
    for name in _IGNORED:
        if getattr(args, name) is not None:
            log.warning("modelkeep-model-server: --%s has no effect here; ignored", name)
    max_batch, timeout_ms = batching(args.batching_parameters_file) if args.batching_parameters_file else (64, 0.0)
    first = models[0]
    return ServeConfig(
        path=first.path,
        name=first.name,
        host=args.host,
        port=args.rest_api_port,
        grpc_port=args.port or None,
        max_batch_size=max_batch,
        batch_timeout_ms=timeout_ms,
        poll_seconds=max(args.file_system_poll_wait_seconds, 0.05),
        allow_non_finite=True,
        models=models,
        monitoring_path=monitoring_path(args.monitoring_config_file) if args.monitoring_config_file else None,
        tensor_content=args.enable_serialization_as_tensor_content,
        grpc_options=grpc_options(args.grpc_channel_arguments),
        rest=args.rest_api_port != 0,
        model_config_file=args.model_config_file or None,
        config_poll_seconds=float(args.model_config_file_poll_wait_seconds),
        tf_serving_exact=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``modelkeep-model-server``."""
    args = build_parser().parse_args(argv)
    if args.version:
        from modelkeep import __version__

        print(f"TensorFlow ModelServer: modelkeep-{__version__}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
        from modelkeep.serving.server import serve

        serve(config)
    except ModelkeepError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
