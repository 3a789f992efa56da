"""The audit: are the forget patients really gone?

For every run (original / unlearned / retrained checkpoints trained with one seed) and every model, on forget, retain,
test and val patients:

- utility of each head (fused, image, text): macro AUC, macro F1, accuracy (:mod:`medforget.evaluation.utility`);
- the membership-inference suite (:mod:`medforget.evaluation.mia`; forget = questioned members, test = non-members);
- robustness (:mod:`medforget.evaluation.robustness`): quantization recovery and the relearning attack;
- every number also as the gap to the retrained model, which is the target (not "lower is better").

Several runs give mean ± std (:func:`aggregate`). :func:`criteria` turns the means into pass/fail verdicts with
configurable :class:`Tolerances`. :func:`run_audit` writes ``audit.json`` (schema :data:`SCHEMA_VERSION`),
``audit.md`` and a self-contained ``audit.html`` with plots (:mod:`medforget.evaluation.report`). The forget request
appears only as salted hashes; no patient ID, name or report text is written or logged.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import secrets
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

import medforget
from medforget.checkpoint import CheckpointError, load_classifier, sha256_file, write_error
from medforget.classifier import FusionClassifier
from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import read_patient_ids, salted_hash
from medforget.evaluation.criteria import Draws, RunArtifacts, evaluate_criteria, model_values
from medforget.evaluation.mia import LiRAAttack, MembershipAttack
from medforget.evaluation.mia.base import PARTS, AttackData
from medforget.evaluation.per_patient import per_patient_test
from medforget.evaluation.utility import classification_metrics
from medforget.evaluation.verdict import MIN_REPLICATES, NA, decide, interval, overall

log = logging.getLogger("medforget")

SCHEMA_VERSION = 2
REFERENCE = "retrained"
MODEL_NAMES = ("original", "unlearned", "retrained")


def default_attacks() -> list[str]:
    """Every registered attack that needs no reference models."""
    return sorted(name for name, cls in MembershipAttack.registry.items() if not cls.opt_in)


@dataclass
class AuditConfig:
    """What the audit measures.

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
        from medforget.evaluation.robustness import QUANTIZATION_SCHEMES

        names = self.attack_names()
        unknown = [a for a in names if a not in MembershipAttack.registry]
        if unknown:
            import difflib

            hints = [f"{a!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
                a, MembershipAttack.registry, n=1)) else "") for a in unknown]
            raise ValueError(f"audit.attacks: unknown attack {', '.join(hints)}; registered: "
                             f"{sorted(MembershipAttack.registry)}")
        needing = [a for a in names if MembershipAttack.registry[a].opt_in]
        if needing and self.reference_models < 2:
            raise ValueError(f"audit.attacks {needing} need reference models: pass --audit.reference_models K (K >= 2)")
        bad = [q for q in self.quantization if q not in QUANTIZATION_SCHEMES]
        if bad:
            raise ValueError(f"audit.quantization: unknown scheme(s) {bad}; choose from {QUANTIZATION_SCHEMES}")
        if not 0.0 < self.relearn_fraction <= 1.0:
            raise ValueError(f"audit.relearn_fraction must lie in (0, 1], got {self.relearn_fraction}")
        if self.relearn_steps < 0 or self.reference_models < 0 or self.bootstrap < 0:
            raise ValueError("audit.relearn_steps, audit.reference_models and audit.bootstrap must be >= 0")
        if 0 < self.bootstrap < MIN_REPLICATES:
            raise ValueError(f"--audit.bootstrap {self.bootstrap}: intervals need at least {MIN_REPLICATES} resamples "
                             f"(0 turns them off, and with them every verdict)")
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


# --- prediction ----------------------------------------------------------------------------------------------------
def predict(model: FusionClassifier, loader, trainer: L.Trainer) -> dict[str, Any]:
    """Logits of every head, labels and manifest indices for one loader."""
    outputs = trainer.predict(model, loader)
    return {
        "logits": {h: torch.cat([o["logits"][h] for o in outputs]) for h in outputs[0]["logits"]},
        keys.LABEL: torch.cat([o[keys.LABEL] for o in outputs]),
        keys.INDEX: torch.cat([o[keys.INDEX] for o in outputs]),
    }


