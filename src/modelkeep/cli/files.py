"""``modelkeep ls | inspect | verify | diff`` (read-only, each with ``--json``), and the
registration of ``convert | prune | predict | plot`` (``cli/files_ops.py``).

Thin: parse arguments, call ``modelkeep.tools``, print. Exit codes: 0 ok; 1 a check
failed or an operation failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
from typing import Any

from modelkeep.cli import files_ops
from modelkeep.cli._output import (
    EXIT_FAILED,
    EXIT_OK,
    console,
    formatter,
    human_age,
    human_size,
    number,
    print_json,
    progress,
    table,
)

MAX_METRIC_COLUMNS = 6


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ls, inspect, verify, diff here and convert, prune, predict, plot from files_ops."""
    _add_ls(subparsers)
    _add_inspect(subparsers)
    _add_verify(subparsers)
    _add_diff(subparsers)
    files_ops.add_parsers(subparsers)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print parseable JSON on stdout instead of tables")


# ------------------------------------------------------------------------------ ls
def _add_ls(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ls", help="the checkpoints of a directory, newest first, the best one marked",
        formatter_class=formatter(),
        description="List a directory's checkpoints newest first: step, epoch, logged metrics, size, age, "
        "format and status (ok / corrupt / incomplete; every checksum is checked). The best one by "
        "--monitor is marked with *.",
        epilog="Examples:\n  modelkeep ls run/\n  modelkeep ls run/ --monitor val_accuracy --json",
    )
    parser.add_argument("directory", help="a directory of checkpoints (a run, a backup directory)")
    parser.add_argument("--monitor", help="metric that ranks checkpoints (default: val_loss if logged, else loss)")
    parser.add_argument("--mode", choices=("auto", "min", "max"), default="auto", help="best is the lowest (min) or highest (max)")
    parser.add_argument("--no-verify", action="store_true", help="skip the checksums (faster on large runs)")
    _json_flag(parser)
    parser.set_defaults(handler=run_ls)


def run_ls(args: argparse.Namespace) -> int:
    from modelkeep.tools.runs import list_run

    run = list_run(args.directory, monitor=args.monitor, mode=args.mode, verify=not args.no_verify)
    if args.json:
        print_json(run.as_dict())
        return EXIT_OK
    metrics = run.metrics[:MAX_METRIC_COLUMNS]
    columns = [("", "left"), ("name", "left"), ("step", "right"), ("epoch", "right")]
    columns += [(m, "right") for m in metrics] + [("size", "right"), ("age", "right"), ("format", "left"), ("status", "left")]
    out = table(f"{len(run.checkpoints)} checkpoint(s) in {run.directory}, newest first", columns)
    problems = []
    for info in run.checkpoints:
        status = {"ok": "[green]ok[/green]", "corrupt": "[red]corrupt[/red]"}.get(info.status, f"[yellow]{info.status}[/yellow]")
        if info.status == "incomplete" and (info.problem or "").startswith("no manifest"):
            status = "[yellow]no manifest[/yellow]"  # complete files saved without one (save_weights)
        if info.problem and "no manifest" not in status:
            problems.append(f"{info.path.name}: {info.problem}")
        out.add_row("*" if info is run.best else "", info.path.name, number(info.step), number(info.epoch),
                    *(number(info.logs.get(m)) for m in metrics), human_size(info.size), human_age(info.wall_time),
                    info.format, status)
    con = console()
    con.print(out)
    if run.best is not None:
        con.print(f"* best by {run.monitor} ({run.mode}): {run.best.path.name}")
    for line in problems:
        con.print(f"[yellow]![/yellow] {line}")
    return EXIT_OK


