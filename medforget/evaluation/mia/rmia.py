"""RMIA, offline variant (Zarifzadeh et al., 2024): a pairwise likelihood ratio against population samples.

``ratio(x) = p(y_x | x; theta) / p(y_x | x)``, where ``p(y_x | x)`` averages the OUT reference models' probability
with the offline correction ``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2``. The score is the share of population
samples ``z`` (val: known non-members that no reference model saw) with ``ratio(x) / ratio(z) >= gamma``.
Needs ``--audit.reference_models K``.
"""

from __future__ import annotations

import torch

from medforget.evaluation.mia.base import AttackData, MembershipAttack, reference_out_values, true_class_prob


class RMIAAttack(MembershipAttack):
    """Offline RMIA.

    Args:
        offline_a: The offline correction ``a`` in ``[0, 1]`` (0: ignore the reference models' level).
        gamma: Pairwise likelihood-ratio threshold.
    """

    opt_in = True

    def __init__(self, offline_a: float = 0.3, gamma: float = 1.0) -> None:
        if not 0.0 <= offline_a <= 1.0:
            raise ValueError(f"RMIA offline_a must lie in [0, 1], got {offline_a}")
        self.offline_a = offline_a
        self.gamma = gamma

    def ratios(self, data: AttackData, part: str) -> torch.Tensor:
        """``p(y|x; target) / p(y|x)`` for every sample of ``part``."""
        p_out = torch.stack(reference_out_values(data, true_class_prob, part)).nanmean(0)
        if bool(p_out.isnan().any()):
            raise ValueError("RMIA: some samples have no OUT reference model; use at least 2 reference models")
        a = self.offline_a
        p_x = 0.5 * ((1 + a) * p_out + (1 - a))
        return true_class_prob(*data.target[part]) / p_x

    def scores(self, data: AttackData) -> dict[str, torch.Tensor]:
        population = self.ratios(data, "val")
        out = {}
        for part in data.target:
            r = self.ratios(data, part)
            out[part] = (r[:, None] / population[None, :] >= self.gamma).double().mean(1)
        return out
