"""What the classifier audit measures (:class:`AuditConfig`) and its pass/fail tolerances (:class:`Tolerances`):
the ``--audit.*`` and ``--tolerances.*`` flags of ``medforget evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medforget.audit.classifier.mia import MembershipAttack
from medforget.audit.skeleton import AuditSettings
from medforget.audit.verdict import MIN_REPLICATES
from medforget.core.registry import unknown_name_message

SCHEMA_VERSION = 2


REFERENCE = "retrained"


MODEL_NAMES = ("original", "unlearned", "retrained")


def default_attacks() -> list[str]:
    """Every registered attack that needs no reference models."""
    return sorted(name for name, cls in MembershipAttack.registry.items() if not cls.opt_in)


@dataclass
class AuditConfig(AuditSettings):
    """What the audit measures.

    ``bootstrap``, ``seed``, ``plots``, ``quantization`` and ``int4_group_size`` are the settings both audits share
    (:class:`~medforget.audit.skeleton.AuditSettings`).

    Args:
        attacks: Membership attacks by registered name (default: every attack that needs no reference models, plus
            ``LiRAAttack`` and ``RMIAAttack`` when ``reference_models`` > 0).
        reference_models: Reference (shadow) models for LiRA / RMIA, trained with the original model's recipe on
            halves of the retain patients (each patient in K // 2 of them). 0: off; they cost K trainings, so they
            are opt-in. Cached in ``<out>/reference_models``.
        reference_epochs: Epochs of each reference model (default: the original model's).
        reference_dir: Cache of the reference models, shared by audits and requests (default
            ``<out>/reference_models``); a cached set is reused when it excluded every patient of the request.
        quantization: Quantization schemes of the recovery attack (``int8``, ``int4``; empty: off).
        int4_group_size: Group size of the 4-bit round-to-nearest quantization.
        relearn_steps: Fine-tuning steps of the relearning attack (0: off).
        relearn_lr: Learning rate of the relearning attack (AdamW).
        relearn_fraction: Share of the forget patients the relearning attack fine-tunes on (at least one patient);
            accuracy is measured on the other forget patients.
        seed: Seed of the attacks (folds, relearning split, reference design, bootstrap).
        bootstrap: Paired patient-bootstrap resamples behind every interval and verdict (at least 2,000; 0: off, and
            then no criterion is judged: a gap without its interval is not a verdict).
        lira_variance: LiRA's OUT variance: ``pooled`` over all samples (robust with few reference models) or
            ``per_sample`` (needs ``reference_models`` >= 4, so that every sample has 2 OUT models).
        per_patient_alpha: Level of the per-patient forgetting test (runs with ``reference_models``): a forget patient
            whose p-value is below it still looks like a member.
        per_patient_permutations: Random patient sets of the request's combined permutation test.
        plots: Write ROC curves, score histograms and robustness plots (PNG, embedded in audit.html).
    """

    attacks: list[str] | None = None
    reference_models: int = 0
    reference_epochs: int | None = None
    reference_dir: str | None = None
    quantization: list[str] = field(default_factory=lambda: ["int8", "int4"])
    int4_group_size: int = 32
    relearn_steps: int = 10
    relearn_lr: float = 5e-4
    relearn_fraction: float = 0.3
    seed: int = 0
    bootstrap: int = MIN_REPLICATES
    lira_variance: Literal["pooled", "per_sample"] = "pooled"
    per_patient_alpha: float = 0.05
    per_patient_permutations: int = 10000
    plots: bool = True

    def __post_init__(self) -> None:
        names = self.attack_names()
        for name in names:  # an unknown name: the registry's did-you-mean error, naming the flag
            if name not in MembershipAttack.registry:
                raise ValueError(f"audit.attacks: {unknown_name_message('attack', name, MembershipAttack.registry)}")
        needing = [a for a in names if MembershipAttack.registry[a].opt_in]
        if needing and self.reference_models < 2:
            raise ValueError(f"audit.attacks {needing} need reference models: pass --audit.reference_models K (K >= 2)")
        self.check_settings(strict_bootstrap=True)
        if not 0.0 < self.relearn_fraction <= 1.0:
            raise ValueError(f"audit.relearn_fraction must lie in (0, 1], got {self.relearn_fraction}")
        if self.relearn_steps < 0 or self.reference_models < 0:
            raise ValueError("audit.relearn_steps and audit.reference_models must be >= 0")
        if self.lira_variance not in ("pooled", "per_sample"):
            raise ValueError(f"--audit.lira_variance must be 'pooled' or 'per_sample', got {self.lira_variance!r}")
        if self.lira_variance == "per_sample" and self.reference_models < 4:
            raise ValueError(f"--audit.lira_variance per_sample needs --audit.reference_models >= 4 (each retain "
                             f"sample must be OUT for 2 models); got {self.reference_models}")
        if not 0.0 < self.per_patient_alpha < 1.0:
            raise ValueError(f"--audit.per_patient_alpha must lie in (0, 1), got {self.per_patient_alpha}")
        if self.per_patient_permutations < 100:
            raise ValueError(f"--audit.per_patient_permutations must be >= 100, got {self.per_patient_permutations}")

    def attack_names(self) -> list[str]:
        if self.attacks is not None:
            return list(self.attacks)
        names = default_attacks()
        if self.reference_models >= 2:
            names += sorted(n for n, c in MembershipAttack.registry.items() if c.opt_in)
        return names


@dataclass
class Tolerances:
    """Pass/fail tolerances; every criterion compares the unlearned model with the retrained one (mean over runs).

    Args:
        mia_auc_gap: Largest ``|attack AUC(unlearned) - attack AUC(retrained)|`` on the forget set, per attack.
        forget_accuracy_gap: Largest ``|forget accuracy(unlearned) - forget accuracy(retrained)|`` (fused head).
        forget_auc_gap: Largest ``|forget AUC(unlearned) - forget AUC(retrained)|`` (fused head).
        test_auc_drop: Largest ``test AUC(retrained) - test AUC(unlearned)`` (utility lost; gains always pass).
        quantization_recovery: Largest share of the forgotten forget accuracy that quantization brings back,
            per scheme.
        relearn_accuracy_gap: Largest ``forget accuracy(unlearned) - forget accuracy(retrained)`` after the
            relearning attack.
        time_ratio: Largest unlearning / retraining wall time (``None``: reported, not judged).
    """

    mia_auc_gap: float = 0.05
    forget_accuracy_gap: float = 0.05
    forget_auc_gap: float = 0.05
    test_auc_drop: float = 0.03
    quantization_recovery: float = 0.25
    relearn_accuracy_gap: float = 0.10
    time_ratio: float | None = None
