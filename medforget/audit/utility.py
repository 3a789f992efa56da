"""Utility metrics (macro one-vs-rest ROC-AUC, macro F1, accuracy) on torchmetrics, matching scikit-learn."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_accuracy, multiclass_stat_scores


def macro_auroc(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Macro one-vs-rest ROC-AUC over the classes that have both positives and negatives in ``target``.

    Equals ``sklearn.metrics.roc_auc_score(target, probs, multi_class="ovr", average="macro")`` when every class is
    present; on small subsets (a forget set may miss a class) the absent classes are skipped instead of failing.
    Returns ``nan`` if no class qualifies.
    """
    aucs = []
    for c in range(probs.shape[1]):
        positives = target == c
        if 0 < int(positives.sum()) < len(target):
            aucs.append(binary_auroc(probs[:, c], positives.long()))
    return float(torch.stack(aucs).mean()) if aucs else float("nan")


def macro_f1(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Macro F1 over the labels present in ``target`` or ``preds`` (scikit-learn's ``f1_score(average="macro")``)."""
    stats = multiclass_stat_scores(preds, target, num_classes=num_classes, average="none")  # (C, 5): tp fp tn fn sup
    tp, fp, fn = stats[:, 0].float(), stats[:, 1].float(), stats[:, 3].float()
    present = (tp + fp + fn) > 0
    f1 = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.zeros_like(tp))
    return float(f1[present].mean()) if bool(present.any()) else float("nan")


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``{"auc", "f1", "accuracy"}`` of logits ``(N, C)`` against integer targets ``(N,)``."""
    logits, target = logits.float(), target.long()
    num_classes = logits.shape[1]
    probs = logits.softmax(-1)
    preds = probs.argmax(-1)
    return {
        "auc": macro_auroc(probs, target),
        "f1": macro_f1(preds, target, num_classes),
        "accuracy": float(multiclass_accuracy(preds, target, num_classes=num_classes, average="micro")),
    }
