"""NPO (Zhang et al., 2024, "Negative Preference Optimization"): the forget answers as dispreferred responses only,
``L_f = -(2/beta) E[log sigmoid(-beta (log pi_theta(y|x) - log pi_ref(y|x)))]``, plus ``alpha * L_r``."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.lm._losses import npo_objective
from medforget.methods.lm.base import LMUnlearningMethod


class NPO(LMUnlearningMethod):
    """Negative preference optimisation against the frozen original model (sequence log-probabilities summed over
    the answer tokens); a bounded, slower-diverging alternative to gradient ascent.

    Args:
        beta: NPO's inverse temperature.
        **kwargs: ``ckpt``, the optimizer settings (``lr``, ``weight_decay``, ``warmup``), the loss weights (``gamma``,
            ``alpha``, ``retain_loss``) and ``lora`` of :class:`~medforget.methods.lm.base.LMUnlearningMethod`.
    """

    needs_reference = True

    def __init__(
        self,
        beta: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if beta <= 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        super().__init__(**kwargs)
        self.beta = beta

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.combine(npo_objective(self.lm, self.reference, forget, self.beta), retain)
