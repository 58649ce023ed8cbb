"""Files a run leaves behind, each written whole or not at all: results.json, metrics.jsonl, PNG plots,
and model folders swapped into place by rename."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from .files import write_atomically  # noqa: E402


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


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, keeping the previous `target` until the new one is in place."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: Path) -> None:
    """After a crash between the two renames of `replace_folder`, put the previous folder back."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        os.replace(old, target)


def plot_confusion_matrix(matrix, label_names, path, title="Confusion matrix (test)") -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = plt.subplots(figsize=(1.2 * len(label_names) + 3, 1.2 * len(label_names) + 2.5))
    ConfusionMatrixDisplay(confusion_matrix=np.array(matrix),
                           display_labels=list(label_names)).plot(ax=axes, colorbar=False, cmap="Blues")
    axes.set_title(title)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_curves(history: list[dict], path, metrics=("loss", "accuracy", "macro_f1")) -> None:
    """Validation loss and metrics against optimizer steps, with the training loss where it was logged."""
    present = [m for m in metrics if any(m in row for row in history)]
    figure, axes = plt.subplots(1, max(1, len(present)), figsize=(4.5 * max(1, len(present)), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], present):
        steps = [row["step"] for row in history if metric in row]
        axis.plot(steps, [row[metric] for row in history if metric in row], marker="o", label=f"validation {metric}")
        if metric == "loss":
            axis.plot([r["step"] for r in history if "train_loss" in r], [r["train_loss"] for r in history
                                                                          if "train_loss" in r], marker=".",
                      label="train loss")
        axis.set_xlabel("optimizer step")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    _save_figure(figure, path)


def _save_figure(figure, path) -> None:
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)


def summarize_seeds(results: list[dict], keys) -> dict:
    """Mean, min and max of each key over the runs of several seeds (like the seed tutorial's results table)."""
    summary = {}
    for key in keys:
        values = [run[key] for run in results if run.get(key) is not None]
        if values:
            summary[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                            "values": values}
    return summary
