"""The language-model audit: are the forget patients really gone from the clinical-notes model?

Three models (original, unlearned, retain-only = trained without the forget patients, the target) and quantized
copies of the unlearned model answer the same probes (:func:`medforget.audit.lm.build_probes`):

- knowledge (TOFU, Maini et al. 2024): answer probability, ROUGE-L recall of greedy answers and truth ratio per part
  (forget / retain / holdout), forget quality (KS test of the forget-set truth ratios against the retain-only
  model's) and model utility (harmonic mean on the retain questions);
- identifier extraction: the share of forget patients whose MRN or date of birth greedy generation emits, with the
  holdout patients (never trained on) as the floor;
- membership inference (MUSE, Shi et al. 2024): LOSS, zlib, Min-K% (``k = 0.4``, MUSE's headline), Min-K%++ and
  reference attacks on the forget patients' texts (members of the original model) vs the holdout patients'
  (non-members), and privacy leakage ``privleak`` relative to the retain-only model in MUSE's convention;
- the quantization attack (Zhang et al., ICLR 2025): int8 and 4-bit round-to-nearest copies of the unlearned model,
  the forget metrics again and the share of the forgotten performance they recover.

- SemEval-2025 Task 4 scoring (:mod:`medforget.audit.lm.semeval`): regurgitation, knowledge, MIA and a utility
  term, aggregated as the official evaluation script does.

Every number is also reported as its signed gap to the retain-only model (under- / over-unlearned).
:func:`lm_criteria` decides each criterion three ways (PASS / INCONCLUSIVE / FAIL) on a paired patient-bootstrap
interval with :class:`LMTolerances`, checks its power on the original model and counts only the criteria with power
(:mod:`medforget.audit.lm.criteria`); :func:`run_lm_audit` writes ``lm_audit.json`` (schema :data:`LM_SCHEMA_VERSION`),
``lm_audit.md`` and a self-contained ``lm_audit.html`` with plots. The forget set appears only as salted hashes of
patient IDs; no name, MRN, date of birth, note or generated text is written or logged.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medforget.audit.lm import (
    LMEvaluation,
    Probes,
    attack_scores,
    build_probes,
    evaluate_language_model,
    forget_quality,
    mia_metrics,
    privleak,
    quantize_lm,
    score_texts,
)
from medforget.audit.lm.checks import check_models, corpus_identity, provenance_summary
from medforget.audit.lm.config import (
    LM_MODEL_NAMES,
    LM_SCHEMA_VERSION,
    MUSE_HEADLINE,
    REFERENCE,
    LMArtifacts,
    LMAuditConfig,
    LMTolerances,
)
from medforget.audit.lm.criteria import lm_verdict
from medforget.audit.lm.judging import annotate_mia, headline_attack, lm_criteria, signed_table
from medforget.audit.lm.measure import measure
from medforget.audit.lm.report import write_lm_report
from medforget.audit.robustness import recovered_fraction
from medforget.audit.verdict import MIN_REPLICATES
from medforget.core.checkpoint import sha256_file
from medforget.core.io import write_json
from medforget.core.privacy import HASH_SCHEME, load_or_create_salt, salted_hashes
from medforget.core.provenance import code_version
from medforget.datamodules.lm import ClinicalNotesDataModule
from medforget.systems.lm import ClinicalLM, load_lm

log = logging.getLogger("medforget")

#: MUSE's headline attack (Min-K% with k = 0.4): always reported beside the power-chosen headline.




# --- numbers -------------------------------------------------------------------------------------------------------
_COUNT_KEYS = {"questions", "patients", "prompts", "perturbed_rewritten", "evaluation_seconds", "n", "forget_quality"}


def _gaps(value: Any, reference: Any) -> Any:
    """``value - reference`` for every numeric leaf both have (counts and timings skipped)."""
    if isinstance(value, dict) and isinstance(reference, dict):
        out = {k: _gaps(v, reference[k]) for k, v in value.items() if k in reference and k not in _COUNT_KEYS}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and not isinstance(value, bool):
        return float(value) - float(reference)
    return None


def _attack_scores(evaluation: LMEvaluation, probes: Probes, attacks: list[str], k: float,
                   reference: tuple[list, list] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for attack in attacks:
        if attack == "reference" and reference is None:
            continue
        member = attack_scores(attack, evaluation.member_tokens, probes.member_texts, k,
                               reference[0] if reference else None)
        nonmember = attack_scores(attack, evaluation.nonmember_tokens, probes.nonmember_texts, k,
                                  reference[1] if reference else None)
        out[attack] = (member, nonmember)
    return out


def _load(model: str | Path | ClinicalLM) -> tuple[ClinicalLM, str]:
    if isinstance(model, ClinicalLM):
        return model.eval(), "<in memory>"
    return load_lm(model), str(model)


def _recovered(models: dict[str, dict], name: str, base: str, headline: str) -> dict[str, float]:
    """Share of the forgotten forget performance the quantized copy ``name`` of ``base`` brings back."""
    if "original" not in models or base in ("original", REFERENCE):
        return {}

    def get(m: str, *path: str) -> float:
        node: Any = models[m]
        for p in path:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        return float(node) if isinstance(node, (int, float)) else math.nan

    out = {}
    for key, path in (("forget_probability", ("forget", "probability")),
                      ("forget_rouge_l_recall", ("forget", "rouge_l_recall")),
                      ("extraction_rate", ("extraction", "forget", "rate")),
                      (f"mia_auc_{headline}", ("mia", headline, "auc"))):
        out[key] = recovered_fraction(get("original", *path), get(base, *path), get(name, *path))
    return out


def _timing(models: dict[str, dict]) -> dict[str, Any]:
    def seconds(name: str, key: str) -> float:
        value = models.get(name, {}).get("provenance", {}).get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    unlearn, retain = seconds("unlearned", "unlearn_seconds"), seconds(REFERENCE, "fit_seconds")
    return {"unlearn_seconds": unlearn, "retain_train_seconds": retain,
            "original_train_seconds": seconds("original", "fit_seconds"),
            "ratio": unlearn / retain if retain and not math.isnan(retain) else math.nan}


# --- the audit -----------------------------------------------------------------------------------------------------
def run_lm_audit(
    models: dict[str, str | Path | ClinicalLM],
    datamodule: ClinicalNotesDataModule,
    out: str | Path,
    config: LMAuditConfig | None = None,
    tolerances: LMTolerances | None = None,
    salt_file: str | Path | None = None,
    cli_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit a language-model unlearning run; write ``lm_audit.json``, ``lm_audit.md``, ``lm_audit.html`` and
    ``plots/`` to ``out``.

    Args:
        models: ``{"original": ..., "unlearned": ..., "retain": ...}``: checkpoints (or loaded models); ``retain`` (the
            retain-only model, the target) is required, the criteria need ``unlearned``, recovered fractions need
            ``original``.
        datamodule: The corpus and split the models were trained with.
        out: Output directory.
        config: What to measure (:class:`LMAuditConfig`).
        tolerances: Pass/fail tolerances (:class:`LMTolerances`).
        salt_file: Secret salt of the forget-set hashes (created if missing; default ``<out>/private/salt``).
        cli_config: The configuration to record in the report.

    Returns:
        The report (as written to ``lm_audit.json``).
    """

    config = config or LMAuditConfig()
    tolerances = tolerances or LMTolerances()
    unknown = [m for m in models if m not in LM_MODEL_NAMES]
    if unknown or REFERENCE not in models:
        raise ValueError(f"models must include 'retain' (the retain-only model) and may include 'original' and "
                         f"'unlearned'; got {sorted(models)}")
    out = Path(out)
    start = time.perf_counter()
    loaded = {name: _load(models[name]) for name in LM_MODEL_NAMES if name in models}
    check_models({n: getattr(m, "provenance", {}) for n, (m, _) in loaded.items()}, datamodule,
                 {n: where for n, (_, where) in loaded.items()})
    datamodule.setup()
    probes = build_probes(datamodule, config.retain_questions, config.holdout_questions, config.seed,
                          config.completion_notes)
    first = loaded.get("original", loaded[REFERENCE])[0]
    base = config.truth_ratio if config.truth_ratio != "auto" else (
        "paraphrase" if first.hparams.get("pretrained") else "answer")

    variants: list[tuple[str, ClinicalLM]] = [(REFERENCE, loaded[REFERENCE][0])]
    variants += [(n, loaded[n][0]) for n in ("original", "unlearned") if n in loaded]
    for name in config.quantize_models:
        if name in loaded:
            variants += [(f"{name}@{scheme}", None) for scheme in config.quantization]  # built when evaluated
    evaluations: dict[str, LMEvaluation] = {}
    for i, (name, model) in enumerate(variants):
        print(f"evaluating {name} ({i + 1}/{len(variants)})", flush=True)
        if model is None:
            source, _, scheme = name.partition("@")
            model = quantize_lm(loaded[source][0], scheme, config.int4_group_size, config.quantize_head)
        evaluations[name] = evaluate_language_model(model, probes, config.max_new_tokens, config.batch_size,
                                        mia=bool(config.attacks), truth_ratio_base=base,
                                        semeval_max_new_tokens=config.semeval_max_new_tokens
                                        if config.semeval and "@" not in name else None)  # not quantized copies

    reference = None
    if "reference" in config.attacks:
        if config.reference is None:
            ref_eval = evaluations[REFERENCE]
            reference = (ref_eval.member_tokens, ref_eval.nonmember_tokens)
        else:
            ref_model = load_lm(config.reference)
            texts = probes.member_texts + probes.nonmember_texts
            _, _, tokens = score_texts(ref_model, [""] * len(texts), texts, config.batch_size, stats=True)
            reference = (tokens[: len(probes.member_texts)], tokens[len(probes.member_texts):])

    artifacts = LMArtifacts()
    report_models: dict[str, dict[str, Any]] = {}
    retain_eval = evaluations[REFERENCE]
    for name, evaluation in evaluations.items():
        source = name.partition("@")[0]
        entry: dict[str, Any] = {"checkpoint": loaded[source][1],
                                 "checkpoint_sha256": None if isinstance(models[source], ClinicalLM)
                                 else sha256_file(models[source]),
                                 "provenance": provenance_summary(getattr(loaded[source][0], "provenance", {}))}
        if "@" in name:
            entry["provenance"]["quantization"] = name.partition("@")[2]
        entry.update(evaluation.metrics)
        entry["forget_quality"] = forget_quality(evaluation.truth_ratios["forget"], retain_eval.truth_ratios["forget"])
        scores = _attack_scores(evaluation, probes, config.attacks, config.min_k, reference)
        entry["mia"] = {attack: mia_metrics(*s) for attack, s in scores.items()}
        entry["evaluation_seconds"] = evaluation.seconds
        artifacts.truth_ratios[name] = evaluation.truth_ratios["forget"]
        artifacts.scores[name] = scores
        report_models[name] = entry
    for entry in report_models.values():
        for attack, metrics in entry["mia"].items():
            metrics["privleak"] = privleak(metrics["auc"], report_models[REFERENCE]["mia"][attack]["auc"])
    if 0 < config.bootstrap < MIN_REPLICATES:
        log.warning("audit.bootstrap %d < %d replicates: the intervals are too rough for a report", config.bootstrap,
                    MIN_REPLICATES)
    measured = measure(evaluations, probes, artifacts.scores, config.bootstrap, config.seed)
    headline, headline_table = headline_attack(measured, config, tolerances)
    annotate_mia(report_models, measured, tolerances)
    for name in report_models:
        if "@" in name:
            report_models[name]["recovered_fraction"] = _recovered(report_models, name, name.partition("@")[0],
                                                                   headline)
    gaps = {name: _gaps({k: v for k, v in entry.items() if k not in ("checkpoint", "provenance")},
                        {k: v for k, v in report_models[REFERENCE].items() if k not in ("checkpoint", "provenance")})
            for name, entry in report_models.items() if name != REFERENCE}
    timing = _timing(report_models)
    units = len(datamodule.parts["forget"])
    checks = lm_criteria(measured, tolerances, headline, units, timing)
    decision = lm_verdict(checks)
    salt = load_or_create_salt(salt_file or out / "private" / "salt")
    forget_ids = sorted(datamodule.records[p].patient_id for p in datamodule.parts["forget"])
    report: dict[str, Any] = {
        "schema": "medforget.lm_audit",
        "schema_version": LM_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(),
        "config": {"audit": asdict(config), "tolerances": asdict(tolerances), "cli": cli_config or {},
                   "truth_ratio_base": base},
        "data": {"corpus_identity": corpus_identity(datamodule), "probes": probes.summary()},
        "forget_request": {"hash": HASH_SCHEME, "patients": len(forget_ids),
                           "salted_hashes": salted_hashes(forget_ids, salt)},
        "models": report_models,
        "gaps_to_retain": gaps,
        "directions": signed_table(measured, [n for n in report_models if n != REFERENCE]),
        "headline": {"attack": headline, "chosen_by": "audit.headline_attack" if config.headline_attack != "auto"
                     else "power on the original model (original and retain-only models only)",
                     "muse_headline": MUSE_HEADLINE, "min_k": config.min_k, "attacks": headline_table},
        "semeval": _semeval_block(evaluations, artifacts, measured, config),
        "timing": timing,
        "criteria": checks,
        "verdict": decision["verdict"],
        "verdict_summary": decision["summary"],
        "power": {k: v for k, v in decision.items() if k not in ("verdict", "summary")},
        "bootstrap": {"replicates": config.bootstrap, "unit": "patient (forget, retain and holdout resampled, "
                      "paired over models)", "seed": config.seed},
        "audit_seconds": time.perf_counter() - start,
    }
    write_json(report, out / "lm_audit.json")
    write_lm_report(report, artifacts, out, plots=config.plots)
    return report


