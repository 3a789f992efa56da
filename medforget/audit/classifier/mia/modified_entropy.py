"""Modified-entropy attack (Song & Mittal, 2021): entropy that also counts whether the confident class is the right
one, so a confidently wrong prediction looks like a non-member."""

from __future__ import annotations

import torch

from medforget.audit.classifier.mia.base import ThresholdAttack, modified_entropy


class ModifiedEntropyAttack(ThresholdAttack):
    """Score = ``-Mentr(p, y)`` with ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``."""

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -modified_entropy(logits, labels)
