"""Training curves of a run from its checkpoints: logged metrics against step, every
checkpoint marked, the best one starred.

One panel per metric family (``loss`` with ``val_loss``, ``accuracy`` with
``val_accuracy``, ...). Drawn with matplotlib's Agg backend (no display needed).

Example::

    plot_run("run", "curves.png", monitor="val_loss")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelkeep.checkpoint.store import OK
from modelkeep.errors import ModelkeepError
from modelkeep.tools.runs import list_run

MAX_PANELS = 6


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ModelkeepError("plot: matplotlib is not installed; pip install 'modelkeep[plot]'.") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _families(metrics: list[str]) -> dict[str, list[str]]:
    families: dict[str, list[str]] = {}
    for name in metrics:
        families.setdefault(name.removeprefix("val_"), []).append(name)
    ordered = sorted(families, key=lambda f: (f != "loss", f))
    return {f: sorted(families[f], key=lambda m: m.startswith("val_")) for f in ordered[:MAX_PANELS]}


def plot_run(directory: Path | str, output: Path | str, *, monitor: str | None = None, mode: str = "auto") -> dict[str, Any]:
    """Draw the run's logged metrics to ``output`` (PNG, SVG or PDF by its extension)."""
    run = list_run(directory, monitor=monitor, mode=mode)
    points = [c for c in run.checkpoints if c.logs]
    if not points:
        raise ModelkeepError(
            f"plot: no checkpoint in {directory} has logged metrics (found {len(run.checkpoints)} checkpoint(s)). "
            "Checkpoints written by modelkeep.ModelCheckpoint or BackupAndRestore carry them."
        )
    points.sort(key=lambda c: (c.step if c.step is not None else (c.epoch or 0)))
    x_of = (lambda c: c.step) if all(c.step is not None for c in points) else (lambda c: c.epoch or 0)
    x_label = "step" if all(c.step is not None for c in points) else "epoch"
    families = _families(run.metrics)
    plt = _pyplot()
    fig, axes = plt.subplots(len(families), 1, figsize=(8, 2.8 * len(families) + 0.6), sharex=True, squeeze=False)
    for ax, (family, names) in zip(axes[:, 0], families.items()):
        for name in names:
            pts = [c for c in points if isinstance(c.logs.get(name), (int, float))]
            ax.plot([x_of(c) for c in pts], [c.logs[name] for c in pts], marker="o", markersize=4,
                    linestyle="--" if name.startswith("val_") else "-", label=name)
            bad = [c for c in pts if c.status != OK]
            if bad:
                ax.scatter([x_of(c) for c in bad], [c.logs[name] for c in bad], marker="x", s=80, color="red",
                           zorder=5, label=f"{name}: not intact")
        if run.best is not None:
            ax.axvline(x_of(run.best), color="gray", linewidth=0.8, linestyle=":")
            if run.monitor in names:
                ax.scatter([x_of(run.best)], [run.best.logs[run.monitor]], marker="*", s=260, color="gold",
                           edgecolors="black", zorder=6, label=f"best {run.monitor} = {run.best.logs[run.monitor]:.4g}")
        ax.set_ylabel(family)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel(x_label + "  (each marker is a checkpoint)")
    best_text = f"; best: {run.best.path.name} ({run.monitor}, {run.mode})" if run.best else ""
    fig.suptitle(f"{str(directory).rstrip('/').rsplit('/', 1)[-1]}: {len(points)} checkpoints{best_text}", fontsize=10)
    fig.tight_layout()
    from modelkeep.checkpoint import remote

    with remote.local_target(output, metadata={"format": "plot"}) as local:  # a URL: committed once drawn
        fig.savefig(local, dpi=110)
        size = Path(local).stat().st_size
    plt.close(fig)
    return {"output": str(output), "size": size, "checkpoints": len(points), "metrics": run.metrics,
            "best": str(run.best.path) if run.best else None, "monitor": run.monitor}
