"""IdkDPO (Maini et al., 2024, TOFU): DPO with an "I don't know"-style refusal after the same prompt as the preferred
answer and the true forget answer as the dispreferred one,
``L_f = -log sigmoid(beta [(log pi(idk) - log pi_ref(idk)) - (log pi(y) - log pi_ref(y))])``, plus ``alpha * L_r``."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.lm._losses import dpo_loss, reference_logprob
from medforget.methods.lm.base import LMUnlearningMethod, sequence_logprob


class IdkDPO(LMUnlearningMethod):
    """Preference optimisation towards refusals on the forget prompts (the forget batches' ``alt``), against the
    frozen original model. Standard DPO scale (open-unlearning multiplies the same loss by ``2/beta``: use ``gamma``).

    Args:
        beta: DPO's inverse temperature.
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
        if "alt" not in forget:
            raise KeyError("IdkDPO needs refusals: forget batches with 'alt' (ClinicalNotesDataModule(mode='unlearn'))")
        refusal = forget["alt"]
        loss = dpo_loss(sequence_logprob(self.lm, refusal)[0], reference_logprob(self.reference, refusal),
                        sequence_logprob(self.lm, forget)[0], reference_logprob(self.reference, forget), self.beta)
        return self.combine(loss, retain)
