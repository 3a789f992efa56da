"""FineTune: keep training on the retain set only (catastrophic forgetting of D_f)."""

from __future__ import annotations

from typing import Literal

import torch

from medforget.methods.classifier.base import UnlearningMethod


class FineTune(UnlearningMethod):
    """Minimise the classifier's loss on D_r; D_f is never used.

    Args:
        ckpt: Checkpoint of the trained classifier.
        lr: Learning rate (~1e-4 with AdamW, ~1e-2 with SGD).
        optimizer: ``adamw`` or ``sgd``.
        weight_decay: Weight decay.
        momentum: SGD momentum.
    """

    def __init__(
        self,
        ckpt: str | None = None,
        lr: float = 1e-4,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
    ) -> None:
        super().__init__(ckpt, lr, optimizer, weight_decay, momentum)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        return {"loss": retain_ce, "retain_ce": retain_ce}
