"""``modelkeep convert | prune | predict | plot``: the subcommands that write something."""

from __future__ import annotations

import argparse
from typing import Any

from modelkeep.cli._output import EXIT_OK, console, formatter, human_size, number, print_json, progress, table


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    _add_convert(subparsers)
    _add_prune(subparsers)
    _add_predict(subparsers)
    _add_plot(subparsers)


# ------------------------------------------------------------------------------ convert
def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="any supported format to any other, optimizer state carried",
        formatter_class=formatter(),
        description="Read SRC and write it as DST; the format of DST comes from its path (no extension: TF "
        "checkpoint or SavedModel directory; .h5/.hdf5; .weights.h5; .keras; .safetensors). A whole model stays "
        "a whole model and weights stay weights unless --as says otherwise. The optimizer state is carried "
        "where both formats keep it. DST is read back and compared with what was written, and a manifest "
        "(sizes + CRC-32) is written beside it.",
        epilog="Examples:\n  modelkeep convert model.keras exported_savedmodel\n"
        "  modelkeep convert saved_modelname weights.safetensors\n"
        "  modelkeep convert model.h5 weights.h5 --as weights",
    )
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("dst", metavar="DST")
    parser.add_argument("--as", dest="kind", choices=("weights", "model"), help="write DST as weights or a whole model")
    parser.add_argument("--no-optimizer", action="store_true", help="leave the optimizer state out")
    parser.add_argument("--like", metavar="MODEL", help="a saved whole model whose architecture a .weights.h5 SRC is read through")
    parser.add_argument("--no-check", action="store_true", help="do not read DST back to compare")
    parser.add_argument("--no-manifest", action="store_true", help="do not write DST's manifest")
    parser.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from modelkeep.tools.convert import convert

    with progress() as bar:
        task = bar.add_task(f"convert {args.src}", total=None)

        def on_step(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        result = convert(args.src, args.dst, kind=args.kind, include_optimizer=not args.no_optimizer, like=args.like,
                         check=not args.no_check, manifest=not args.no_manifest, on_step=on_step)
    con = console()
    optimizer = "with the optimizer state" if result.optimizer_carried else "without optimizer state"
    con.print(f"wrote {result.dst} ({result.format_dst}, {result.kind}) from {result.src} ({result.format_src}): "
              f"{result.variables} variables, {optimizer}")
    for note in result.notes:
        con.print(f"  note: {note}")
    if result.checked:
        con.print("  read back: every variable equal to the source")
    return EXIT_OK


# ------------------------------------------------------------------------------ prune
def _add_prune(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune", help="delete checkpoints by retention rules, safely",
        formatter_class=formatter(),
        description="Apply retention rules to a directory of checkpoints. Rules combine: a checkpoint is kept "
        "if any rule keeps it. Only intact checkpoints are counted or deleted, the newest intact one is always "
        "kept, and the TF `checkpoint` state file is updated first.",
        epilog="Examples:\n  modelkeep prune run/ --keep-last 3 --keep-best 1 --dry-run\n"
        "  modelkeep prune run/ --keep-last 5 --keep-every-n-epochs 10",
    )
    parser.add_argument("directory")
    parser.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest")
    parser.add_argument("--keep-best", type=int, metavar="K", help="keep the K best by --monitor")
    parser.add_argument("--monitor", help="metric for --keep-best (default: val_loss if logged, else loss)")
    parser.add_argument("--mode", choices=("auto", "min", "max"), default="auto")
    parser.add_argument("--keep-every-n-epochs", type=int, metavar="E", help="keep every checkpoint whose epoch is a multiple of E")
    parser.add_argument("--keep-every-n-hours", type=float, metavar="H", help="keep one checkpoint per H hours")
    parser.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    parser.add_argument("--json", action="store_true", help="print what was (or would be) kept and deleted as JSON")
    parser.set_defaults(handler=run_prune, _parser=parser)


def run_prune(args: argparse.Namespace) -> int:
    from modelkeep.checkpoint.retention import apply_retention, plan_retention
    from modelkeep.tools.runs import list_run

    rules = {"max_to_keep": args.keep_last, "keep_best": args.keep_best, "keep_every_n_epochs": args.keep_every_n_epochs,
             "keep_every_n_hours": args.keep_every_n_hours}
    if all(v is None for v in rules.values()):
        args._parser.error("give at least one rule: --keep-last, --keep-best, --keep-every-n-epochs or --keep-every-n-hours")
    run = list_run(args.directory, monitor=args.monitor, mode=args.mode)
    rules.update(monitor=run.monitor, mode=args.mode)
    keep, delete = plan_retention(run.checkpoints, **rules)
    if not args.dry_run:
        deleted = {str(p) for p in apply_retention(args.directory, **rules)}
        delete = [c for c in run.checkpoints if str(c.path) in deleted]
        keep = [c for c in run.checkpoints if str(c.path) not in deleted]
    verb = "would delete" if args.dry_run else "deleted"
    if args.json:
        print_json({"dry_run": args.dry_run, "kept": [str(c.path) for c in keep], "deleted": [str(c.path) for c in delete]})
        return EXIT_OK
    out = table(None, [("name", "left"), ("step", "right"), ("status", "left"), ("action", "left")])
    gone = {c.path for c in delete}
    for info in run.checkpoints:
        action = f"[red]{verb}[/red]" if info.path in gone else "keep"
        out.add_row(info.path.name, number(info.step), info.status, action)
    con = console()
    con.print(out)
    con.print(f"{verb} {len(delete)} checkpoint(s), kept {len(keep)}")
    return EXIT_OK


# ------------------------------------------------------------------------------ predict
def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="predictions of a saved model on .npy/.csv data",
        formatter_class=formatter(),
        description="Load a saved model (any whole-model format) and predict on new data, batch by batch. "
        "Inputs: .npy, or .csv with or without a header row (one --input per model input). Outputs: .npy "
        "(one output), .npz or .csv; without --output the first rows are printed.",
        epilog="Examples:\n  modelkeep predict mysavedmodel --input new.csv --output predictions.csv\n"
        "  modelkeep predict model.keras --input x.npy --batch-size 256 --output y.npy",
    )
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--input", "-i", action="append", required=True, metavar="X", help=".npy or .csv (repeat for several inputs)")
    parser.add_argument("--output", "-o", metavar="Y", help=".npy, .npz or .csv to write")
    parser.add_argument("--batch-size", "-b", type=int, default=32, metavar="B", help="rows per batch (default 32)")
    parser.add_argument("--head", type=int, default=10, metavar="N", help="rows printed without --output (default 10)")
    parser.add_argument("--json", action="store_true", help="print all predictions as JSON")
    parser.add_argument("--allow-unsafe-ops", action="store_true",
                        help="run a SavedModel graph even if it holds file-system, network or Python ops (trusted files only)")
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from modelkeep.tools.predict import predict_files

    with progress() as bar:
        task = bar.add_task(f"loading {args.model}", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description="predicting")

        result = predict_files(args.model, args.input, output=args.output, batch_size=args.batch_size, on_progress=on_progress,
                               allow_unsafe_ops=args.allow_unsafe_ops)
    if args.json:
        print_json({"rows": result.rows, "outputs": dict(zip(result.names, [o.tolist() for o in result.outputs])),
                    "written": str(result.output_path) if result.output_path else None})
        return EXIT_OK
    con = console()
    if result.output_path:
        shapes = ", ".join(f"{n} {tuple(o.shape)}" for n, o in zip(result.names, result.outputs))
        con.print(f"wrote {result.output_path}: {result.rows} rows ({shapes})")
        return EXIT_OK
    _print_head(con, result, args.head)
    return EXIT_OK


