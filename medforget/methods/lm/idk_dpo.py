"""IdkDPO (Maini et al., 2024, TOFU): DPO with an "I don't know"-style refusal after the same prompt as the preferred
answer and the true forget answer as the dispreferred one,
``L_f = -log sigmoid(beta [(log pi(idk) - log pi_ref(idk)) - (log pi(y) - log pi_ref(y))])``, plus ``alpha * L_r``."""

from __future__ import annotations

from typing import Any, Literal

import torch

from medforget.methods.lm._losses import dpo_loss, reference_logprob
from medforget.methods.lm.base import LMUnlearningMethod, sequence_logprob
from medforget.systems.lm import LoRA


class IdkDPO(LMUnlearningMethod):
    """Preference optimisation towards refusals on the forget prompts (the forget batches' ``alt``), against the
    frozen original model. Standard DPO scale (open-unlearning multiplies the same loss by ``2/beta``: use ``gamma``).

    Args:
        ckpt: Checkpoint of the trained language model (only read).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: Share of the steps spent warming the learning rate up.
        gamma: Weight of the forget loss.
        alpha: Weight of the retain loss.
        retain_loss: ``nll`` on retain examples, or ``kl`` to the original model on them.
        beta: DPO's inverse temperature.
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
        if "alt" not in forget:
            raise KeyError("IdkDPO needs refusals: forget batches with 'alt' (ClinicalNotesDataModule(mode='unlearn'))")
        refusal = forget["alt"]
        loss = dpo_loss(sequence_logprob(self.lm, refusal)[0], reference_logprob(self.reference, refusal),
                        sequence_logprob(self.lm, forget)[0], reference_logprob(self.reference, forget), self.beta)
        return self.combine(loss, retain)
