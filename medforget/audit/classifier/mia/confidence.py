"""Confidence-threshold attack (Salem et al., 2019; Song & Mittal, 2021): members get a higher probability on their
true class."""

from __future__ import annotations

import torch

from medforget.audit.classifier.mia.base import ThresholdAttack, true_class_prob


class ConfidenceAttack(ThresholdAttack):
    """Score = ``p_y``, the softmax probability of the true label."""

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return true_class_prob(logits, labels)
