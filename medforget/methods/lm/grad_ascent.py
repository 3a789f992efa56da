"""GradAscent: maximise the forget set's NLL (``L = -NLL_f``), forget data only."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.lm.base import LMUnlearningMethod, mean_nll


class GradAscent(LMUnlearningMethod):
    """Gradient ascent on the forget examples (no retain term: ``alpha`` is ignored)."""

    uses_retain = False

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.combine(-mean_nll(self.lm, forget), retain)