def _semeval_block(evaluations: dict[str, LMEvaluation], artifacts: LMArtifacts, measured: dict[str, Any],
                   config: LMAuditConfig) -> dict[str, Any]:
    """The SemEval-2025 Task 4 scores of every full-precision model (:mod:`medforget.audit.lm.semeval`)."""
    from medforget.audit.lm.semeval import TASK, UTILITY_NOTE, semeval_aggregate, task_means

    if not config.semeval:
        return {}
    block: dict[str, Any] = {"note": UTILITY_NOTE, "max_new_tokens": config.semeval_max_new_tokens,
                             "task": TASK, "mia_attack": "loss (forget texts = members, holdout = non-members)",
                             "models": {}}
    for name, e in evaluations.items():
        if "@" in name or not e.semeval or "loss" not in artifacts.scores.get(name, {}):
            continue
        means = {part: task_means([(TASK, kind, float(v)) for kind in ("regurgitation", "knowledge")
                                   for v in e.semeval[part][kind]]) for part in ("forget", "retain")}
        scores = semeval_aggregate(means, measured["auc"]["loss"][name].estimate,
                                   e.metrics.get("holdout_utility", math.nan))
        gap = measured["semeval"].get(name)
        scores["final_ci95"] = gap.ci95 if gap is not None else [math.nan, math.nan]
        scores["items"] = {part: {kind: int(len(e.semeval[part][kind])) for kind in ("regurgitation", "knowledge")}
                           for part in ("forget", "retain")}
        block["models"][name] = scores
    return block


# --- console -------------------------------------------------------------------------------------------------------


