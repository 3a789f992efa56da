"""Checkpoint selection for unlearning runs, on validation data only (never test data, never the retrained model).

Selection sees only the *selection part* of the forget patients (``--data.selection_fraction``, default a quarter,
seeded; :func:`medforget.datamodules.splits.selection_patients`); the audit scores only the other forget patients,
so choosing the epoch never overfits the statistics the audit then reports (no winner's curse). An unlearned model
should look, on the forget patients, like a model that never saw them: like the original model looks on
patients it never saw, the held-out *val* patients. It should also keep the original's utility on the val
patients and its fit on the retain patients. Every epoch the unlearning system scores the three validation parts of
the unlearn-mode datamodule (:data:`~medforget.datamodules.keys.UNLEARN_VALIDATION_PARTS`) and compares them with
the *reference*, the original model's metrics measured once before the first update:

=====================  ===================================================  =====================
proxy gap              value                                                stands in for
=====================  ===================================================  =====================
``forget_auc``         ``|AUC(forget sel.) - AUC_ref(val)|``                forget AUC gap
``forget_f1``          ``|F1(forget sel.) - F1_ref(val)|``                  forget F1 gap
``val_auc``            ``|AUC(val) - AUC_ref(val)|``                        test AUC gap
``retain_auc``         ``|AUC(retain sample) - AUC_ref(retain sample)|``    retain AUC gap
``retain_acc``         ``|acc(retain sample) - acc_ref(retain sample)|``    retain fidelity
``mia``                ``|MIA-AUC(forget sel. vs val) - 0.5|`` (loss)       MIA AUC gap
=====================  ===================================================  =====================

``retain_acc`` is there because a retrained model still memorises the patients it trained on: an unlearned model that
lost that memorisation (retain accuracy 0.8 where the original had 1.0) is itself detectable, while its retain AUC
(a ranking) barely moves.

``selection_score`` is their mean (lower is better); the unlearn CLI keeps the epoch with the lowest score
(Lightning ``ModelCheckpoint(monitor="val/selection_score", mode="min")``) and exports it.

**Reference-calibrated forget targets** (:func:`reference_targets`). The val patients stand in for "patients the
model never saw", but a given request may be harder or easier than the val patients: a retrained model then lands
the forget patients below or above the val level, and a target at the val level under- or over-unlearns them. A
method that holds reference models which never saw the forget patients (RefDistill) knows how never-seen models do
on *these* patients: the forget terms then aim at the original's val metric shifted by the references' own
``forget selection - val`` difference, and the MIA term at the references' own attack AUC. The references are the
method's (never the retrained model), and they see only the selection part of the forget patients and val patients.
It is opt-in (RefDistill's ``selection_target="references"``): on the issue-14 leaderboard it did not beat the val
level, the quarter of a request set aside for selection being too few patients to steer by either way.
"""

from __future__ import annotations

import math

import torch

from medforget.audit.classifier.mia.base import attack_metrics
from medforget.audit.classifier.mia.loss import LossAttack
from medforget.audit.utility import classification_metrics
from medforget.datamodules import keys

SCORE = "val/selection_score"
GAP_NAMES = ("forget_auc", "forget_f1", "val_auc", "retain_auc", "retain_acc", "mia")


def part_metrics(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Metrics of the validation parts: ``{part}_{auc,f1,accuracy}`` for each part and ``mia`` (loss attack AUC of
    forget as members vs val as non-members). ``outputs`` maps a part name to ``(logits, labels)``."""
    metrics: dict[str, float] = {}
    for part, (logits, labels) in outputs.items():
        name = {keys.RETAIN_SAMPLE: "retain", keys.FORGET_SELECTION: "forget"}.get(part, part)
        for metric, value in classification_metrics(logits, labels).items():
            metrics[f"{name}_{metric}"] = value
    if keys.FORGET_SELECTION in outputs and keys.VAL in outputs:
        attack = LossAttack()
        metrics["mia"] = attack_metrics(attack.score(*outputs[keys.FORGET_SELECTION]),
                                        attack.score(*outputs[keys.VAL]))["auc"]
    return metrics


def proxy_gaps(metrics: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """The proxy gaps to a retrained model (module docstring) and their mean ``score``; NaN terms (a metric that is
    undefined, e.g. AUC on a forget set with a single class) are left out of the mean."""
    nan = math.nan
    gaps = {  # forget terms are NaN when no forget patient is set aside for selection (selection_fraction 0)
        "forget_auc": abs(metrics.get("forget_auc", nan) - reference.get("forget_auc_target", reference["val_auc"])),
        "forget_f1": abs(metrics.get("forget_f1", nan) - reference.get("forget_f1_target", reference["val_f1"])),
        "val_auc": abs(metrics["val_auc"] - reference["val_auc"]),
        "retain_auc": abs(metrics["retain_auc"] - reference["retain_auc"]),
        "retain_acc": abs(metrics.get("retain_accuracy", nan) - reference.get("retain_accuracy", nan)),
        "mia": abs(metrics.get("mia", nan) - reference.get("mia_target", 0.5)),
    }
    finite = [g for g in gaps.values() if not math.isnan(g)]
    gaps["score"] = sum(finite) / len(finite) if finite else float("nan")
    return gaps


def reference_targets(original: dict[str, float], references: list[dict[str, float]]) -> dict[str, float]:
    """Forget targets calibrated on reference models that never saw the forget patients (module docstring):
    ``forget_{auc,f1}_target = original val_{auc,f1} + mean_k (ref_k forget_{auc,f1} - ref_k val_{auc,f1})`` and
    ``mia_target = mean_k ref_k mia``, from :func:`part_metrics` of the original and of each reference model. A
    target whose terms are undefined for every reference (NaN, e.g. a single-class selection part) is left out, so
    :func:`proxy_gaps` falls back to the val level for it."""
    targets: dict[str, float] = {}
    for metric in ("auc", "f1"):
        shifts = [r.get(f"forget_{metric}", math.nan) - r.get(f"val_{metric}", math.nan) for r in references]
        shifts = [x for x in shifts if not math.isnan(x)]
        if shifts and not math.isnan(original.get(f"val_{metric}", math.nan)):
            targets[f"forget_{metric}_target"] = original[f"val_{metric}"] + sum(shifts) / len(shifts)
    mia = [r["mia"] for r in references if not math.isnan(r.get("mia", math.nan))]
    if mia:
        targets["mia_target"] = sum(mia) / len(mia)
    return targets