# ------------------------------------------------------------------------------ inspect
def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="what a saved file holds: format, model, variables, optimizer, metadata, signatures",
        formatter_class=formatter(),
        description="Describe saved files: format and files; model summary (layers, output shapes, parameters) "
        "when the file has a config; every variable with shape, dtype and size; optimizer and its state; "
        "metadata; and for SavedModel directories the serving signatures.",
        epilog="Examples:\n  modelkeep inspect mysavedmodel\n  modelkeep inspect saved_modelname model.keras --json",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="file, TF checkpoint prefix, or directory")
    parser.add_argument("--max-variables", type=int, default=40, metavar="N", help="variables shown in the table (default 40; --json shows all)")
    parser.add_argument("--json", action="store_true", help="print parseable JSON on stdout: one object, or a list of them for several PATHs")
    parser.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from modelkeep.tools.light import describe_light  # .keras/.h5/.safetensors without TensorFlow

    infos = [describe_light(p) for p in args.paths]
    if args.json:
        print_json(infos if len(infos) > 1 else infos[0])
        return EXIT_OK
    con = console()
    for info in infos:
        _print_description(con, info, args.max_variables)
    return EXIT_OK


def _print_description(con: Any, info: dict[str, Any], max_variables: int) -> None:
    files = ", ".join(f"{f['name']} ({human_size(f['size'])})" for f in info["files"])
    con.print(f"[bold]{info['path']}[/bold]: {info['format']}, {human_size(info['total_size'])} in {len(info['files'])} file(s): {files}")
    if info.get("note"):
        con.print(f"[yellow]note:[/yellow] {info['note']}")
    model = info["model"]
    if model:
        out = table(f"Model: {model['class']} '{model['name']}'", [("layer", "left"), ("class", "left"), ("output shape", "left"), ("params", "right")])
        for layer in model["layers"]:
            out.add_row(layer["name"], layer["class"], layer["output_shape"] or "-", number(layer["params"]))
        con.print(out)
        if model.get("total_params") is not None:
            con.print(f"  parameters: {model['total_params']:,} ({model['trainable_params']:,} trainable)")
        if model.get("note"):
            con.print(f"  ({model['note']})")
    else:
        con.print("Model: no architecture in this file (weights only)")
    variables = info["variables"]
    if max_variables <= 0:
        con.print(f"Variables: {len(variables)} ({human_size(sum(v['size'] for v in variables))}; --max-variables N lists them)")
        _print_optimizer_and_metadata(con, info)
        return
    out = table(f"Variables: {len(variables)}", [("name", "left"), ("shape", "left"), ("dtype", "left"), ("size", "right")])
    for var in variables[:max_variables]:
        out.add_row(var["name"], str(tuple(var["shape"])), var["dtype"], human_size(var["size"]))
    con.print(out)
    if len(variables) > max_variables:
        con.print(f"  ... {len(variables) - max_variables} more (--max-variables N, or --json)")
    _print_optimizer_and_metadata(con, info)


def _print_optimizer_and_metadata(con: Any, info: dict[str, Any]) -> None:
    opt = info["optimizer"]
    if opt:
        settings = ", ".join(f"{k}={number(v)}" for k, v in opt["config"].items())
        con.print(f"Optimizer: {opt['class'] or '?'}({settings}); {opt['variables']} state variables "
                  f"({human_size(opt['bytes'])}), iterations={number(opt['iterations'])}")
    else:
        con.print("Optimizer: none saved")
    if info["compile"]:
        con.print("Compiled with: " + ", ".join(f"{k}={v}" for k, v in info["compile"].items()))
    if info["metadata"]:
        out = table("Metadata", [("key", "left"), ("value", "left")])
        for key, value in info["metadata"].items():
            out.add_row(key, _metadata_value(key, value))
        con.print(out)
    for name, sig in (info["signatures"] or {}).items():
        out = table(f"Signature '{name}'", [("", "left"), ("name", "left"), ("dtype", "left"), ("shape", "left")])
        for kind in ("inputs", "outputs"):
            for tensor, spec in sig[kind].items():
                shape = spec["shape"]
                text = "unknown rank" if shape is None else "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
                out.add_row(kind[:-1], tensor, spec["dtype"], text)
        con.print(out)


def _metadata_value(key: str, value: Any) -> str:
    import json
    from datetime import datetime, timezone

    if key in ("created", "wall_time") and isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)[:200]
    return number(value)


