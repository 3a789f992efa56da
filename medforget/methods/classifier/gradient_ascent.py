"""GradientAscent: maximise the loss on the forget set."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.classifier.base import UnlearningMethod


class GradientAscent(UnlearningMethod):
    """Minimise ``-CE(D_f)``, with the ascent bounded so a step cannot run away.

    The forget CE is clamped at ``max_forget_loss`` (no gradient beyond it): the model is pushed until forget
    examples are about as badly fit as unseen ones, not towards infinite loss. Very lr-sensitive.

    Args:
        lr: Learning rate.
        max_forget_loss: Forget CE above which the ascent stops pushing (``ln(num_classes)`` is chance level).
        **kwargs: ``ckpt`` and the other optimizer settings (``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        lr: float = 1e-5,
        max_forget_loss: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        self.max_forget_loss = max_forget_loss

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        forget_ce = self.classification_loss(forget)
        bounded = torch.clamp(forget_ce, max=self.max_forget_loss)
        return {"loss": -bounded, "forget_ce": forget_ce.detach()}
