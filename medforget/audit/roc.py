"""ROC curves of membership scores, shared by both audits: members are positives, a higher score is more
member-like, and only the order of the scores matters."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

FPR_TARGETS = {"tpr@1%fpr": 0.01, "tpr@0.1%fpr": 0.001}


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float, nonmember_units: int | None = None) -> float:
    """Highest TPR reached at FPR <= ``target`` on an ROC curve (0 if none); NaN (``n/a``) when fewer than
    ``10 / target`` independent non-member units (patients) are behind the curve, where the FPR cannot be resolved."""
    if nonmember_units is not None and nonmember_units < 10.0 / target - 1e-9:
        return float("nan")
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def rank_scores(scores: torch.Tensor) -> torch.Tensor:
    # torchmetrics squashes scores outside [0, 1] with a sigmoid, which ties large (|s| > ~37) or tiny scores
    # even in float64; the ROC depends only on the order, so use dense ranks scaled to [0, 1] (ties kept).
    ranks = torch.unique(scores.double(), return_inverse=True)[1]
    return ranks.double() / max(int(ranks.max()), 1) if len(ranks) else ranks.double()


def roc(member_scores: torch.Tensor | np.ndarray, nonmember_scores: torch.Tensor | np.ndarray
        ) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of members (positives) vs non-members (tensors or arrays)."""
    member_scores, nonmember_scores = torch.as_tensor(member_scores), torch.as_tensor(nonmember_scores)
    scores = rank_scores(torch.cat([member_scores.double(), nonmember_scores.double()]))
    target = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(nonmember_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, target)
    return fpr.numpy(), tpr.numpy()