# ------------------------------------------------------------------------------ verify
def _add_verify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check checksums and completeness; exit 1 naming what is wrong",
        formatter_class=formatter(),
        description="Check that saved files are complete and intact: the manifest (size and CRC-32 of every "
        "file) where there is one, and the format's own checks (TF checkpoint and SavedModel crc32c, .keras "
        "zip CRC-32, HDF5 and safetensors structure and length). A directory checks every checkpoint in it.\n"
        "Exit status: 0 all intact, 1 something is wrong (each problem is named).",
        epilog="Examples:\n  modelkeep verify run/\n  modelkeep verify saved_modelname model.keras --json",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="file, TF checkpoint prefix, SavedModel or checkpoint directory")
    _json_flag(parser)
    parser.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from modelkeep.tools.verify import verify_paths

    with progress(transient=True) as bar:
        task = bar.add_task("verifying", total=None)
        results = verify_paths(args.paths, on_item=lambda path: bar.update(task, advance=1, description=f"verifying {path}"))
    failed = [r for r in results if not r.ok]
    if args.json:
        print_json({"ok": not failed, "checked": len(results), "failed": len(failed), "results": [r.as_dict() for r in results]})
        return EXIT_FAILED if failed else EXIT_OK
    out = table(None, [("path", "left"), ("format", "left"), ("status", "left"), ("checks", "left")])
    for r in results:
        detail = r.problem if not r.ok else "; ".join(r.checks)
        out.add_row(str(r.path), r.format, "[green]ok[/green]" if r.ok else "[red]FAILED[/red]", detail)
    con = console()
    con.print(out)
    if failed:
        con.print(f"[red]{len(failed)} of {len(results)} failed[/red]: " + "; ".join(f"{r.path}: {r.problem}" for r in failed))
        return EXIT_FAILED
    con.print(f"[green]all {len(results)} intact[/green]")
    return EXIT_OK


# ------------------------------------------------------------------------------ diff
def _add_diff(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff", help="variables added, removed, reshaped, and how much each changed",
        formatter_class=formatter(),
        description="Compare two saved files of any formats variable by variable: added, removed, reshaped, "
        "and per variable the max absolute and relative (max|a-b| / max|a|) difference. Identical files say so.\n"
        "Exit status: 0 whether or not they differ (use --exit-code for 1 when they differ).",
        epilog="Examples:\n  modelkeep diff run/ckpt-000000010 run/ckpt-000000020\n  modelkeep diff model.keras exported/ --json",
    )
    parser.add_argument("a", metavar="A")
    parser.add_argument("b", metavar="B")
    parser.add_argument("--all", action="store_true", help="list equal variables too")
    parser.add_argument("--like", metavar="MODEL", help="a saved whole model to read .weights.h5 files through")
    parser.add_argument("--exit-code", action="store_true", help="exit 1 when the files differ (like git diff)")
    _json_flag(parser)
    parser.set_defaults(handler=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    from modelkeep.tools.light import diff_light  # .keras/.h5/.safetensors without TensorFlow

    report = diff_light(args.a, args.b, like=args.like)
    code = EXIT_FAILED if args.exit_code and not report.identical else EXIT_OK
    if args.json:
        print_json(report.as_dict())
        return code
    con = console()
    shown = [v for v in report.variables if args.all or v.status != "equal"]
    if shown:
        out = table(f"A = {report.a} ({report.format_a})\nB = {report.b} ({report.format_b})",
                    [("status", "left"), ("variable", "left"), ("shape A", "left"), ("shape B", "left"), ("max abs", "right"), ("max rel", "right")])
        for v in shown:
            shape_a = "-" if v.shape_a is None else str(tuple(v.shape_a))
            shape_b = "-" if v.shape_b is None else str(tuple(v.shape_b))
            out.add_row(v.status, v.name, shape_a, shape_b, number(v.max_abs), number(v.max_rel))
        con.print(out)
    counts = report.as_dict()["counts"]
    matched = " (matched by position: the names differ)" if report.matched_by == "position" else ""
    if report.identical:
        con.print(f"identical: all {counts['equal']} variables equal (same shape, dtype and values){matched}")
    else:
        con.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + matched)
        groups = report.groups()
        for group, by_status in (groups.items() if len(groups) > 1 else ()):
            verdict = "identical" if set(by_status) == {"equal"} else ", ".join(f"{n} {s}" for s, n in by_status.items())
            con.print(f"  {group}: {verdict}")
    if report.config_equal is False:
        con.print("the model configs differ")
    return code
