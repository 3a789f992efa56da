"""RandomLabel (Golatkar et al., 2020 / Hayase et al.): fit the forget set to random wrong labels."""

from __future__ import annotations

from typing import Any

import torch

from medforget.datamodules import keys
from medforget.methods.classifier._common import random_wrong_labels
from medforget.methods.classifier.base import UnlearningMethod


class RandomLabel(UnlearningMethod):
    """Minimise ``CE(D_f, y') + CE(D_r)`` with ``y'`` drawn uniformly among the wrong classes at every step.

    Args:
        retain_weight: Weight of the retain loss.
        label_seed: Seed of the random labels.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        retain_weight: float = 1.0,
        label_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retain_weight = float(retain_weight)
        self.label_generator = torch.Generator().manual_seed(label_seed)

    def random_label_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        wrong = random_wrong_labels(forget[keys.LABEL], self.num_classes, self.label_generator)
        forget_ce = self.classification_loss(forget, wrong)
        retain_ce = self.classification_loss(retain)
        return {"loss": forget_ce + self.retain_weight * retain_ce, "forget_random_ce": forget_ce.detach(),
                "retain_ce": retain_ce.detach()}

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        return self.random_label_loss(forget, retain)
