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
(:mod:`medforget.audit.lm.criteria`). :class:`LMAudit` supplies these measurements to the shared run flow of
:class:`medforget.audit.skeleton.Audit`; :func:`run_lm_audit` runs it and writes ``lm_audit.json`` (schema
:data:`LM_SCHEMA_VERSION`), ``lm_audit.md`` and a self-contained ``lm_audit.html`` with plots. The forget set appears
only as salted hashes of patient IDs; no name, MRN, date of birth, note or generated text is written or logged.
"""

from __future__ import annotations

import logging
import math
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
from medforget.audit.skeleton import Audit, timing_of
from medforget.core.checkpoint import sha256_file
from medforget.datamodules.lm import ClinicalNotesDataModule
from medforget.systems.lm import ClinicalLM, load_lm

log = logging.getLogger("medforget")


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


# --- the audit -----------------------------------------------------------------------------------------------------
class LMAudit(Audit):
    """The language-model audit on the skeleton's run flow (arguments: :func:`run_lm_audit`)."""

    stem = "lm_audit"
    schema = "medforget.lm_audit"
    schema_version = LM_SCHEMA_VERSION

    def __init__(self, models: dict[str, str | Path | ClinicalLM], datamodule: ClinicalNotesDataModule,
                 out: str | Path, config: LMAuditConfig | None = None, tolerances: LMTolerances | None = None,
                 salt_file: str | Path | None = None, cli_config: dict[str, Any] | None = None) -> None:
        super().__init__(config or LMAuditConfig(), tolerances or LMTolerances(), out, salt_file, cli_config)
        self.models, self.datamodule = models, datamodule

    def prepare(self) -> None:
        unknown = [m for m in self.models if m not in LM_MODEL_NAMES]
        if unknown or REFERENCE not in self.models:
            raise ValueError(f"models must include 'retain' (the retain-only model) and may include 'original' and "
                             f"'unlearned'; got {sorted(self.models)}")
        self.loaded = {name: _load(self.models[name]) for name in LM_MODEL_NAMES if name in self.models}
        check_models({n: getattr(m, "provenance", {}) for n, (m, _) in self.loaded.items()}, self.datamodule,
                     {n: where for n, (_, where) in self.loaded.items()})
        self.datamodule.setup()

    def measure(self, salt: str) -> None:
        config, loaded = self.config, self.loaded
        self.probes = probes = build_probes(self.datamodule, config.retain_questions, config.holdout_questions,
                                            config.seed, config.completion_notes)
        first = loaded.get("original", loaded[REFERENCE])[0]
        self.base = config.truth_ratio if config.truth_ratio != "auto" else (
            "paraphrase" if first.hparams.get("pretrained") else "answer")
        self.evaluations = evaluations = self._evaluate()
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

        self.artifacts = artifacts = LMArtifacts()
        self.report_models = report_models = {}
        retain_eval = evaluations[REFERENCE]
        for name, evaluation in evaluations.items():
            source = name.partition("@")[0]
            entry: dict[str, Any] = {"checkpoint": loaded[source][1],
                                     "checkpoint_sha256": None if isinstance(self.models[source], ClinicalLM)
                                     else sha256_file(self.models[source]),
                                     "provenance": provenance_summary(getattr(loaded[source][0], "provenance", {}))}
            if "@" in name:
                entry["provenance"]["quantization"] = name.partition("@")[2]
            entry.update(evaluation.metrics)
            entry["forget_quality"] = forget_quality(evaluation.truth_ratios["forget"],
                                                     retain_eval.truth_ratios["forget"])
            scores = _attack_scores(evaluation, probes, config.attacks, config.min_k, reference)
            entry["mia"] = {attack: mia_metrics(*s) for attack, s in scores.items()}
            entry["evaluation_seconds"] = evaluation.seconds
            artifacts.truth_ratios[name] = evaluation.truth_ratios["forget"]
            artifacts.scores[name] = scores
            report_models[name] = entry
        for entry in report_models.values():
            for attack, metrics in entry["mia"].items():
                metrics["privleak"] = privleak(metrics["auc"], report_models[REFERENCE]["mia"][attack]["auc"])
        self.measured = measure(evaluations, probes, artifacts.scores, config.bootstrap, config.seed)
        self.headline, self.headline_table = headline_attack(self.measured, config, self.tolerances)
        annotate_mia(report_models, self.measured, self.tolerances)
        for name in report_models:
            if "@" in name:
                report_models[name]["recovered_fraction"] = _recovered(report_models, name, name.partition("@")[0],
                                                                       self.headline)

    def _evaluate(self) -> dict[str, LMEvaluation]:
        """Every model, and the quantized copies (built when evaluated), on the probes."""
        config, loaded = self.config, self.loaded
        variants: list[tuple[str, ClinicalLM | None]] = [(REFERENCE, loaded[REFERENCE][0])]
        variants += [(n, loaded[n][0]) for n in ("original", "unlearned") if n in loaded]
        for name in config.quantize_models:
            if name in loaded:
                variants += [(f"{name}@{scheme}", None) for scheme in config.quantization]
        evaluations: dict[str, LMEvaluation] = {}
        for i, (name, model) in enumerate(variants):
            print(f"evaluating {name} ({i + 1}/{len(variants)})", flush=True)
            if model is None:
                source, _, scheme = name.partition("@")
                model = quantize_lm(loaded[source][0], scheme, config.int4_group_size, config.quantize_head)
            evaluations[name] = evaluate_language_model(
                model, self.probes, config.max_new_tokens, config.batch_size, mia=bool(config.attacks),
                truth_ratio_base=self.base, semeval_max_new_tokens=config.semeval_max_new_tokens
                if config.semeval and "@" not in name else None)  # not quantized copies
        return evaluations

    def data(self) -> dict[str, Any]:
        return {"corpus_identity": corpus_identity(self.datamodule), "probes": self.probes.summary()}

    def forget_ids(self) -> list[str]:
        return sorted(self.datamodule.records[p].patient_id for p in self.datamodule.parts["forget"])

    def results(self) -> dict[str, Any]:
        models, config = self.report_models, self.config
        strip = ("checkpoint", "provenance")
        gaps = {name: _gaps({k: v for k, v in entry.items() if k not in strip},
                            {k: v for k, v in models[REFERENCE].items() if k not in strip})
                for name, entry in models.items() if name != REFERENCE}
        return {
            "models": models,
            "gaps_to_retain": gaps,
            "directions": signed_table(self.measured, [n for n in models if n != REFERENCE]),
            "headline": {"attack": self.headline, "chosen_by": "audit.headline_attack"
                         if config.headline_attack != "auto"
                         else "power on the original model (original and retain-only models only)",
                         "muse_headline": MUSE_HEADLINE, "min_k": config.min_k, "attacks": self.headline_table},
            "semeval": _semeval_block(self.evaluations, self.artifacts, self.measured, config),
        }

    def timing(self) -> dict[str, Any]:
        return timing_of(self.report_models, REFERENCE, "retain_train_seconds")

    def criteria(self, timing: dict[str, Any]) -> list[dict[str, Any]]:
        units = len(self.datamodule.parts["forget"])
        return lm_criteria(self.measured, self.tolerances, self.headline, units, timing)

    def verdict(self, checks: list[dict[str, Any]]) -> dict[str, Any]:
        decision = lm_verdict(checks)
        return {"verdict": decision["verdict"], "verdict_summary": decision["summary"],
                "power": {k: v for k, v in decision.items() if k not in ("verdict", "summary")}}

    def closing(self) -> dict[str, Any]:
        return {"bootstrap": {"replicates": self.config.bootstrap, "unit": "patient (forget, retain and holdout "
                              "resampled, paired over models)", "seed": self.config.seed}}

    def recorded_config(self) -> dict[str, Any]:
        return {"truth_ratio_base": self.base}

    def write_documents(self, report: dict[str, Any]) -> dict[str, Any]:
        return write_lm_report(report, self.artifacts, self.out, plots=self.config.plots)


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
    return LMAudit(models, datamodule, out, config, tolerances, salt_file, cli_config).run()


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
