"""Entropy-threshold attack (Salem et al., 2019): members get more confident (lower-entropy) predictions. It ignores
the label, so it also works when labels are unknown."""

from __future__ import annotations

import torch

from medforget.audit.classifier.mia.base import ThresholdAttack, entropy


class EntropyAttack(ThresholdAttack):
    """Score = ``-H(softmax(logits))``."""

    uses_labels = False

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -entropy(logits)
