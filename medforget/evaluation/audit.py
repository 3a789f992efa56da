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
from typing import Any

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
from medforget.evaluation.mia import MembershipAttack
from medforget.evaluation.mia.base import PARTS, AttackData, ci95, patient_bootstrap_aucs
from medforget.evaluation.utility import classification_metrics

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
        quantization: Quantization schemes of the recovery attack (``int8``, ``int4``; empty: off).
        int4_group_size: Group size of the 4-bit round-to-nearest quantization.
        relearn_steps: Fine-tuning steps of the relearning attack (0: off).
        relearn_lr: Learning rate of the relearning attack (AdamW).
        relearn_fraction: Share of the forget patients the relearning attack fine-tunes on (at least one patient);
            accuracy is measured on the other forget patients.
        seed: Seed of the attacks (folds, relearning split, reference design, bootstrap).
        bootstrap: Patient-level bootstrap resamples for the 95% intervals of every attack AUC and of its gap to the
            retrained model (0: off). With few forget patients the intervals are wide: read the pass/fail with them.
        plots: Write ROC curves, score histograms and robustness plots (PNG, embedded in audit.html).
    """

    attacks: list[str] | None = None
    reference_models: int = 0
    reference_epochs: int | None = None
    quantization: list[str] = field(default_factory=lambda: ["int8", "int4"])
    int4_group_size: int = 32
    relearn_steps: int = 10
    relearn_lr: float = 5e-4
    relearn_fraction: float = 0.3
    seed: int = 0
    bootstrap: int = 200
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
    """The datamodule must reproduce the training split the model was trained on."""
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
@dataclass
class RunArtifacts:
    """In-memory extras of a run for the plots: per model and attack, the per-part scores."""

    scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)


def evaluate_models(
    checkpoints: dict[str, str | Path],
    datamodule: DicomReportDataModule,
    attacks: tuple[str, ...] | list[str] | None = None,
    accelerator: str = "auto",
    config: AuditConfig | None = None,
    data_kwargs: dict[str, Any] | None = None,
    reference_dir: str | Path | None = None,
    artifacts: RunArtifacts | None = None,
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
        reference_dir: Cache directory of the reference models.
        artifacts: Filled with per-sample attack scores (for plots) if given.
    """
    datamodule.setup("predict")
    loaders = datamodule.evaluation_dataloaders()
    trainer = _trainer(accelerator)
    names = list(attacks) if attacks is not None else (config.attack_names() if config else default_attacks())
    has_parts = all(p in loaders for p in PARTS)
    if not has_parts:
        log.warning("membership attacks need forget, retain, val and test patients; skipping them")
        names = []

    references: list[dict[str, torch.Tensor]] = []
    reference_members: list[dict[str, torch.Tensor]] = []
    if names and any(MembershipAttack.registry[a].opt_in for a in names):
        if config is None or config.reference_models < 2 or "original" not in checkpoints:
            raise ValueError("LiRA/RMIA need --audit.reference_models K (K >= 2) and the --original checkpoint")
        from medforget.evaluation.reference_models import train_reference_models

        paths, design, retain_patients = train_reference_models(
            checkpoints["original"], datamodule, data_kwargs or {}, config.reference_models,
            reference_dir or Path(tempfile.mkdtemp(prefix="medforget-ref-")), config.reference_epochs, config.seed,
            accelerator)
        position = {p: i for i, p in enumerate(retain_patients)}
        for k, path in enumerate(paths):
            model = load_classifier(path)
            outs = {part: predict(model, loaders[part], trainer) for part in PARTS}
            references.append({part: o["logits"]["fused"] for part, o in outs.items()})
            members = {}
            for part, o in outs.items():
                if part == "retain":
                    patients = datamodule.df.loc[o[keys.INDEX].numpy(), "patient_id"]
                    members[part] = torch.tensor([bool(design[k, position[p]]) for p in patients])
                else:
                    members[part] = torch.zeros(len(o[keys.LABEL]), dtype=torch.bool)
            reference_members.append(members)

    artifacts = artifacts if artifacts is not None else RunArtifacts()
    results: dict[str, Any] = {}
    models: dict[str, FusionClassifier] = {}
    groups: dict[str, np.ndarray] = {}
    for name, path in checkpoints.items():
        model = load_classifier(path)
        check_split(model, datamodule, path)
        models[name] = model
        outputs = {part: predict(model, loader, trainer) for part, loader in loaders.items()}
        for part in ("forget", "test"):
            if part in outputs and part not in groups:  # patient of each sample, as integer codes (no IDs kept)
                ids = datamodule.df.loc[outputs[part][keys.INDEX].numpy(), "patient_id"].to_numpy()
                groups[part] = np.unique(ids, return_inverse=True)[1]
        mia = {}
        if names:
            data = AttackData({p: (outputs[p]["logits"]["fused"], outputs[p][keys.LABEL]) for p in PARTS},
                              references, reference_members)
            for attack in names:
                result = MembershipAttack.registry[attack]().run(data)
                mia[attack] = result.metrics
                artifacts.scores.setdefault(name, {})[attack] = result.scores
        results[name] = {
            "checkpoint": str(path),
            "checkpoint_sha256": sha256_file(path),
            "provenance": getattr(model, "provenance", {}),
            "metrics": _metrics(outputs),
            "mia": mia,
        }
    if config is not None:
        _robustness(results, models, datamodule, loaders, config)
    bootstrap = {}
    if names and config is not None and config.bootstrap > 0:
        bootstrap = _bootstrap(results, artifacts, groups, names, config)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "data": {"manifest_sha256": datamodule.dataset_hash(), "parts": datamodule.summary()},
        "models": results,
    }
    if REFERENCE in results:
        report["gaps_to_retrained"] = {
            name: _gaps(res, results[REFERENCE]) for name, res in results.items() if name != REFERENCE
        }
        for name, gaps in report["gaps_to_retrained"].items():
            for attack, values in bootstrap.items():
                gaps["mia"][attack]["auc_ci95"] = ci95(values[name] - values[REFERENCE])
    return report


