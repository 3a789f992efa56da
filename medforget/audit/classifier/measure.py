"""One run of the classifier audit: every model's predictions on forget / retain / test (/ val) patients, utility per
head, the membership-attack suite with patient-bootstrap intervals, the per-patient test and the robustness attacks,
and every number's gap to the retrained model (:func:`evaluate_models`)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from medforget.audit.classifier.config import REFERENCE, SCHEMA_VERSION, AuditConfig, default_attacks
from medforget.audit.classifier.criteria import RunArtifacts, model_values, resampler
from medforget.audit.classifier.mia import LiRAAttack, MembershipAttack
from medforget.audit.classifier.mia.base import PARTS, AttackData
from medforget.audit.per_patient import per_patient_test
from medforget.audit.utility import classification_metrics
from medforget.audit.verdict import interval
from medforget.core.checkpoint import CheckpointError, sha256_file
from medforget.core.privacy import salted_hash
from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.systems.classifier import FusionClassifier, load_classifier

log = logging.getLogger("medforget")


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
        from medforget.audit.classifier.reference_models import train_reference_models

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
    """The per-patient forgetting test of one model (:mod:`medforget.audit.per_patient`): offline LiRA
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
    rs = resampler(artifacts, config.bootstrap, config.seed)
    values = {name: model_values(artifacts, name, rs) for name in results}
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
    from medforget.audit.classifier.mia import LossAttack
    from medforget.audit.robustness import (
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
