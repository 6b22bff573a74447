"""TF Serving's ``ModelServerConfig``: read it, apply it to a running server, re-read it.

* ``ModelEntry``: one served model (name, base path, version policy, version labels);
* ``read_model_config`` / ``entries_from_proto``: a ``--model_config_file`` text proto (or a
  ``HandleReloadConfigRequest``'s config) → entries; policies ``latest { num_versions }``,
  ``all``, ``specific { versions }``; a parse error carries TF Serving's text;
* ``apply_entries``: add the models that are new, stop those that are gone, restart those
  whose path or policy changed, replace the labels; requests to other models go on;
* ``watch_config``: re-read the file every ``--model_config_file_poll_wait_seconds``.

Example::

    entries = read_model_config("models.config")
    await apply_entries(ctx, entries)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkeep.errors import ModelkeepError

log = logging.getLogger("modelkeep.serve")


@dataclass
class ModelEntry:
    """One served model: a name, a path, a version policy, version labels."""

    name: str
    path: str | Path
    policy: str = "latest"
    labels: dict[str, int] | None = None


def entries_from_proto(config: Any, where: str = "the model config") -> list[ModelEntry]:
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise ModelkeepError(f"{where}: expected model_config_list with at least one config.")
    entries = []
    for c in config.model_config_list.config:
        if c.model_platform not in ("", "tensorflow"):
            raise ModelkeepError(f"{where}: model {c.name!r} has platform {c.model_platform!r}; only 'tensorflow' is served.")
        policy = c.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            text = "all"
        elif kind == "specific":
            text = "specific:" + ",".join(str(v) for v in policy.specific.versions)
        elif kind == "latest" and policy.latest.num_versions > 1:
            text = f"newest:{policy.latest.num_versions}"
        else:
            text = "latest"
        entries.append(ModelEntry(c.name, c.base_path, text, dict(c.version_labels)))
    return entries


def read_model_config(path: str | Path) -> list[ModelEntry]:
    """The entries of a ModelServerConfig text file (TF Serving's parse error text when it is not one)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ModelkeepError(f"--model_config_file={path}: cannot read it ({exc.strerror}).") from None
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ModelkeepError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {exc} (modelkeep: --model_config_file={path})"
        ) from None
    return entries_from_proto(config, f"--model_config_file={path}")


def _manager(ctx: Any, entry: ModelEntry) -> Any:
    from modelkeep.serving.versions import ModelSource
    from modelkeep.serving.watcher import Policy, VersionManager

    config = ctx.serve_config
    return VersionManager(
        entry.name, ModelSource.detect(entry.path), Policy.parse(entry.policy), ctx.metrics,
        max_batch_size=config.max_batch_size, batch_timeout_s=config.batch_timeout_ms / 1000.0,
        allow_unsafe_ops=config.allow_unsafe_ops,
    )


async def apply_entries(ctx: Any, entries: list[ModelEntry]) -> None:
    """Make the running server serve exactly ``entries`` (new ones are loading when this returns)."""
    wanted = {e.name: e for e in entries}
    managers = dict(ctx.managers)
    for name in list(managers):
        old, new = ctx.entries.get(name), wanted.get(name)
        if new is not None and old is not None and (str(old.path), old.policy) == (str(new.path), new.policy):
            continue  # unchanged (labels may change: replaced below)
        manager = managers.pop(name)
        ctx.managers = dict(managers)
        task = ctx.pollers.pop(name, None)
        if task is not None:
            task.cancel()
        await manager.close()
        log.warning("serve: model '%s' unloaded by the model config", name)
    for name, entry in wanted.items():
        if name not in managers:
            manager = _manager(ctx, entry)
            managers[name] = manager
            ctx.pollers[name] = asyncio.get_running_loop().create_task(manager.run(ctx.serve_config.poll_seconds, ctx.stop))
            log.warning("serve: model '%s' from %s added by the model config", name, entry.path)
    ctx.managers = managers
    ctx.manager = next(iter(managers.values()))
    ctx.labels = {e.name: dict(e.labels or {}) for e in entries}
    ctx.entries = dict(wanted)


async def watch_config(ctx: Any, path: str | Path, period: float) -> None:
    """Re-read ``path`` every ``period`` seconds; apply it when it changed (a bad file is logged, not applied)."""
    last = Path(path).read_text()
    while not ctx.stop.is_set():
        try:
            await asyncio.wait_for(ctx.stop.wait(), period)
            return
        except asyncio.TimeoutError:
            pass
        try:
            text = Path(path).read_text()
            if text == last:
                continue
            last = text
            await apply_entries(ctx, read_model_config(path))
        except Exception as exc:  # noqa: BLE001 - the server keeps its models on a bad config
            log.warning("serve: model config %s not applied: %s", path, exc)
