"""Metrics of ALL evaluation examples (numpy arrays, after `gather_for_metrics`), counted by scikit-learn / SciPy:
flat dicts of floats plus reports and matrices for results.json. The loss comes from the logits, so it is exact on
any number of processes."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as skm

LOWER_IS_BETTER = {"loss", "mse", "rmse", "mae"}  # every other metric is maximised by model selection


def single_label_metrics(logits: np.ndarray, labels: np.ndarray, label_names) -> dict:
    """Loss, accuracy, macro P/R/F1 over the classes present (`macro_classes`, scikit-learn's own default: an absent
    class that is never predicted has no F1, and counting it as 0 would cap a perfect model at 2/3 on a
    positive/negative-only set), per-class report and confusion matrix of every class."""
    predictions = logits.argmax(axis=-1)
    classes = list(range(len(label_names)))
    present = macro_classes(labels, predictions, len(label_names))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(labels, predictions, labels=present,
                                                                   average="macro", zero_division=0)
    loss = torch.nn.functional.cross_entropy(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(labels))
    return {
        "examples": len(labels), "loss": loss.item(), "accuracy": skm.accuracy_score(labels, predictions),
        "macro_precision": precision, "macro_recall": recall, "macro_f1": f1,
        "macro_classes": [list(label_names)[i] for i in present],
        "per_class": _per_class(labels, predictions, label_names, labels=classes),
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
    return {
        "examples": len(labels),
        "loss": torch.nn.functional.binary_cross_entropy_with_logits(logits_t, torch.as_tensor(labels).float()).item(),
        "micro_f1": skm.f1_score(labels, predictions, average="micro", zero_division=0),
        "macro_f1": skm.f1_score(labels, predictions, average="macro", zero_division=0),
        "roc_auc": roc_auc, "subset_accuracy": skm.accuracy_score(labels, predictions), "threshold": threshold,
        "per_class": _per_class(labels, predictions, label_names),
    }


def _per_class(truth, predictions, label_names, **kwargs) -> dict:
    report = skm.classification_report(truth, predictions, target_names=list(label_names), output_dict=True,
                                       zero_division=0, **kwargs)
    return {name: {k: report[name][k] for k in ("precision", "recall", "f1-score", "support")} for name in label_names}


def best_threshold(logits: np.ndarray, labels: np.ndarray, label_names, metric: str = "micro_f1") -> float:
    """The sigmoid threshold in 0.05 .. 0.95 that maximises `metric` (tuned on validation, never on test)."""
    candidates = np.round(np.arange(0.05, 0.96, 0.05), 2)
    scores = [multi_label_metrics(logits, labels, label_names, t)[metric] for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """MSE (also the loss), RMSE, MAE, Pearson and Spearman correlation (0 for constant predictions)."""
    predictions, targets = predictions.reshape(-1).astype(np.float64), targets.reshape(-1).astype(np.float64)
    mse = skm.mean_squared_error(targets, predictions)
    varies = predictions.std() > 0
    return {"examples": len(targets), "loss": mse, "mse": mse, "rmse": float(np.sqrt(mse)),
            "mae": skm.mean_absolute_error(targets, predictions),
            "pearson": float(stats.pearsonr(predictions, targets)[0]) if varies else 0.0,
            "spearman": float(stats.spearmanr(predictions, targets)[0]) if varies else 0.0}


def is_better(metric: str, new: float, best: float | None) -> bool:
    """A NaN (a diverged loss) is never better, and anything beats a NaN best, which would otherwise stay best."""
    if best is None:
        return True
    if best != best:
        return new == new
    return new < best if metric in LOWER_IS_BETTER else new > best


def scalar_metrics(metrics: dict) -> dict:
    """The numbers of a metrics dict (for logs, trackers and curves), without reports and matrices."""
    return {k: int(v) if isinstance(v, (int, np.integer)) else float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating, np.integer))}
