"""RMIA, offline variant (Zarifzadeh et al., 2024): a pairwise likelihood ratio against population samples.

``ratio(x) = p(y_x | x; theta) / p(y_x | x)``, where ``p(y_x | x)`` averages the OUT reference models' probability
with the offline correction ``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2``. The score is the share of population
samples ``z`` (val: known non-members that no reference model saw) with ``ratio(x) / ratio(z) > gamma`` (strict, and a
val sample is never compared with itself). Needs ``--audit.reference_models K``.

``a`` is tuned as the paper does, on a reference model: one reference model plays the target, the others are its
references, and the ``a`` of highest AUC of its own IN retain samples vs the val samples is kept (``offline_a=None``,
the default; a number fixes it).
"""

from __future__ import annotations

import numpy as np
import torch

from medforget.audit.classifier.mia.base import AttackData, MembershipAttack, attack_metrics, true_class_prob

A_GRID = tuple(round(a, 1) for a in np.linspace(0.0, 1.0, 11))


def _out_probability(references: list[dict[str, torch.Tensor]], members: list[dict[str, torch.Tensor]],
                     labels: torch.Tensor, part: str) -> torch.Tensor:
    """Mean probability of the true class under the reference models that did not train on each sample (NaN if
    none)."""
    values = []
    for logits, member in zip(references, members, strict=True):
        values.append(true_class_prob(logits[part], labels).masked_fill(member[part].bool(), float("nan")))
    return torch.stack(values).nanmean(0)


def pairwise_scores(ratios: torch.Tensor, population: torch.Tensor, gamma: float,
                    self_index: torch.Tensor | None = None) -> torch.Tensor:
    """Share of population samples ``z`` with ``ratio(x) / ratio(z) > gamma`` for every ``x``; ``self_index[i]``
    (when ``x_i`` is itself population sample ``self_index[i]``) is left out of its own comparison."""
    beats = (ratios[:, None] / population[None, :] > gamma).double()  # (N, Z)
    if self_index is None:
        return beats.mean(1)
    beats[torch.arange(len(ratios)), self_index] = 0.0
    return beats.sum(1) / max(len(population) - 1, 1)


class RMIAAttack(MembershipAttack):
    """Offline RMIA.

    Args:
        offline_a: The offline correction ``a`` in ``[0, 1]``; ``None``: tuned on a reference model (:data:`A_GRID`).
        gamma: Pairwise likelihood-ratio threshold.
    """

    opt_in = True

    def __init__(self, offline_a: float | None = None, gamma: float = 1.0) -> None:
        if offline_a is not None and not 0.0 <= offline_a <= 1.0:
            raise ValueError(f"RMIA offline_a must lie in [0, 1], got {offline_a}")
        self.offline_a = offline_a
        self.gamma = gamma
        self.chosen_a = offline_a

    def _ratios(self, target_prob: torch.Tensor, p_out: torch.Tensor, a: float) -> torch.Tensor:
        if bool(p_out.isnan().any()):
            raise ValueError("RMIA: some samples have no OUT reference model; use at least 2 reference models")
        return target_prob / (0.5 * ((1 + a) * p_out + (1 - a)))

    def tune_a(self, data: AttackData) -> float:
        """The ``a`` of :data:`A_GRID` under which reference model 0, attacked with the other reference models, best
        separates its IN retain samples from the val samples (AUC)."""
        if len(data.references) < 3:
            return 0.3  # with 2 models the stand-in target has a single reference: too few to tune on
        target, others = data.references[0], data.references[1:]
        members = data.reference_members[1:]
        labels = {p: data.target[p][1] for p in ("retain", "val")}
        in_rows = data.reference_members[0]["retain"].bool()
        probs = {p: true_class_prob(target[p], labels[p]) for p in labels}
        p_out = {p: _out_probability(others, members, labels[p], p) for p in labels}
        usable = in_rows & ~p_out["retain"].isnan()
        if int(usable.sum()) < 2:
            return 0.3
        best, best_auc = A_GRID[0], -1.0
        for a in A_GRID:
            population = self._ratios(probs["val"], p_out["val"], a)
            member = pairwise_scores(self._ratios(probs["retain"][usable], p_out["retain"][usable], a), population,
                                     self.gamma)
            nonmember = pairwise_scores(population, population, self.gamma, torch.arange(len(population)))
            auc = attack_metrics(member, nonmember)["auc"]
            if auc > best_auc + 1e-12:
                best, best_auc = a, auc
        return best

    def ratios(self, data: AttackData, part: str) -> torch.Tensor:
        """``p(y|x; target) / p(y|x)`` for every sample of ``part``."""
        labels = data.target[part][1]
        if not data.references:
            raise ValueError("this attack needs reference models: pass --audit.reference_models K (K >= 2)")
        p_out = _out_probability(data.references, data.reference_members, labels, part)
        return self._ratios(true_class_prob(*data.target[part]), p_out, self.chosen_a)

    def scores(self, data: AttackData) -> dict[str, torch.Tensor]:
        if self.offline_a is None:
            self.chosen_a = self.tune_a(data)
        population = self.ratios(data, "val")
        out = {}
        for part in data.target:
            if part == "val":
                out[part] = pairwise_scores(population, population, self.gamma, torch.arange(len(population)))
            else:
                out[part] = pairwise_scores(self.ratios(data, part), population, self.gamma)
        return out

    def extra_metrics(self) -> dict[str, float]:
        return {"offline_a": float(self.chosen_a) if self.chosen_a is not None else float("nan")}
