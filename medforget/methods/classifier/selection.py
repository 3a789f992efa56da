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
        "forget_auc": abs(metrics.get("forget_auc", nan) - reference["val_auc"]),
        "forget_f1": abs(metrics.get("forget_f1", nan) - reference["val_f1"]),
        "val_auc": abs(metrics["val_auc"] - reference["val_auc"]),
        "retain_auc": abs(metrics["retain_auc"] - reference["retain_auc"]),
        "retain_acc": abs(metrics.get("retain_accuracy", nan) - reference.get("retain_accuracy", nan)),
        "mia": abs(metrics.get("mia", nan) - 0.5),
    }
    finite = [g for g in gaps.values() if not math.isnan(g)]
    gaps["score"] = sum(finite) / len(finite) if finite else float("nan")
    return gaps