def check_split(model: FusionClassifier, datamodule: DicomReportDataModule, path: str | Path) -> None:
    """The datamodule must reproduce the training split the model was trained on, and read images with the
    channels it takes (``--data.channels``)."""
    model.check_channels(getattr(datamodule, "channels", 1), path)
    expected = getattr(model, "provenance", {}).get("split_fingerprint")
    if expected is not None and expected != datamodule.split_fingerprint:
        data = model.provenance.get("data", {})
        raise CheckpointError(
            f"{path}: the data split differs from the one this model was trained on; pass the same data options "
            f"as in training (manifest, seed, val_fraction, test_fraction): trained with {data}"
        )


def _trainer(accelerator: str) -> L.Trainer:
    return L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False)


def _metrics(outputs: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    return {part: {head: classification_metrics(logits, out[keys.LABEL]) for head, logits in out["logits"].items()}
            for part, out in outputs.items()}


# --- one run -------------------------------------------------------------------------------------------------------
def evaluate_models(
    checkpoints: dict[str, str | Path],
    datamodule: DicomReportDataModule,
    attacks: tuple[str, ...] | list[str] | None = None,
    accelerator: str = "auto",
    config: AuditConfig | None = None,
    data_kwargs: dict[str, Any] | None = None,
    reference_dir: str | Path | None = None,
    artifacts: RunArtifacts | None = None,
    salt: str | None = None,
) -> dict[str, Any]:
    """One run of the audit: utility per part and head, membership attacks, robustness, gaps to the retrained model.

    Args:
        checkpoints: ``{"original": path, "unlearned": path, "retrained": path}`` (any subset; gaps need
            ``retrained``, recovery fractions need ``original``).
        datamodule: In ``evaluate`` mode with the forget request.
        attacks: Registered attacks (default: ``config.attack_names()``, or every attack without reference models).
        accelerator: Lightning accelerator for prediction.
        config: What else to measure; ``None``: utility and attacks only (no robustness, no reference models).
        data_kwargs: Data options (needed to train reference models).
        reference_dir: Cache directory of the reference models (``config.reference_dir`` wins).
        artifacts: Filled with the per-sample outputs (intervals, plots) if given.
        salt: Salt of the patient hashes that list the per-patient test.
    """
    datamodule.setup("predict")
    loaders = datamodule.evaluation_dataloaders()
    trainer = _trainer(accelerator)
    names = list(attacks) if attacks is not None else (config.attack_names() if config else default_attacks())
    has_parts = all(p in loaders for p in PARTS)
    if not has_parts:
        log.warning("membership attacks need forget, retain, val and test patients; skipping them")
        names = []
    artifacts = artifacts if artifacts is not None else RunArtifacts()
    artifacts.request = str(datamodule.forget)
    ids: dict[str, np.ndarray] = {}  # patient ID of each sample per part (in memory only)

    references: list[dict[str, torch.Tensor]] = []
    reference_members: list[dict[str, torch.Tensor]] = []
    wants_references = config is not None and config.reference_models >= 2 and has_parts
    if names and any(MembershipAttack.registry[a].opt_in for a in names) and not wants_references:
        raise ValueError("LiRA/RMIA need --audit.reference_models K (K >= 2)")
    if wants_references:
        if "original" not in checkpoints:
            raise ValueError("reference models (--audit.reference_models) are trained with the original model's "
                             "recipe: pass --original")
        from medforget.evaluation.reference_models import train_reference_models

        paths, in_sets = train_reference_models(
            checkpoints["original"], datamodule, data_kwargs or {}, config.reference_models,
            config.reference_dir or reference_dir or Path(tempfile.mkdtemp(prefix="medforget-ref-")),
            config.reference_epochs, config.seed, accelerator)
        for path, trained_on in zip(paths, in_sets, strict=True):
            outs = {part: predict(load_classifier(path), loaders[part], trainer) for part in PARTS}
            references.append({part: o["logits"]["fused"] for part, o in outs.items()})
            members = {}
            for part, o in outs.items():
                patients = datamodule.df.loc[o[keys.INDEX].numpy(), "patient_id"].to_numpy()
                members[part] = torch.tensor([p in trained_on for p in patients], dtype=torch.bool)
            reference_members.append(members)

    results: dict[str, Any] = {}
    models: dict[str, FusionClassifier] = {}
    for name, path in checkpoints.items():
        model = load_classifier(path)
        check_split(model, datamodule, path)
        models[name] = model
        outputs = {part: predict(model, loader, trainer) for part, loader in loaders.items()}
        for part, out in outputs.items():
            if part not in ids:  # the patient of each sample, kept as integer codes in the artifacts
                ids[part] = datamodule.df.loc[out[keys.INDEX].numpy(), "patient_id"].astype(str).to_numpy()
                artifacts.groups[part] = np.unique(ids[part], return_inverse=True)[1].reshape(-1)
                artifacts.labels[part] = out[keys.LABEL].numpy()
        artifacts.logits[name] = {p: outputs[p]["logits"]["fused"].double().numpy() for p in ("forget", "test")
                                  if p in outputs}
        mia = {}
        data = None
        if names or references:
            data = AttackData({p: (outputs[p]["logits"]["fused"], outputs[p][keys.LABEL]) for p in PARTS},
                              references, reference_members, {p: artifacts.groups[p] for p in PARTS})
        for attack in names:
            result = _attack(attack, config).run(data)
            mia[attack] = result.metrics
            artifacts.scores.setdefault(name, {})[attack] = result.scores
        results[name] = {
            "checkpoint": str(path),
            "checkpoint_sha256": sha256_file(path),
            "provenance": getattr(model, "provenance", {}),
            "metrics": _metrics(outputs),
            "mia": mia,
        }
        if references and data is not None:
            results[name]["per_patient"] = _per_patient(data, ids, config, salt)
    if config is not None:
        _robustness(results, models, datamodule, loaders, config, artifacts)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "data": {"manifest_sha256": datamodule.dataset_hash(), "parts": datamodule.summary(),
                 "selection_fraction": datamodule.selection_fraction,
                 **({"sampling": datamodule.sampling()} if hasattr(datamodule, "sampling") else {})},
        "models": results,
    }
    if REFERENCE in results:
        report["gaps_to_retrained"] = {
            name: _gaps(res, results[REFERENCE]) for name, res in results.items() if name != REFERENCE
        }
    if names and config is not None and config.bootstrap > 0:
        _attack_intervals(results, report.get("gaps_to_retrained", {}), artifacts, config)
    return report


