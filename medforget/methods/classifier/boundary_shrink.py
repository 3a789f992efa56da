"""BoundaryShrink (Chen et al., "Boundary Unlearning", CVPR 2023)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier._common import TeacherStudent


class BoundaryShrink(TeacherStudent):
    """Relabel each forget sample with its *nearest wrong class* and fine-tune on D_f with those labels.

    The nearest wrong class comes from an FGSM step on the image with the frozen original model:
    ``x' = clip(x + epsilon * sign(d CE(f_o(x), y) / dx), 0, 1)`` and ``y' = argmax_{c != y} f_o(x')``, so the
    decision boundary shrinks onto the forget samples' neighbouring classes. Text-only models have no image to
    perturb: ``y'`` is then the original model's best wrong class on the clean input.

    Args:
        lr: Learning rate.
        epsilon: FGSM step size (images are in ``[0, 1]``).
        retain_weight: Weight of an optional CE on D_r (0 = the paper's forget-only fine-tuning).
        **kwargs: ``ckpt`` and the other optimizer settings (``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        lr: float = 1e-5,
        epsilon: float = 0.1,
        retain_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        self.epsilon, self.retain_weight = float(epsilon), float(retain_weight)

    def nearest_wrong_labels(self, batch: dict) -> torch.Tensor:
        teacher = self.teacher.module
        labels = batch[keys.LABEL]
        if keys.IMAGE in batch and "image" in teacher.modalities:
            image = batch[keys.IMAGE].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(teacher({**batch, keys.IMAGE: image})["fused"], labels)
                (grad,) = torch.autograd.grad(loss, image)
            batch = {**batch, keys.IMAGE: (image + self.epsilon * grad.sign()).clamp(0.0, 1.0).detach()}
        with torch.no_grad():
            logits = teacher(batch)["fused"].clone()
        logits[torch.arange(len(labels), device=labels.device), labels] = -torch.inf
        return logits.argmax(-1)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        forget_ce = self.classification_loss(forget, self.nearest_wrong_labels(forget))
        total = forget_ce
        logs = {"forget_shrink_ce": forget_ce.detach()}
        if self.retain_weight > 0:
            retain_ce = self.classification_loss(retain)
            total = total + self.retain_weight * retain_ce
            logs["retain_ce"] = retain_ce.detach()
        return {"loss": total, **logs}
