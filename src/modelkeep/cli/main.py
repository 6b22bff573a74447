"""``modelkeep`` entry point: one subcommand per module, one clear error line on failure.

Exit codes: 0 success; 1 a check failed or an operation failed (the error line says
what); 2 bad command-line usage. ``--debug`` shows the traceback of a failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> module under modelkeep.cli; each module has add_parser(subparsers) -> parser
# and sets a `handler(args) -> int` default on it.
SUBCOMMANDS = {
    "demo": "demo",
    "ls": "files",
    "inspect": "files",
    "verify": "files",
    "diff": "files",
    "convert": "files",
    "prune": "files",
    "predict": "files",
    "plot": "files",
    "serve": "serve",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EPILOG = """exit status:
  0  success (for verify: everything intact; diff exits 0 whether or not the files differ)
  1  a check failed (verify) or the operation failed; one line on stderr says what (--debug: traceback)
  2  bad command-line usage

examples:
  modelkeep demo --dir /tmp/mk-demo
  modelkeep ls run/
  modelkeep verify run/ model.keras
  modelkeep convert model.keras exported_savedmodel
  modelkeep COMMAND --help        (every command has examples)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelkeep",
        description="See, verify, compare, convert, use and serve saved Keras models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = []
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        try:
            modules.append(importlib.import_module(f"modelkeep.cli.{module_name}"))
        except ImportError as exc:
            if exc.name != f"modelkeep.cli.{module_name}":
                raise
    for module in modules:
        module.add_parsers(subparsers)
    return parser


def _quiet_tensorflow_logger() -> None:
    # TensorFlow's Python logger warns about retracing on every few predict calls; the CLI's
    # user did not write those calls, so only errors are shown.
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _quiet_tensorflow_logger()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("modelkeep: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's one error line
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"modelkeep {args.command}: error: {message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
