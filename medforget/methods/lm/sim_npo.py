"""SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning"):
NPO without the reference model, on the length-normalised log-probability,
``L_f = -(2/beta) log sigmoid(-(beta/|y|) log pi_theta(y|x) - delta)``, plus ``alpha * L_r``."""

from __future__ import annotations

from typing import Any, Literal

import torch

from medforget.methods.lm._losses import simnpo_loss
from medforget.methods.lm.base import LMUnlearningMethod, sequence_logprob
from medforget.systems.lm import LoRA


class SimNPO(LMUnlearningMethod):
    """Reference-free NPO on each forget answer's mean per-token NLL (long answers are not over-weighted).

    Args:
        ckpt: Checkpoint of the trained language model (only read).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: Share of the steps spent warming the learning rate up.
        gamma: Weight of the forget loss.
        alpha: Weight of the retain loss.
        retain_loss: ``nll`` on retain examples, or ``kl`` to the original model on them.
        beta: Inverse temperature.
        delta: Reward margin (the paper's ``gamma``; 0 in most of its experiments).
        lora: LoRA adapters only (see :class:`~medforget.methods.lm.base.LMUnlearningMethod`).
    """

    def __init__(
        self,
        ckpt: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: float = 0.0,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: Literal["nll", "kl"] = "nll",
        beta: float = 4.5,
        delta: float = 0.0,
        lora: LoRA | None = None,
    ) -> None:
        if beta <= 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        super().__init__(ckpt, lr, weight_decay, warmup, gamma, alpha, retain_loss, lora)
        self.beta, self.delta = beta, delta

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logp, length = sequence_logprob(self.lm, forget)
        return self.combine(simnpo_loss(logp, length, self.beta, self.delta), retain)
