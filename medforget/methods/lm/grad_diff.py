"""GradDiff: gradient ascent on the forget set, gradient descent on the retain set (``-NLL_f + alpha * L_r``)."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.lm.base import LMUnlearningMethod, mean_nll


class GradDiff(LMUnlearningMethod):
    """Gradient difference: ``gamma * (-NLL_f) + alpha * L_r`` (``L_r``: NLL, or KL to the original model)."""

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.combine(-mean_nll(self.lm, forget), retain)
