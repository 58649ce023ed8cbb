"""What a run reports, each file written whole or not at all: the validation rows as they come (console,
metrics.jsonl, trackers), results.json and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .files import write_atomically


def write_json(path, data) -> None:
    write_atomically(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_jsonl(path, rows) -> None:
    write_atomically(path, "".join(json.dumps(row, default=_jsonable) + "\n" for row in rows))


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def report_evaluation(accelerator, history: list[dict], output_dir: Path) -> None:
    """The last validation row: a line on the console, metrics.jsonl rewritten whole, and the trackers."""
    row = history[-1]
    accelerator.log({**{k: v for k, v in row.items() if isinstance(v, (int, float))}, "is_best": float(row["is_best"])},
                    step=row["step"])
    if accelerator.is_main_process:
        write_jsonl(output_dir / "metrics.jsonl", history)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
        tqdm.write(f"epoch {row['epoch']} step {row['step']}: {shown}{'  (best)' if row['is_best'] else ''}")


def run_summary(accelerator, run, settings, started: float, resumed_from: str | None) -> dict:
    """The fields of results.json both scripts share: model selection, progress, speed, the checkpoint resumed
    from, settings, versions. Epochs count from 1 everywhere (best_epoch, validation_history)."""
    import accelerate
    import datasets
    import transformers

    best_row = next(row for row in run.history if row["step"] == run.best_step)
    return {
        "best_step": best_row["step"], "best_epoch": best_row["epoch"], "best_validation": best_row,
        "epochs_run": run.epoch + (run.examples_in_epoch > 0), "optimizer_steps": run.step,
        "train_samples_per_second": run.train_samples / max(run.train_seconds, 1e-9),
        "train_seconds": run.train_seconds, "wall_seconds": time.time() - started,
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "distributed_type": str(accelerator.distributed_type), "validation_history": run.history,
        "resumed_from": resumed_from, "settings": asdict(settings),
        "versions": {"python": platform.python_version(),
                     **{module.__name__: module.__version__ for module in (torch, transformers, accelerate, datasets)}},
    }


def pyplot():
    """matplotlib.pyplot drawing to files: imported when a plot is drawn, not by every process (0.6 s each)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot_confusion_matrix(matrix, label_names, path, title="Confusion matrix (test)") -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = pyplot().subplots(figsize=(1.2 * len(label_names) + 3, 1.2 * len(label_names) + 2.5))
    ConfusionMatrixDisplay(confusion_matrix=np.array(matrix),
                           display_labels=list(label_names)).plot(ax=axes, colorbar=False, cmap="Blues")
    axes.set_title(title)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_curves(history: list[dict], path, metrics=("loss", "accuracy", "macro_f1")) -> None:
    """Validation loss and metrics against optimizer steps, with the training loss where it was logged."""
    present = [m for m in metrics if any(m in row for row in history)]
    figure, axes = pyplot().subplots(1, max(1, len(present)), figsize=(4.5 * max(1, len(present)), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], present):
        steps = [row["step"] for row in history if metric in row]
        axis.plot(steps, [row[metric] for row in history if metric in row], marker="o", label=f"validation {metric}")
        if metric == "loss":
            trained = [row for row in history if "train_loss" in row]
            axis.plot([r["step"] for r in trained], [r["train_loss"] for r in trained], marker=".", label="train loss")
        axis.set_xlabel("optimizer step")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    _save_figure(figure, path)


def _save_figure(figure, path) -> None:
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=120)
    pyplot().close(figure)
    os.replace(temporary, path)
