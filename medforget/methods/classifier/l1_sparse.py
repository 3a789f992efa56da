"""L1Sparse (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.classifier.base import UnlearningMethod


class L1Sparse(UnlearningMethod):
    """Fine-tune on D_r with an L1 penalty whose weight decays linearly to 0: ``CE(D_r) + gamma_t * ||theta||_1``,
    ``gamma_t = gamma * (1 - t / T)`` over the ``T`` optimizer steps of the fit (sparsity early, accuracy late).

    Args:
        gamma: Initial L1 weight.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        gamma: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(**kwargs)
        self.gamma = float(gamma)

    def current_gamma(self) -> float:
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        if not total or total == float("inf"):
            return self.gamma
        return self.gamma * max(0.0, 1.0 - self.global_step / total)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        l1 = torch.stack([p.abs().sum() for p in self.trainable_parameters()]).sum()
        gamma = self.current_gamma()
        return {"loss": retain_ce + gamma * l1, "retain_ce": retain_ce.detach(), "l1": l1.detach(),
                "gamma": torch.tensor(gamma)}
