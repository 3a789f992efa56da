"""Membership-inference attacks: base class, registry and the common attack metrics.

Convention everywhere: a higher score means "more member-like". An attack turns per-sample model outputs into
scores; :func:`attack_metrics` compares member and non-member scores.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc


class MembershipAttack:
    """A membership-inference attack; subclasses register under their class name."""

    registry: ClassVar[dict[str, type[MembershipAttack]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            MembershipAttack.registry[cls.__name__] = cls

    @abstractmethod
    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample membership scores ``(N,)`` from logits ``(N, C)`` and labels ``(N,)`` (higher = member)."""

    def evaluate(
        self, members: tuple[torch.Tensor, torch.Tensor], nonmembers: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, float]:
        """Attack metrics for ``(logits, labels)`` of members vs non-members."""
        return attack_metrics(self.score(*members), self.score(*nonmembers))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reached at FPR <= ``target`` on an ROC curve (0 if none)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_metrics(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> dict[str, float]:
    """ROC-AUC, TPR at 1% / 0.1% FPR and the member rate (share of members above the non-members' median score)."""
    scores = torch.cat([member_scores, nonmember_scores]).double()
    # torchmetrics squashes scores outside [0, 1] with a sigmoid, which ties large (|s| > ~37) or tiny scores
    # even in float64; the ROC depends only on the order, so use dense ranks scaled to [0, 1] (ties kept).
    ranks = torch.unique(scores, return_inverse=True)[1]
    scores = ranks.double() / max(int(ranks.max()), 1)
    target = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(nonmember_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, target)
    fpr, tpr = fpr.numpy(), tpr.numpy()
    threshold = float(nonmember_scores.double().median())
    return {
        "auc": float(binary_auroc(scores, target)),
        "tpr@1%fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr@0.1%fpr": tpr_at_fpr(fpr, tpr, 0.001),
        "member_rate": float((member_scores.double() > threshold).float().mean()),
        "n_members": len(member_scores),
        "n_nonmembers": len(nonmember_scores),
    }
