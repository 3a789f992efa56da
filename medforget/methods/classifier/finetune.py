"""FineTune: keep training on the retain set only (catastrophic forgetting of D_f)."""

from __future__ import annotations

import torch

from medforget.methods.classifier.base import UnlearningMethod


class FineTune(UnlearningMethod):
    """Minimise the classifier's loss on D_r; D_f is never used.

    It has no arguments of its own: those of :class:`~medforget.methods.classifier.base.UnlearningMethod` (``ckpt``
    and the optimizer settings ``lr``, ``optimizer``, ``weight_decay``, ``momentum``; ``lr`` ~1e-4 with AdamW, ~1e-2
    with SGD).
    """

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        return {"loss": retain_ce, "retain_ce": retain_ce}