def _attack(name: str, config: AuditConfig | None) -> MembershipAttack:
    if name == "LiRAAttack" and config is not None:
        return LiRAAttack(global_variance=config.lira_variance == "pooled")
    return MembershipAttack.registry[name]()


def _per_patient(data: AttackData, ids: dict[str, np.ndarray], config: AuditConfig, salt: str | None
                 ) -> dict[str, Any]:
    """The per-patient forgetting test of one model (:mod:`medforget.evaluation.per_patient`): offline LiRA
    statistics of the forget patients against the val and test patients'."""
    scores = LiRAAttack(global_variance=True).scores(data)
    null_scores = np.concatenate([scores["val"].numpy(), scores["test"].numpy()])
    null_groups = np.concatenate([np.char.add("v:", ids["val"]), np.char.add("t:", ids["test"])])

    def name(patient: str) -> str:
        return salted_hash(patient, salt) if salt is not None else "(unsalted)"

    return per_patient_test(scores["forget"].numpy(), ids["forget"], null_scores, null_groups,
                            config.per_patient_permutations, config.per_patient_alpha, config.seed, name)


def _attack_intervals(results: dict[str, Any], gaps: dict[str, Any], artifacts: RunArtifacts,
                      config: AuditConfig) -> None:
    """95% intervals of every model's attack AUCs and of their gaps to the retrained model, per study
    (``auc_ci95``) and per patient (``patient_auc_ci95``), from one set of paired patient resamples."""
    draws = Draws(artifacts, config.bootstrap, config.seed)
    values = {name: model_values(artifacts, name, draws) for name in results}
    for name, res in results.items():
        for attack, metrics in res["mia"].items():
            metrics["auc_ci95"] = interval(values[name][f"mia_study/{attack}"][1], 0.95)
            metrics["patient_auc_ci95"] = interval(values[name][f"mia/{attack}"][1], 0.95)
    for name, node in gaps.items():
        for attack, metrics in node["mia"].items():
            for key, quantity in (("auc_ci95", f"mia_study/{attack}"), ("patient_auc_ci95", f"mia/{attack}")):
                metrics[key] = interval(values[name][quantity][1] - values[REFERENCE][quantity][1], 0.95)


