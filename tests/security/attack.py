"""Run one hostile entry through modelkeep (library, CLI, server) or through Keras alone.

Each ``check_*`` returns ``(safe, detail)``. Safe means: the call refused with a
``ModelkeepError`` whose message names the file (the CLI: exit 1, one ``modelkeep ...: error:``
line naming it, no traceback), nothing ran (the sentinel file does not exist), and the secret
marker appears in no message or output. Entries that hold a good checkpoint beside a bad one
must load or serve the good one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from corpus import KERAS_IGNORES, SECRET, Hostile, build_model  # noqa: E402


def _leaks(text: str) -> bool:
    return SECRET in text or SECRET[:20] in text


def _names(entry: Hostile, text: str) -> bool:
    return entry.path.name in text


def _target(entry: Hostile) -> Path:
    return entry.extra.get("prefix", entry.path)


def _library_call(entry: Hostile, op: str, ctx: dict[str, Any]) -> Any:
    import modelkeep as mk
    from modelkeep.tools.inspect import describe
    from modelkeep.tools.predict import predict_files
    from modelkeep.tools.verify import verify_paths

    target = _target(entry)
    if op == "load_weights":
        model = build_model()
        mk.load_weights(model, target)
        return [np.asarray(w) for w in model.get_weights()]
    if op == "load_model":
        return mk.load_model(target)
    if op == "describe":
        return describe(target)
    if op == "verify":
        return verify_paths([target])
    if op == "list":
        return mk.list_checkpoints(target)
    if op == "predict":
        return predict_files(target, [ctx["input"]])
    if op == "predict_input":
        return predict_files(ctx["good_keras"], [target])
    if op == "serve":
        return _serve_once(target)
    raise ValueError(op)


def _serve_once(path: Path, *, allow_unsafe_ops: bool = False, answer_one: bool = False) -> Any:
    """Poll a served path once (as ``modelkeep serve`` does); ``answer_one``: then run one request
    of sample rows through every loaded version (a graph-only model runs nothing before that)."""
    from modelkeep.serving.metrics import Metrics
    from modelkeep.serving.versions import ModelSource
    from modelkeep.serving.watcher import Policy, VersionManager

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("modelkeep.serve")
    logger.addHandler(handler)
    try:
        manager = VersionManager("m", ModelSource.detect(path), Policy.parse("newest:8"), Metrics(), max_batch_size=2,
                                 allow_unsafe_ops=allow_unsafe_ops)

        async def run() -> dict[int, Any]:
            await manager.poll_once()
            loaded = dict(manager.loaded)
            if answer_one:
                for version in loaded.values():
                    version.predictor.run(version.predictor.sample_inputs(1))
            await manager.close()
            return loaded

        candidates = manager.source.scan()
        loaded = asyncio.run(run())
    finally:
        logger.removeHandler(handler)
    return {"loaded": sorted(loaded), "log": records, "candidates": len(candidates)}


def check_library(entry: Hostile, op: str, ctx: dict[str, Any]) -> tuple[bool, str]:
    """One library entry point on one hostile entry."""
    from modelkeep.errors import ModelkeepError

    sentinel: Path = ctx["sentinel"]
    try:
        with _quiet():
            result = _library_call(entry, op, ctx)
    except ModelkeepError as exc:
        text = str(exc)
        if sentinel.exists():
            return False, f"executed: SENTINEL written; then {type(exc).__name__}: {text[:150]}"
        if _leaks(text):
            return False, f"leaked the secret in: {text[:150]}"
        if not _names(entry, text):
            return False, f"{type(exc).__name__} does not name the file: {text[:200]}"
        return True, f"{type(exc).__name__}: {text[:160]}"
    except BaseException as exc:  # noqa: BLE001 - any other exception is the finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        return False, f"not a ModelkeepError: {type(exc).__name__}: {str(exc)[:200]}"
    if sentinel.exists():
        return False, "executed: SENTINEL written"
    if _leaks(repr(result)):
        return False, "leaked the secret into the result"
    return _judge_result(entry, op, result)


def _judge_result(entry: Hostile, op: str, result: Any) -> tuple[bool, str]:
    """A call that did not raise: fine only where the right answer is to skip the bad part, or
    where the entry point runs nothing of the file (``entry.tolerant``)."""
    good_step = entry.extra.get("good_step")
    if op in entry.tolerant:
        return True, f"{op} succeeded and ran nothing"
    if op == "verify":
        bad = [r for r in result if not r.ok]
        if bad and all(_names(entry, str(r.path) + " " + (r.problem or "")) for r in bad):
            return True, f"verify: FAILED: {bad[0].problem[:150]}"
        return False, f"verify passed: {[r.as_dict() for r in result][:2]}"
    if op == "list":
        flagged = [i for i in result if i.status != "ok"]
        good = [i for i in result if i.status == "ok"]
        if flagged and (good_step is None or [i.step for i in good] == [good_step]):
            return True, f"listed, bad one {flagged[0].status}: {str(flagged[0].problem)[:140]}"
        if not result:
            return True, "listed nothing"
        return False, f"list accepted it: {[(i.path.name, i.status) for i in result]}"
    if op == "serve":
        if result["loaded"] == ([good_step] if good_step is not None else []):
            said = [r for r in result["log"] if "not serving" in r]
            if good_step is None and result["candidates"] and not any(_names(entry, r) for r in said):
                return False, f"not served, but no log line names it: {result['log'][:2]}"
            return True, f"served {result['loaded']}; " + (said[0][:140] if said else "")
        return False, f"served versions {result['loaded']}"
    if op == "load_weights" and good_step is not None:
        return True, "loaded the good checkpoint, skipped the bad one"
    return False, f"{op} accepted it"


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------ CLI
def cli_commands(entry: Hostile, ctx: dict[str, Any]) -> list[list[str]]:
    """Every CLI command that applies to the entry."""
    t = str(_target(entry))
    out = ctx["tmp"] / f"out-{entry.name}"
    if entry.kind == "input":
        return [["predict", str(ctx["good_keras"]), "--input", t]]
    cmds = [["inspect", t], ["verify", t], ["diff", t, str(ctx["good_st"])], ["convert", t, str(out) + ".safetensors"]]
    if entry.kind in ("model", "savedmodel"):
        cmds.append(["predict", t, "--input", str(ctx["input"])])
    if entry.kind == "run":
        cmds = [["ls", t], ["verify", t], ["prune", t, "--keep-last", "1", "--dry-run"]]
    return cmds


def check_cli(entry: Hostile, argv: list[str], ctx: dict[str, Any]) -> tuple[bool, str]:
    """One CLI command, run in this process through ``modelkeep.cli.main.main``."""
    from modelkeep.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _quiet():
            code = main(argv)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        return False, f"escaped main(): {type(exc).__name__}: {str(exc)[:150]}"
    text = out.getvalue() + err.getvalue()
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("modelkeep ")]
    if ctx["sentinel"].exists():
        return False, "executed: SENTINEL written"
    if _leaks(text):
        return False, "leaked the secret"
    if "Traceback" in text:
        return False, "printed a traceback"
    if argv[0] in ("ls", "prune") and code == 0:
        flagged = any(word in out.getvalue() for word in ("corrupt", "refused", "incomplete", "no manifest")) or "0 checkpoint" in out.getvalue()
        return (flagged, f"exit 0, bad entry flagged={flagged}")
    if argv[0] in entry.tolerant and code == 0:
        return True, f"{argv[0]} exit 0, ran nothing"
    if argv[0] == "verify":
        named = _names(entry, text)
        return (code == 1 and named), f"verify exit {code}, names the file: {named}"
    if code != 1 or len(lines) != 1:
        return False, f"exit {code}, {len(lines)} error line(s): {err.getvalue()[-200:]!r} {out.getvalue()[-200:]!r}"
    if not _names(entry, lines[0]):
        return False, f"error line does not name the file: {lines[0][:200]}"
    return True, lines[0][:160]


# ------------------------------------------------------------------------------ Keras alone
def keras_attempt(entry: Hostile, ctx: dict[str, Any]) -> tuple[bool, str]:
    """What Keras 3 alone does with the file through its own API for that kind of file."""
    import keras

    target = entry.keras_path or _target(entry)
    sentinel: Path = ctx["sentinel"]
    try:
        with _quiet():
            if entry.kind == "savedmodel":
                layer = keras.layers.TFSMLayer(str(target), call_endpoint="serving_default")
                result: Any = layer(np.ones((1, 4), np.float32))
            elif entry.kind == "input":
                result = np.load(target)  # numpy's default: allow_pickle=False
            elif entry.keras == "load_model":
                result = keras.saving.load_model(target)
            elif entry.kind == "run" and Path(target).is_dir():
                model = build_model()
                import tensorflow as tf

                latest = tf.train.latest_checkpoint(str(target))  # Keras 3 has no directory loading: TF's way
                if latest is None:
                    raise FileNotFoundError(f"no checkpoint named in {target}")
                tf.train.Checkpoint(model=model).restore(latest).expect_partial()
                result = model.get_weights()
            else:
                model = build_model()
                model.load_weights(target)
                result = model.get_weights()
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        text = f"{type(exc).__name__}: {exc}"
        if sentinel.exists():
            return False, "executed: SENTINEL written; " + text[:120]
        if isinstance(exc, MemoryError) or "allocate" in text:
            return False, "memory: " + text[:150]
        if _leaks(text):
            return False, "leaked the secret: " + text[:120]
        return True, text[:160]
    if sentinel.exists():
        return False, "executed: SENTINEL written"
    if _leaks(repr(result)):
        return False, "leaked the secret into the result"
    if entry.name in KERAS_IGNORES:
        return True, "loaded it; the hostile part is one Keras never reads"
    return False, "loaded it"
