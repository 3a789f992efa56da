"""Membership-inference attacks: base classes, registry, per-sample quantities and the common attack metrics.

Convention everywhere: a higher score means "more member-like".

Every attack sees the audited model's fused-head outputs on four parts (:class:`AttackData`): ``retain`` (known
members), ``val`` (known non-members, held out), ``forget`` (the patients whose membership is in question) and
``test`` (known non-members, never used to fit or calibrate anything). Each attack

- scores every sample (:meth:`MembershipAttack.scores`);
- picks a decision threshold from ``retain`` vs ``val`` only (:meth:`MembershipAttack.threshold`: the threshold of
  highest balanced accuracy, or the fitted classifier's own decision for population attacks);
- reports :func:`attack_metrics` of ``forget`` (as members) vs ``test`` (non-members): ROC-AUC, TPR at 1% and 0.1%
  FPR (``n/a`` below ``10 / FPR`` non-member patients: with fewer, "TPR at 0.1% FPR" is TPR at 0% FPR), and the
  share of ``forget`` (and of ``test``) samples the attack calls members;
- and the same per *patient* (the unit that is forgotten): a patient's score is the mean (``patient_*``) or the
  maximum (``patient_max_*``) of its studies' scores (:func:`patient_attack_metrics`).

On a model that never saw the forget patients (the retrained reference) forget and test samples come from the same
distribution, so every attack's AUC is near 0.5; on a model that memorised them it is well above.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc, binary_roc

from medforget.audit.bootstrap import patient_scores
from medforget.audit.roc import FPR_TARGETS, rank_scores, tpr_at_fpr
from medforget.core.registry import Registry

PARTS = ("forget", "retain", "val", "test")
Outputs = tuple[torch.Tensor, torch.Tensor]  # (logits (N, C), labels (N,))


@dataclass
class AttackData:
    """What an attack may use.

    Attributes:
        target: The audited model's ``(logits, labels)`` per part (:data:`PARTS`).
        references: Reference (shadow) models' logits per part, one dict per model; empty unless reference models
            were trained (``--audit.reference_models K``).
        reference_members: Per reference model and part, a boolean mask: was the sample in that model's training
            data (only retain samples can be).
        groups: Patient of each sample per part (integer codes; no IDs), for patient-level metrics and
            patient-grouped cross-validation. ``None``: every sample is its own patient.
    """

    target: dict[str, Outputs]
    references: list[dict[str, torch.Tensor]] = field(default_factory=list)
    reference_members: list[dict[str, torch.Tensor]] = field(default_factory=list)
    groups: dict[str, np.ndarray] | None = None

    def group(self, part: str) -> np.ndarray:
        """Patient codes of ``part`` (each sample its own patient without :attr:`groups`)."""
        if self.groups is not None and part in self.groups:
            return np.asarray(self.groups[part])
        return np.arange(len(self.target[part][1]))

    def __post_init__(self) -> None:
        missing = [p for p in PARTS if p not in self.target]
        if missing:
            raise ValueError(f"membership attacks need the parts {PARTS}; missing {missing}")


@dataclass
class AttackResult:
    """Metrics (JSON-ready) plus the per-sample scores of every part (for plots)."""

    metrics: dict[str, float]
    scores: dict[str, np.ndarray]


class MembershipAttack:
    """A membership-inference attack; subclasses register under their class name.

    Class attributes: ``opt_in`` attacks need reference models and only run when asked for; ``uses_labels`` is false
    for attacks that ignore the true label (entropy).
    """

    registry: ClassVar[Registry[type[MembershipAttack]]] = Registry("attack", "medforget.audit.classifier.mia")
    opt_in: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = True

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        """Register the subclass by its name (``register=False`` in the class statement: a shared base, not a
        choice)."""
        super().__init_subclass__(**kwargs)
        if register:
            MembershipAttack.registry.register_class(cls)

    @abstractmethod
    def scores(self, data: AttackData) -> dict[str, torch.Tensor]:
        """Per-sample membership scores for every part of ``data.target``."""

    def threshold(self, scores: dict[str, torch.Tensor]) -> float:
        """Decision threshold (score >= threshold: member), calibrated on retain (members) vs val (non-members)."""
        return youden_threshold(scores["retain"], scores["val"])

    def run(self, data: AttackData) -> AttackResult:
        """Score, calibrate on retain vs val, and measure forget (members) vs test (non-members), per study and per
        patient."""
        scores = self.scores(data)
        threshold = self.threshold(scores)
        test_patients = len(np.unique(data.group("test")))
        metrics = attack_metrics(scores["forget"], scores["test"], threshold=threshold,
                                 nonmember_units=test_patients)
        metrics["calibration_auc"] = attack_metrics(scores["retain"], scores["val"])["auc"]
        for how in ("mean", "max"):
            metrics.update(patient_attack_metrics(scores["forget"], data.group("forget"), scores["test"],
                                                  data.group("test"), how))
        metrics.update(self.extra_metrics())
        return AttackResult(metrics, {p: s.double().numpy() for p, s in scores.items()})

    def extra_metrics(self) -> dict[str, float]:
        """Attack-specific facts added to the metrics (e.g. a population attack's cross-validated AUC)."""
        return {}


class ThresholdAttack(MembershipAttack, register=False):
    """An attack that scores each sample from its own logits and label, with no training."""

    @abstractmethod
    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample membership scores ``(N,)`` from logits ``(N, C)`` and labels ``(N,)`` (higher = member)."""

    def scores(self, data: AttackData) -> dict[str, torch.Tensor]:
        return {part: self.score(*outputs) for part, outputs in data.target.items()}

    def evaluate(self, members: Outputs, nonmembers: Outputs) -> dict[str, float]:
        """Attack metrics for ``(logits, labels)`` of members vs non-members (threshold: non-members' median)."""
        return attack_metrics(self.score(*members), self.score(*nonmembers))


# --- per-sample quantities (float64, stable for saturated softmaxes) -----------------------------------------------
def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log softmax`` in float64."""
    return F.log_softmax(logits.double(), dim=-1)


def log_one_minus_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 - p_i)`` for every class, as ``logsumexp`` of the other classes' log-probabilities (exact even when
    ``p_i`` rounds to 1)."""
    lp = log_probs(logits)
    c = lp.shape[-1]
    eye = torch.eye(c, dtype=torch.bool, device=lp.device)
    others = lp.unsqueeze(-2).expand(*lp.shape[:-1], c, c).masked_fill(eye, -math.inf)
    return torch.logsumexp(others, dim=-1)


def true_class_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's logit-scaled confidence ``log(p_y / (1 - p_y))``."""
    idx = labels.long().unsqueeze(-1)
    return (log_probs(logits).gather(-1, idx) - log_one_minus_probs(logits).gather(-1, idx)).squeeze(-1)


def true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``p_y`` in float64."""
    return log_probs(logits).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).exp()


def modified_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Song & Mittal's ``Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``."""
    lp = log_probs(logits)
    p = lp.exp()
    l1m = log_one_minus_probs(logits)
    onehot = F.one_hot(labels.long(), lp.shape[-1]).bool()
    true_term = -(l1m.exp() * lp).masked_fill(~onehot, 0.0).sum(-1)  # 1 - p_y as exp(log(1 - p_y)): no cancellation
    other_term = -(p * l1m).masked_fill(onehot, 0.0).sum(-1)
    return true_term + other_term


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the softmax (nats)."""
    lp = log_probs(logits)
    return -(lp.exp() * lp).sum(-1)


# --- metrics -------------------------------------------------------------------------------------------------------


def youden_threshold(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """The score threshold (member if ``score >= threshold``) of highest balanced accuracy ``(TPR + TNR) / 2``;
    ties go to the highest threshold (fewest member calls). ``+inf`` if a side is empty."""
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        return math.inf
    m = member_scores.double().numpy()
    n = nonmember_scores.double().numpy()
    candidates = np.unique(np.concatenate([m, n, [np.inf]]))
    tpr = (m[None, :] >= candidates[:, None]).mean(1)
    fpr = (n[None, :] >= candidates[:, None]).mean(1)
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12).max()
    return float(candidates[best])


def attack_metrics(
    member_scores: torch.Tensor, nonmember_scores: torch.Tensor, threshold: float | None = None,
    nonmember_units: int | None = None,
) -> dict[str, float]:
    """ROC-AUC, TPR at 1% / 0.1% FPR, and the member rates.

    Args:
        member_scores: Scores of the samples treated as members (the forget set).
        nonmember_scores: Scores of known non-members (the test set).
        threshold: Member if ``score >= threshold`` (an attack's calibrated decision); ``None``: member if above the
            non-members' median, so non-members get a rate of about 0.5.
        nonmember_units: Independent non-member units (patients) behind the non-member scores; TPR at FPR ``t`` is
            NaN below ``10 / t`` of them (default: the number of non-member scores).

    Returns:
        ``auc``, ``tpr@1%fpr``, ``tpr@0.1%fpr``, ``member_rate`` (share of members called members),
        ``nonmember_rate`` (share of non-members called members, the false-positive rate), ``threshold``, sizes.
    """
    scores = rank_scores(torch.cat([member_scores.double(), nonmember_scores.double()]))
    target = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(nonmember_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, target)
    fpr, tpr = fpr.numpy(), tpr.numpy()
    m, n = member_scores.double(), nonmember_scores.double()
    units = len(nonmember_scores) if nonmember_units is None else nonmember_units
    if threshold is None:
        median = float(n.median())
        member_rate, nonmember_rate = float((m > median).double().mean()), float((n > median).double().mean())
        threshold = median
    else:
        member_rate, nonmember_rate = float((m >= threshold).double().mean()), float((n >= threshold).double().mean())
    return {
        "auc": float(binary_auroc(scores, target)),
        **{key: tpr_at_fpr(fpr, tpr, t, units) for key, t in FPR_TARGETS.items()},
        "member_rate": member_rate,
        "nonmember_rate": nonmember_rate,
        "threshold": float(threshold),
        "n_members": len(member_scores),
        "n_nonmembers": len(nonmember_scores),
    }


def patient_attack_metrics(member_scores: torch.Tensor | np.ndarray, member_groups: np.ndarray,
                           nonmember_scores: torch.Tensor | np.ndarray, nonmember_groups: np.ndarray,
                           how: str = "mean") -> dict[str, float]:
    """Attack metrics per patient: each patient's score is the ``mean`` or ``max`` of its studies' scores; keys are
    prefixed ``patient_`` (mean) or ``patient_max_`` (max): ``auc``, the TPRs at FPR (``n/a`` below ``10 / FPR``
    non-member patients) and the patient counts."""
    _, members = patient_scores(np.asarray(member_scores, dtype=float), member_groups, how)
    _, nonmembers = patient_scores(np.asarray(nonmember_scores, dtype=float), nonmember_groups, how)
    metrics = attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers))
    prefix = "patient_" if how == "mean" else f"patient_{how}_"
    return {f"{prefix}{k}": metrics[k] for k in ("auc", *FPR_TARGETS, "n_members", "n_nonmembers")}


def reference_out_values(data: AttackData, fn, part: str) -> list[torch.Tensor]:
    """``fn(logits, labels)`` of every reference model on ``part``, with samples that were in that reference
    model's training data set to NaN (offline attacks only use OUT models)."""
    if not data.references:
        raise ValueError("this attack needs reference models: pass --audit.reference_models K (K >= 2)")
    labels = data.target[part][1]
    values = []
    for logits, members in zip(data.references, data.reference_members, strict=True):
        v = fn(logits[part], labels).double()
        values.append(v.masked_fill(members[part].bool(), math.nan))
    return values