def _bootstrap(results: dict[str, Any], artifacts: RunArtifacts, groups: dict[str, np.ndarray], names: list[str],
               config: AuditConfig) -> dict[str, dict[str, np.ndarray]]:
    """Patient-level bootstrap AUCs of every attack and model (paired across models); adds ``auc_ci95``."""
    out = {}
    for attack in names:
        scores = {m: (artifacts.scores[m][attack]["forget"], artifacts.scores[m][attack]["test"]) for m in results}
        out[attack] = patient_bootstrap_aucs(scores, groups["forget"], groups["test"], config.bootstrap, config.seed)
        for m in results:
            results[m]["mia"][attack]["auc_ci95"] = ci95(out[attack][m])
    return out


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
                loaders: dict[str, DataLoader], config: AuditConfig) -> None:
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
            curve = relearning_attack(model, attack_loader, eval_loader, config.relearn_steps, config.relearn_lr,
                                      config.seed)
            results[name]["relearning"] = {"attack_patients": n_attack, "eval_patients": n_held, **curve}


def _gaps(result: dict, reference: dict) -> dict:
    gaps: dict[str, Any] = {"metrics": {}, "mia": {}}
    for part, heads in result["metrics"].items():
        gaps["metrics"][part] = {
            head: {k: v - reference["metrics"][part][head][k] for k, v in values.items()}
            for head, values in heads.items()
        }
    for attack, values in result["mia"].items():
        gaps["mia"][attack] = {k: values[k] - reference["mia"][attack][k]
                               for k in ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "member_rate")}
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


