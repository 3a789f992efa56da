"""NPO (Zhang et al., 2024, "Negative Preference Optimization"): the forget answers as dispreferred responses only,
``L_f = -(2/beta) E[log sigmoid(-beta (log pi_theta(y|x) - log pi_ref(y|x)))]``, plus ``alpha * L_r``."""

from __future__ import annotations

from typing import Any, Literal

import torch

from medforget.methods.lm._losses import npo_objective
from medforget.methods.lm.base import LMUnlearningMethod
from medforget.systems.lm import LoRA


class NPO(LMUnlearningMethod):
    """Negative preference optimisation against the frozen original model (sequence log-probabilities summed over
    the answer tokens); a bounded, slower-diverging alternative to gradient ascent.

    Args:
        ckpt: Checkpoint of the trained language model (only read).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: Share of the steps spent warming the learning rate up.
        gamma: Weight of the forget loss.
        alpha: Weight of the retain loss.
        retain_loss: ``nll`` on retain examples, or ``kl`` to the original model on them.
        beta: NPO's inverse temperature.
        lora: LoRA adapters only (see :class:`~medforget.methods.lm.base.LMUnlearningMethod`).
    """

    needs_reference = True

    def __init__(
        self,
        ckpt: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: float = 0.0,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: Literal["nll", "kl"] = "nll",
        beta: float = 0.1,
        lora: LoRA | None = None,
    ) -> None:
        if beta <= 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        super().__init__(ckpt, lr, weight_decay, warmup, gamma, alpha, retain_loss, lora)
        self.beta = beta

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.combine(npo_objective(self.lm, self.reference, forget, self.beta), retain)
