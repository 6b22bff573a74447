"""``modelkeep serve``: TensorFlow Serving's REST and gRPC APIs for a model or a training run."""

from __future__ import annotations

import argparse
import logging

EPILOG = """examples:
  modelkeep serve model.keras --name tutorial
  modelkeep serve runs/exp1 --name tutorial --policy newest:2 --poll-seconds 1
  curl -d '{"instances": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}' \\
       http://127.0.0.1:8501/v1/models/tutorial:predict

PATH is a saved model (.keras, .h5, SavedModel directory), a TF Serving base directory
(numbered version subdirectories) or a training run's checkpoint directory (the version is
the checkpoint's step; new ok checkpoints are loaded and swapped in without a pause).
Exit codes: 0 stopped cleanly (Ctrl-C / SIGTERM), 1 could not start."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model or a training run over REST and gRPC (TensorFlow Serving API)",
        description="Serve real-time predictions with TensorFlow Serving's REST and gRPC APIs, "
        "following a training run's newest good checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="model file, SavedModel dir, TF Serving base dir or run dir")
    parser.add_argument("--name", help="model name in URLs (default: PATH's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (default: 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port, 0 for none (default: 8500)")
    parser.add_argument("--policy", default="latest", help="latest (default), pinned:VERSION or newest:N")
    parser.add_argument("--max-batch-size", type=_positive_int, default=64, help="rows per forward pass (default: 64)")
    parser.add_argument(
        "--batch-timeout-ms", type=_non_negative_float, default=0.0,
        help="wait this long for more requests to batch (default: 0: batch only what is already queued)",
    )
    parser.add_argument(
        "--max-request-bytes", type=_positive_int, default=8 * 1024 * 1024,
        help="larger bodies get HTTP 413 / RESOURCE_EXHAUSTED (default: 8 MiB)",
    )
    parser.add_argument("--api-key-file", help="file holding a bearer token required on every endpoint but /healthz")
    parser.add_argument("--poll-seconds", type=_non_negative_float, default=2.0, help="how often to look for new versions (default: 2)")
    parser.add_argument("--allow-non-finite", action="store_true", help="accept NaN/Infinity in float inputs")
    parser.add_argument("--allow-unsafe-ops", action="store_true",
                        help="serve SavedModel graphs even if they hold file-system, network or Python ops (trusted files only)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modelkeep.serving.server import ServeConfig, read_api_key, serve
    from modelkeep.serving.watcher import Policy

    Policy.parse(args.policy)  # fail before loading anything
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    config = ServeConfig(
        path=args.path,
        name=args.name,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port or None,
        policy=args.policy,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        max_request_bytes=args.max_request_bytes,
        api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
        poll_seconds=max(args.poll_seconds, 0.05),
        allow_non_finite=args.allow_non_finite,
        allow_unsafe_ops=args.allow_unsafe_ops,
    )
    serve(config)
    return 0