def _forget_split(datamodule: DicomReportDataModule, fraction: float, seed: int) -> tuple[Subset, Subset, int, int]:
    """Forget studies split by patient: the relearning attack's fine-tuning part and the part it is measured on."""
    forget = datamodule.subset("forget")
    patients = datamodule.df.loc[datamodule.indices["forget"], "patient_id"].to_numpy()
    unique = np.array(sorted(set(patients)))
    n_attack = max(1, round(fraction * len(unique)))
    if len(unique) > 1:
        n_attack = min(n_attack, len(unique) - 1)
    chosen = set(np.random.default_rng(seed).choice(unique, size=n_attack, replace=False))
    attack = [i for i, p in enumerate(patients) if p in chosen]
    held = [i for i, p in enumerate(patients) if p not in chosen] or attack
    return Subset(forget, attack), Subset(forget, held), n_attack, len(unique) - n_attack


def _robustness(results: dict[str, Any], models: dict[str, FusionClassifier], datamodule: DicomReportDataModule,
                loaders: dict[str, DataLoader], config: AuditConfig, artifacts: RunArtifacts) -> None:
    from medforget.evaluation.mia import LossAttack
    from medforget.evaluation.robustness import (
        predict_plain,
        quantize_model,
        recovered_fraction,
        relearning_attack,
    )

    if "forget" not in loaders:
        return
    for scheme in config.quantization:
        for name, model in models.items():
            quantized = quantize_model(model, scheme, config.int4_group_size)
            outs = {part: predict_plain(quantized, loaders[part]) for part in ("forget", "test")}
            artifacts.quantized.setdefault(name, {})[scheme] = outs["forget"]["logits"]["fused"].double().numpy()
            entry: dict[str, Any] = {"metrics": {p: classification_metrics(o["logits"]["fused"], o[keys.LABEL])
                                                 for p, o in outs.items()}}
            loss = LossAttack()
            entry["loss_mia_auc"] = loss.evaluate(
                (outs["forget"]["logits"]["fused"], outs["forget"][keys.LABEL]),
                (outs["test"]["logits"]["fused"], outs["test"][keys.LABEL]))["auc"]
            results[name].setdefault("quantization", {})[scheme] = entry
        if "original" in results:
            original = results["original"]
            for name in results:
                if name == "original":
                    continue
                q = results[name]["quantization"][scheme]
                base = results[name]
                q["recovered_fraction"] = {
                    "forget_accuracy": recovered_fraction(original["metrics"]["forget"]["fused"]["accuracy"],
                                                          base["metrics"]["forget"]["fused"]["accuracy"],
                                                          q["metrics"]["forget"]["accuracy"]),
                    "forget_auc": recovered_fraction(original["metrics"]["forget"]["fused"]["auc"],
                                                     base["metrics"]["forget"]["fused"]["auc"],
                                                     q["metrics"]["forget"]["auc"]),
                }
    if config.relearn_steps > 0:
        attack_part, held_part, n_attack, n_held = _forget_split(datamodule, config.relearn_fraction, config.seed)
        attack_loader = DataLoader(attack_part, batch_size=datamodule.batch_size, shuffle=False)
        eval_loader = DataLoader(held_part, batch_size=datamodule.batch_size, shuffle=False)
        for name, model in models.items():
            final: dict[str, Any] = {}
            curve = relearning_attack(model, attack_loader, eval_loader, config.relearn_steps, config.relearn_lr,
                                      config.seed, final=final)
            results[name]["relearning"] = {"attack_patients": n_attack, "eval_patients": n_held, **curve}
            artifacts.relearned[name] = final["logits"]["fused"].double().numpy()
            if artifacts.relearn_groups is None:
                patients = datamodule.df.loc[final[keys.INDEX].numpy(), "patient_id"].astype(str).to_numpy()
                artifacts.relearn_groups = np.unique(patients, return_inverse=True)[1].reshape(-1)
                artifacts.relearn_labels = final[keys.LABEL].numpy()


