"""Loss-threshold attack (Yeom et al., 2018): members have lower loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medforget.audit.classifier.mia.base import ThresholdAttack


class LossAttack(ThresholdAttack):
    """Score = ``-CE(logits, label)`` per sample."""

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(logits.double(), labels.long(), reduction="none")