def criteria(summary: dict, tolerances: Tolerances, timing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Pass/fail of the unlearned model against the retrained one, per criterion (mean over runs)."""
    out: list[dict[str, Any]] = []
    models = summary.get("models", {})
    if "unlearned" not in models or REFERENCE not in models:
        return out

    def add(name: str, description: str, value: float, tolerance: float, interval: list | None = None) -> None:
        passed = None if math.isnan(value) else bool(value <= tolerance + 1e-12)
        entry = {"criterion": name, "description": description, "value": value, "tolerance": tolerance,
                 "passed": passed}
        if interval is not None:
            entry["gap_ci95"] = interval
        out.append(entry)

    gaps = summary.get("gaps_to_retrained", {}).get("unlearned", {})
    for attack in models["unlearned"].get("mia", {}):
        gap = mean_of(models, "unlearned", "mia", attack, "auc") - mean_of(models, REFERENCE, "mia", attack, "auc")
        interval = gaps.get("mia", {}).get(attack, {}).get("auc_ci95")
        add(f"mia/{attack}", f"|{attack} AUC on the forget set: unlearned - retrained|", abs(gap),
            tolerances.mia_auc_gap, interval if isinstance(interval, list) else None)
    for metric, tol in (("accuracy", tolerances.forget_accuracy_gap), ("auc", tolerances.forget_auc_gap)):
        gap = (mean_of(models, "unlearned", "metrics", "forget", "fused", metric)
               - mean_of(models, REFERENCE, "metrics", "forget", "fused", metric))
        add(f"forget_{metric}", f"|forget {metric} (fused head): unlearned - retrained|", abs(gap), tol)
    drop = (mean_of(models, REFERENCE, "metrics", "test", "fused", "auc")
            - mean_of(models, "unlearned", "metrics", "test", "fused", "auc"))
    add("test_auc_drop", "test AUC (fused head) lost: retrained - unlearned", drop, tolerances.test_auc_drop)
    for scheme in models["unlearned"].get("quantization", {}):
        value = mean_of(models, "unlearned", "quantization", scheme, "recovered_fraction", "forget_accuracy")
        add(f"quantization/{scheme}", f"share of the forgotten forget accuracy recovered by {scheme} quantization",
            value, tolerances.quantization_recovery)
    if "relearning" in models["unlearned"] and "relearning" in models[REFERENCE]:
        u, r = models["unlearned"]["relearning"]["accuracy"], models[REFERENCE]["relearning"]["accuracy"]
        add("relearning", "forget accuracy after the relearning attack: unlearned - retrained", u[-1] - r[-1],
            tolerances.relearn_accuracy_gap)
    if tolerances.time_ratio is not None and timing:
        add("time_ratio", "unlearning / retraining wall time", timing.get("ratio", {}).get("mean", float("nan")),
            tolerances.time_ratio)
    return out


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
    salt = load_or_create_salt(salt_file or out / "private" / "salt")
    run_reports, artifacts = [], []
    start = time.perf_counter()
    datamodule = None
    for i, (checkpoints, request) in enumerate(zip(runs, requests, strict=True)):
        if datamodule is None or datamodule.forget != request:
            datamodule = DicomReportDataModule(**{**data_kwargs, "mode": "evaluate", "forget": request})
        art = RunArtifacts()
        print(f"auditing run {i + 1}/{len(runs)}: {', '.join(checkpoints)}", flush=True)
        run_reports.append(evaluate_models(checkpoints, datamodule, accelerator=accelerator, config=config,
                                           data_kwargs=data_kwargs, reference_dir=out / "reference_models" / f"run{i}",
                                           artifacts=art))
        artifacts.append(art)
    summary = aggregate([{k: r[k] for k in ("models", "gaps_to_retrained") if k in r} for r in run_reports])
    timing = _timing(run_reports)
    checks = criteria(summary, tolerances, timing)
    evaluated = [c["passed"] for c in checks if c["passed"] is not None]
    verdict = "n/a" if not evaluated else ("pass" if all(evaluated) else "fail")
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
        "verdict": verdict,
        "audit_seconds": time.perf_counter() - start,
    }
    write_json(report, out / "audit.json")
    write_report(report, artifacts[0], out, plots=config.plots)
    return report


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


def format_criteria(checks: list[dict[str, Any]]) -> str:
    """One line per criterion: PASS / FAIL / n/a, value and tolerance."""
    def interval(c: dict) -> str:
        ci = c.get("gap_ci95")
        return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if isinstance(ci, list) and None not in ci else ""

    rows = [[c["criterion"], _fmt(c["value"]), f"<= {c['tolerance']:.3f}",
             "n/a" if c["passed"] is None else ("PASS" if c["passed"] else "FAIL"), interval(c)] for c in checks]
    return _table(["criterion", "value", "tolerance", "result", "gap 95% interval"], rows)


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
