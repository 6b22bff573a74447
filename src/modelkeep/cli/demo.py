"""``modelkeep demo``: the tutorial's workflow, end to end, on synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the tutorial's model, save and load it in every format, predict",
        description=(
            "Train the tutorial's model on synthetic data, save its weights (TF checkpoint and "
            "HDF5) and the whole model (SavedModel directory and HDF5), load each back, and "
            "predict on new data."
        ),
        epilog="Example: modelkeep demo --dir /tmp/mk-demo",
    )
    parser.add_argument("--dir", default="modelkeep-demo", help="where to write (default: ./modelkeep-demo)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from modelkeep.demo import run_demo

    console = Console()
    report = run_demo(Path(args.dir), epochs=args.epochs, log=console.print)
    listing = Table(title=f"What modelkeep wrote in {report.directory}")
    listing.add_column("path", no_wrap=True)
    listing.add_column("bytes", justify="right")
    listing.add_column("what it holds")
    for path, size, what in report.files:
        listing.add_row(path, f"{size:,}", what)
    console.print(listing)
    checks = Table(title="Loaded back: predictions on 5 new rows")
    checks.add_column("row", justify="right")
    for name in report.predictions:
        checks.add_column(name, justify="right")
    for row in range(len(report.new_rows)):
        checks.add_row(str(row), *(f"{report.predictions[n][row]:+.6f}" for n in report.predictions))
    console.print(checks)
    verdict = "all equal bit for bit" if report.all_equal else "MISMATCH"
    console.print(f"[bold]{len(report.predictions)} loads, predictions {verdict} to the trained model.[/bold]")
    return 0 if report.all_equal else 1
