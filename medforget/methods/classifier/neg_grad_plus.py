"""NegGradPlus (Kurmanji et al., 2023): descend on the retain set, ascend on the forget set."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.classifier.base import UnlearningMethod


class NegGradPlus(UnlearningMethod):
    """Minimise ``alpha * CE(D_r) - (1 - alpha) * min(CE(D_f), max_forget_loss)``.

    The forget CE is clamped at ``max_forget_loss`` (no gradient beyond it), so the ascent stops once forget examples
    are fit about as badly as unseen ones and the loss is bounded below.

    Args:
        alpha: Weight of the retain loss; ``1 - alpha`` weighs the forget ascent.
        max_forget_loss: Forget CE beyond which the ascent stops pushing.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        alpha: float = 0.95,
        max_forget_loss: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.max_forget_loss = float(max_forget_loss)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        forget_ce = self.classification_loss(forget)
        total = self.alpha * retain_ce - (1 - self.alpha) * torch.clamp(forget_ce, max=self.max_forget_loss)
        return {"loss": total, "retain_ce": retain_ce.detach(), "forget_ce": forget_ce.detach()}