def _gaps(result: dict, reference: dict) -> dict:
    gaps: dict[str, Any] = {"metrics": {}, "mia": {}}
    for part, heads in result["metrics"].items():
        gaps["metrics"][part] = {
            head: {k: v - reference["metrics"][part][head][k] for k, v in values.items()}
            for head, values in heads.items()
        }
    for attack, values in result["mia"].items():
        gaps["mia"][attack] = {k: values[k] - reference["mia"][attack][k]
                               for k in ("auc", "patient_auc", "patient_max_auc", "tpr@1%fpr", "tpr@0.1%fpr",
                                         "member_rate")}
    if "relearning" in result and "relearning" in reference:
        gaps["relearning"] = {"final_accuracy": result["relearning"]["accuracy"][-1]
                              - reference["relearning"]["accuracy"][-1]}
    if "quantization" in result and "quantization" in reference:
        gaps["quantization"] = {
            scheme: {p: {k: v - reference["quantization"][scheme]["metrics"][p][k] for k, v in m.items()}
                     for p, m in q["metrics"].items()}
            for scheme, q in result["quantization"].items()
        }
    return gaps


# --- several runs --------------------------------------------------------------------------------------------------
def aggregate(values: list[Any]) -> Any:
    """Mean ± std over runs of every numeric leaf of structurally equal dicts: a number becomes
    ``{"mean", "std", "n"}`` (NaN runs left out; std is the sample std, 0 for one run); numeric lists of equal length
    are averaged element-wise; other leaves are dropped."""
    first = values[0]
    if isinstance(first, dict):
        keys_ = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
        out = {k: aggregate([v[k] for v in values]) for k in keys_}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(first, bool) or first is None:
        return None
    if isinstance(first, (int, float)):
        x = np.array([float(v) for v in values])
        x = x[~np.isnan(x)]
        if len(x) == 0:
            return {"mean": float("nan"), "std": float("nan"), "n": 0}
        return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "n": len(x)}
    if isinstance(first, list) and first and all(isinstance(v, list) and len(v) == len(first) for v in values):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for v in values for x in v):
            return [float(np.nanmean([v[i] for v in values])) if not all(
                math.isnan(float(v[i])) for v in values) else float("nan") for i in range(len(first))]
    return None


def mean_of(summary: dict, *path: str) -> float:
    """The mean at ``path`` of an :func:`aggregate` summary (``nan`` if absent)."""
    node: Any = summary
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return float("nan")
        node = node[p]
    return float(node["mean"]) if isinstance(node, dict) and "mean" in node else float("nan")


