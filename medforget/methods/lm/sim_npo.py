"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning"):
NPO without the reference model, on the length-normalised log-probability,
``L_f = -(2/beta) log sigmoid(-(beta/|y|) log pi_theta(y|x) - delta)``, plus ``alpha * L_r``."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.lm._losses import simnpo_loss
from medforget.methods.lm.base import LMUnlearningMethod, sequence_logprob


class SimNPO(LMUnlearningMethod):
    """Reference-free NPO on each forget answer's mean per-token NLL (long answers are not over-weighted).

    Args:
        beta: Inverse temperature.
        delta: Reward margin (the paper's ``gamma``; 0 in most of its experiments).
        **kwargs: ``ckpt``, the optimizer settings (``lr``, ``weight_decay``, ``warmup``), the loss weights (``gamma``,
            ``alpha``, ``retain_loss``) and ``lora`` of :class:`~medforget.methods.lm.base.LMUnlearningMethod`.
    """

    def __init__(
        self,
        beta: float = 4.5,
        delta: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if beta <= 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        super().__init__(**kwargs)
        self.beta, self.delta = beta, delta

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logp, length = sequence_logprob(self.lm, forget)
        return self.combine(simnpo_loss(logp, length, self.beta, self.delta), retain)