def _print_head(con: Any, result: Any, head: int) -> None:
    flat = [o.reshape(len(o), -1) for o in result.outputs]
    columns = [f"{n}[{i}]" if f.shape[1] > 1 else n for n, f in zip(result.names, flat) for i in range(f.shape[1])]
    con.print(f"predictions: first {min(head, result.rows)} of {result.rows} rows")
    out = table(None, [("row", "right")] + [(c, "right") for c in columns[:12]])
    for row in range(min(head, result.rows)):
        values = [v for f in flat for v in f[row]]
        out.add_row(str(row), *(f"{float(v):.6g}" for v in values[:12]))
    con.print(out)


# ------------------------------------------------------------------------------ plot
def _add_plot(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="a run's logged metrics against step, checkpoints and the best one marked",
        formatter_class=formatter(),
        description="Draw the logged metrics of a run's checkpoints against step (one panel per metric family), "
        "each checkpoint a marker, the best one by --monitor starred. PNG, SVG or PDF by the extension.",
        epilog="Example:\n  modelkeep plot run/ -o curves.png --monitor val_loss",
    )
    parser.add_argument("directory")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="image to write (.png, .svg, .pdf)")
    parser.add_argument("--monitor", help="metric that picks the best (default: val_loss if logged, else loss)")
    parser.add_argument("--mode", choices=("auto", "min", "max"), default="auto")
    parser.set_defaults(handler=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modelkeep.tools.plot import plot_run

    info = plot_run(args.directory, args.output, monitor=args.monitor, mode=args.mode)
    best = f", best {Path(info['best']).name} by {info['monitor']}" if info["best"] else ""
    size = human_size(info["size"])
    console().print(f"wrote {info['output']} ({size}): {', '.join(info['metrics'])} over {info['checkpoints']} checkpoints{best}")
    return EXIT_OK