def criteria(run_artifacts: list[RunArtifacts], tolerances: Tolerances, config: AuditConfig,
             timing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The three-way verdict of every criterion (:mod:`medforget.evaluation.criteria`) over the runs, plus the time
    ratio when a tolerance is set for it (a measured wall time, judged on its mean: it has no patient interval)."""
    out = evaluate_criteria(run_artifacts, tolerances, config.bootstrap, config.seed)
    if tolerances.time_ratio is not None and timing and out:
        value = timing.get("ratio", {}).get("mean", float("nan"))
        verdict = NA if math.isnan(value) else ("pass" if value <= tolerances.time_ratio else "fail")
        out.append({"criterion": "time_ratio", "description": "unlearning / retraining wall time (measured)",
                    **decide(value, None, tolerances.time_ratio, "upper"), "verdict": verdict,
                    "reason": "a measured time, compared directly", "power": None, "has_power": None,
                    "counted": verdict != NA, "noise_floor": None, "runs": len(run_artifacts)})
    return out


def verdict_of(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The overall verdict over the counted criteria, with how many had power and the verdict counts."""
    counted = [c for c in checks if c.get("counted")]
    without_power = [c["criterion"] for c in checks if c.get("has_power") is False]
    verdict = overall([c["verdict"] for c in counted])
    counts = {v: sum(c["verdict"] == v for c in counted) for v in ("pass", "inconclusive", "fail")}
    return {"verdict": verdict, "counted": len(counted), "criteria": len(checks), "no_power": without_power,
            "counts": counts}


def _timing(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_run = []
    for run in runs:
        models = run["models"]
        unlearn = models.get("unlearned", {}).get("provenance", {}).get("unlearn_seconds", float("nan"))
        retrain = models.get(REFERENCE, {}).get("provenance", {}).get("fit_seconds", float("nan"))
        original = models.get("original", {}).get("provenance", {}).get("fit_seconds", float("nan"))
        per_run.append({"unlearn_seconds": unlearn, "retrain_seconds": retrain, "original_train_seconds": original,
                        "ratio": unlearn / retrain if retrain and not math.isnan(retrain) else float("nan")})
    return aggregate(per_run)


# --- privacy and provenance ----------------------------------------------------------------------------------------
def load_or_create_salt(path: str | Path) -> str:
    """The audit's secret salt: read from ``path``, or created there (mode 0600). Keep it private: with the salt,
    anyone holding a patient ID can check whether it was in the request."""
    path = Path(path)
    if path.exists():
        salt = path.read_text().strip()
        if not salt:
            raise ValueError(f"salt file {path} is empty")
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt + "\n")
    return salt


def forget_request_record(requests: list[str | Path], salt: str) -> dict[str, Any]:
    """The forget request(s) as sorted salted hashes (no raw IDs)."""
    hashed = []
    for request in requests:
        ids = read_patient_ids(request)
        hashed.append(sorted(salted_hash(pid, salt) for pid in ids))
    record: dict[str, Any] = {"hash": "sha256(salt:patient_id)[:16]", "patients": [len(h) for h in hashed],
                              "salted_hashes": hashed[0] if len(hashed) == 1 else hashed}
    return record


def code_version() -> dict[str, Any]:
    """medforget's version and, when run from a git checkout, the commit (and whether the tree was modified)."""
    info: dict[str, Any] = {"medforget": medforget.__version__, "git_commit": None, "git_dirty": None,
                            "torch": torch.__version__, "lightning": L.__version__}
    root = Path(medforget.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# --- the audit -----------------------------------------------------------------------------------------------------
def run_audit(
    runs: list[dict[str, str | Path]],
    forget: list[str | Path],
    data_kwargs: dict[str, Any],
    out: str | Path,
    config: AuditConfig | None = None,
    tolerances: Tolerances | None = None,
    accelerator: str = "auto",
    salt_file: str | Path | None = None,
    cli_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit one or more runs and write ``audit.json``, ``audit.md``, ``audit.html`` (and ``plots/``) to ``out``.

    Args:
        runs: One ``{"original"|"unlearned"|"retrained": checkpoint}`` dict per run (seed).
        forget: The forget request file, one for all runs or one per run.
        data_kwargs: Data options (as in training), without ``mode``/``forget``.
        out: Output directory.
        config: What to measure (:class:`AuditConfig`).
        tolerances: Pass/fail tolerances (:class:`Tolerances`).
        accelerator: Lightning accelerator for prediction.
        salt_file: Secret salt of the forget-request hashes (created if missing; default ``<out>/private/salt``).
        cli_config: The configuration to record in the report.
    """
    from medforget.evaluation.report import write_report

    config = config or AuditConfig()
    tolerances = tolerances or Tolerances()
    out = Path(out)
    if len(forget) not in (1, len(runs)):
        raise ValueError(f"give one forget request for all runs or one per run; got {len(forget)} for {len(runs)} runs")
    requests = [str(f) for f in forget] * len(runs) if len(forget) == 1 else [str(f) for f in forget]
    data_kwargs = {**data_kwargs, "selection_fraction": _selection_fraction(runs, data_kwargs)}
    datamodules: dict[str, DicomReportDataModule] = {}
    for request in dict.fromkeys(requests):  # every request is checked before anything is written
        datamodules[request] = DicomReportDataModule(**{**data_kwargs, "mode": "evaluate", "forget": request})
        datamodules[request].setup("predict")
    salt = load_or_create_salt(salt_file or out / "private" / "salt")
    run_reports, artifacts = [], []
    start = time.perf_counter()
    for i, (checkpoints, request) in enumerate(zip(runs, requests, strict=True)):
        art = RunArtifacts()
        print(f"auditing run {i + 1}/{len(runs)}: {', '.join(checkpoints)}", flush=True)
        run_reports.append(evaluate_models(checkpoints, datamodules[request], accelerator=accelerator, config=config,
                                           data_kwargs=data_kwargs, reference_dir=out / "reference_models",
                                           artifacts=art, salt=salt))
        artifacts.append(art)
    summary = aggregate([{k: r[k] for k in ("models", "gaps_to_retrained") if k in r} for r in run_reports])
    timing = _timing(run_reports)
    checks = criteria(artifacts, tolerances, config, timing)
    decision = verdict_of(checks)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(),
        "config": {"audit": asdict(config), "tolerances": asdict(tolerances), "cli": cli_config or {}},
        "data": run_reports[0]["data"],
        "forget_request": forget_request_record(list(dict.fromkeys(requests)), salt),
        "runs": run_reports,
        "summary": summary,
        "timing": timing,
        "criteria": checks,
        "verdict": decision["verdict"],
        "verdict_detail": decision,
        "per_patient": [{m: r["models"][m]["per_patient"] for m in r["models"] if "per_patient" in r["models"][m]}
                        for r in run_reports],
        "audit_seconds": time.perf_counter() - start,
    }
    write_json(report, out / "audit.json")
    write_report(report, artifacts[0], out, plots=config.plots)
    return report


def _selection_fraction(runs: list[dict[str, str | Path]], data_kwargs: dict[str, Any]) -> float:
    """The forget patients set aside for checkpoint selection are never audited: their share comes from the unlearned
    checkpoints' provenance (all runs must agree), else from ``--data.selection_fraction``."""
    from medforget.checkpoint import read_checkpoint

    recorded = set()
    for run in runs:
        if "unlearned" in run:
            split = read_checkpoint(run["unlearned"]).get("medforget", {}).get("provenance", {}).get("selection_split")
            if split is not None:
                recorded.add(float(split["fraction"]))
    if len(recorded) > 1:
        raise ValueError(f"the unlearned checkpoints set aside different shares of the forget patients for checkpoint "
                         f"selection ({sorted(recorded)}); audit them separately")
    given = float(data_kwargs.get("selection_fraction", 0.25))
    if recorded:
        fraction = recorded.pop()
        if fraction != given:
            log.info("auditing without the %.2f of the forget patients that checkpoint selection saw (from the "
                     "unlearned checkpoint; --data.selection_fraction %.2f ignored)", fraction, given)
        return fraction
    return given


# --- console -------------------------------------------------------------------------------------------------------
COLUMNS = (
    ("forget", "auc"), ("forget", "f1"), ("forget", "accuracy"),
    ("retain", "auc"), ("retain", "accuracy"),
    ("test", "auc"), ("test", "f1"), ("test", "accuracy"),
)


def means(summary: dict) -> dict:
    """An :func:`aggregate` summary with every ``{"mean", "std", "n"}`` leaf replaced by its mean."""
    if isinstance(summary, dict):
        if set(summary) == {"mean", "std", "n"}:
            return summary["mean"]
        return {k: means(v) for k, v in summary.items()}
    return summary


def _fmt(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), "-" * len(line(header)), *[line(r) for r in rows]])


def format_table(report: dict[str, Any], head: str = "fused", attack: str = "LossAttack") -> str:
    """A plain-text table of one head's metrics and an attack's AUC, with gaps to the retrained model. ``report`` is
    one run (:func:`evaluate_models`) or ``means(summary)``."""
    titles = [f"{part} {metric[:3].upper() if metric != 'accuracy' else 'acc'}" for part, metric in COLUMNS]
    rows = []
    for name, res in report["models"].items():
        cells = [_fmt(res["metrics"].get(part, {}).get(head, {}).get(metric, float("nan"))) for part, metric in COLUMNS]
        cells.append(_fmt(res.get("mia", {}).get(attack, {}).get("auc", float("nan"))))
        rows.append([name, *cells])
    for name, gaps in report.get("gaps_to_retrained", {}).items():
        cells = [_fmt(gaps["metrics"].get(part, {}).get(head, {}).get(metric, float("nan")), True)
                 for part, metric in COLUMNS]
        cells.append(_fmt(gaps.get("mia", {}).get(attack, {}).get("auc", float("nan")), True))
        rows.append([f"Δ {name} vs retrained", *cells])
    return _table(["model", *titles, "MIA AUC"], rows)


def format_heads(report: dict[str, Any], part: str = "test", metric: str = "auc") -> str:
    """Per-head (fused / image / text) ``metric`` on ``part`` for every model."""
    lines = [f"{part} {metric.upper()} by head"]
    for name, res in report["models"].items():
        heads = res["metrics"].get(part, {})
        lines.append(f"  {name:<10} " + "  ".join(f"{h} {v[metric]:.3f}" for h, v in heads.items()))
    return "\n".join(lines)


def format_attacks(report: dict[str, Any]) -> str:
    """Attack AUC (forget vs test) of every model, per attack."""
    models = list(report["models"])
    attacks = sorted({a for res in report["models"].values() for a in res.get("mia", {})})
    rows = [[a, *[_fmt(report["models"][m]["mia"].get(a, {}).get("auc")) for m in models]] for a in attacks]
    return _table(["attack AUC (forget vs test)", *models], rows)


def _ci(ci: Any) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if isinstance(ci, list) and ci and None not in ci and not any(
        math.isnan(x) for x in ci) else "n/a"


def format_criteria(checks: list[dict[str, Any]]) -> str:
    """One line per criterion: the signed gap with its 90% and 95% intervals, the tolerance, the noise floor, the
    original's gap (power) and the verdict; the reasons of INCONCLUSIVE results below."""
    rows = []
    for c in checks:
        tol = f"±{c['tolerance']:.3f}" if c.get("sided") == "two-sided" else f"<= {c['tolerance']:.3f}"
        power = c.get("power")
        power_cell = "" if power is None else (_fmt(power["estimate"], True) + ("" if c.get("has_power")
                                                                                else " no power"))
        floor = c.get("noise_floor")
        result = c["verdict"].upper() + ("" if c.get("counted") else " (not counted)")
        rows.append([c["criterion"], _fmt(c["estimate"], True), c.get("direction") or "", _ci(c.get("ci90")),
                     _ci(c.get("ci95")), tol, "" if floor is None else f"{floor:.3f}", power_cell, result])
    table = _table(["criterion", "gap", "direction", "90% interval", "95% interval", "tolerance", "noise floor",
                    "original", "verdict"], rows)
    notes = [f"  {c['criterion']}: {c['reason']}" for c in checks if c["verdict"] == "inconclusive"]
    return table + ("\n" + "\n".join(notes) if notes else "")


def format_verdict(report: dict[str, Any]) -> str:
    """The overall verdict and what it rests on."""
    d = report.get("verdict_detail", {})
    if not d:
        return f"verdict: {report['verdict'].upper()}"
    counts = d.get("counts", {})
    line = (f"verdict: {report['verdict'].upper()} ({d['counted']} of {d['criteria']} criteria counted: "
            f"{counts.get('pass', 0)} pass, {counts.get('inconclusive', 0)} inconclusive, {counts.get('fail', 0)} fail")
    if d.get("no_power"):
        line += f"; no power on this model: {', '.join(d['no_power'])}"
    return line + ")"


def format_per_patient(report: dict[str, Any]) -> str:
    """The per-patient forgetting test of every model (the unlearned model's patients listed by salted hash)."""
    lines = []
    for i, run in enumerate(report.get("per_patient", [])):
        if not run:
            continue
        head = "per-patient forgetting test" + (f" (run {i + 1})" if len(report["per_patient"]) > 1 else "")
        lines.append(f"{head}: p-value of each forget patient against {next(iter(run.values()))['null_patients']} "
                     f"never-seen patients (offline LiRA statistic)")
        for name, res in run.items():
            passed = sum(r["passed"] for r in res["patients"])
            lines.append(f"  {name:<10} {passed}/{res['forget_patients']} patients with p >= {res['alpha']:g}; "
                         f"combined p = {res['combined_p']:.4f}")
        if "unlearned" in run:
            rows = [[r["patient"], str(r["studies"]), f"{r['statistic']:+.2f}", f"{r['p_value']:.3f}",
                     "pass" if r["passed"] else "MEMBER-LIKE"] for r in run["unlearned"]["patients"]]
            lines.append(_table(["patient (salted hash)", "studies", "statistic", "p-value", "result"], rows))
    return "\n".join(lines)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (temp file + rename), with the usual permissions (``0666 & ~umask``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: name the file
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically; NaN and infinities are written as ``null`` (strict JSON)."""
    return atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
