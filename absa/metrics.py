"""Metrics from gathered logits and labels: scikit-learn / SciPy do the counting.

Each function takes numpy arrays of ALL evaluation examples (after `gather_for_metrics`) and returns a flat
dict of floats plus, where useful, lists (per-class report, confusion matrix) for results.json.
The loss is computed here from the logits, so it is exact on any number of processes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm

# Metrics where smaller is better; everything else is maximised by model selection.
LOWER_IS_BETTER = {"loss", "mse", "rmse", "mae"}


def single_label_metrics(logits: np.ndarray, labels: np.ndarray, label_names) -> dict:
    """Cross-entropy loss, accuracy, macro P/R/F1, per-class report and confusion matrix.

    Macro averages are over the classes that occur in the labels or the predictions (`macro_classes`), as
    scikit-learn's own default: a class the split does not hold and the model never predicts has no F1, and counting
    it as 0 would cap a perfect model at 2/3 on a positive/negative-only set (data/contrastive). The per-class report
    and the confusion matrix list every class."""
    logits_t = torch.as_tensor(logits, dtype=torch.float32)
    predictions = logits.argmax(axis=-1)
    classes = list(range(len(label_names)))
    present = macro_classes(labels, predictions, len(label_names))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, predictions, labels=present,
                                                                   average="macro", zero_division=0)
    report = skm.classification_report(labels, predictions, labels=classes, target_names=list(label_names),
                                       output_dict=True, zero_division=0)
    return {
        "examples": len(labels),
        "loss": torch.nn.functional.cross_entropy(logits_t, torch.as_tensor(labels)).item(),
        "accuracy": skm.accuracy_score(labels, predictions),
        "macro_precision": precision, "macro_recall": recall, "macro_f1": f1,
        "macro_classes": [list(label_names)[i] for i in present],
        "per_class": {name: {k: report[name][k] for k in ("precision", "recall", "f1-score", "support")}
                      for name in label_names},
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def macro_classes(labels, predictions, count: int) -> list[int]:
    """The class ids that occur in the labels or the predictions: the classes a macro average is over."""
    present = set(np.asarray(labels).tolist()) | set(np.asarray(predictions).tolist())
    return [i for i in range(count) if i in present]


def multi_label_metrics(logits: np.ndarray, labels: np.ndarray, label_names, threshold: float = 0.5) -> dict:
    """BCE loss, micro / macro F1, micro ROC-AUC and subset accuracy at `threshold` on the sigmoid."""
    logits_t = torch.as_tensor(logits, dtype=torch.float32)
    probabilities = torch.sigmoid(logits_t).numpy()
    predictions = (probabilities >= threshold).astype(int)
    labels = labels.astype(int)
    try:
        roc_auc = skm.roc_auc_score(labels, probabilities, average="micro")
    except ValueError:  # a single class present in the labels
        roc_auc = float("nan")
    report = skm.classification_report(labels, predictions, target_names=list(label_names), output_dict=True,
                                       zero_division=0)
    return {
        "examples": len(labels),
        "loss": torch.nn.functional.binary_cross_entropy_with_logits(logits_t, torch.as_tensor(labels).float()).item(),
        "micro_f1": skm.f1_score(labels, predictions, average="micro", zero_division=0),
        "macro_f1": skm.f1_score(labels, predictions, average="macro", zero_division=0),
        "roc_auc": roc_auc,
        "subset_accuracy": skm.accuracy_score(labels, predictions),
        "threshold": threshold,
        "per_class": {name: {k: report[name][k] for k in ("precision", "recall", "f1-score", "support")}
                      for name in label_names},
    }


def best_threshold(logits: np.ndarray, labels: np.ndarray, label_names, metric: str = "micro_f1") -> float:
    """The sigmoid threshold in 0.05 .. 0.95 that maximises `metric` (tuned on validation, never on test)."""
    candidates = np.round(np.arange(0.05, 0.96, 0.05), 2)
    scores = [multi_label_metrics(logits, labels, label_names, t)[metric] for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """MSE (also the loss), RMSE, MAE, Pearson and Spearman correlation."""
    predictions, targets = predictions.reshape(-1).astype(np.float64), targets.reshape(-1).astype(np.float64)
    mse = skm.mean_squared_error(targets, predictions)
    return {
        "examples": len(targets), "loss": mse, "mse": mse, "rmse": float(np.sqrt(mse)), "mae": skm.mean_absolute_error(targets, predictions),
        "pearson": float(stats.pearsonr(predictions, targets)[0]) if predictions.std() > 0 else 0.0,
        "spearman": float(stats.spearmanr(predictions, targets)[0]) if predictions.std() > 0 else 0.0,
    }


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether `new` improves on `best` (None: nothing yet). A NaN (a loss that diverged) is never better, and any
    number is better than a NaN best, which would otherwise stay best for the rest of the run."""
    if best is None:
        return True
    if best != best:
        return new == new
    return new < best if metric in LOWER_IS_BETTER else new > best


def scalar_metrics(metrics: dict) -> dict:
    """The numbers of a metrics dict (for logs, trackers and curves), without reports and matrices."""
    return {k: int(v) if isinstance(v, (int, np.integer)) else float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating, np.integer))}
