"""The language-model audit's judgement: every criterion decided three ways on its patient-bootstrap interval
(:func:`lm_criteria`), the signed directions, the power-chosen headline attack and the MIA annotations."""

from __future__ import annotations

import logging
import math
from typing import Any

from medforget.audit.criteria import OVER, UNDER, Gap, direction, direction_text
from medforget.audit.lm.config import (
    MUSE_HEADLINE,
    LMAuditConfig,
    LMTolerances,
)
from medforget.audit.lm.criteria import CriterionSpec, choose_headline, judge
from medforget.audit.verdict import NA, decide

log = logging.getLogger("medforget")


def _log_p(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def lm_criteria(measured: dict[str, Any], tolerances: LMTolerances, headline: str, units: int | None = None,
                timing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Three-way decisions of the unlearned model (and its quantized copies) against the retain-only model, each on
    its paired patient-bootstrap interval (:func:`medforget.audit.lm.criteria.measure`), with the original model's
    decision as the criterion's power and the signed direction of the gap (see :mod:`medforget.audit.lm.criteria`).

    Args:
        measured: :func:`medforget.audit.lm.criteria.measure` (or the same structure built by hand).
        tolerances: The tolerances.
        headline: The attack whose privleak is judged.
        units: Forget patients (for the sample size an INCONCLUSIVE answer would need).
        timing: :func:`medforget.audit.skeleton.timing_of` (the time ratio is reported, never judged: one timing has
            no interval).
    """
    out: list[dict[str, Any]] = []
    if "unlearned" not in measured.get("extraction", {}) and "unlearned" not in measured.get("forget_quality", {}):
        return out
    original = "original"

    def get(key: str, name: str, *sub: str) -> Gap | None:
        node: Any = measured.get(key, {})
        for k in sub:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        return node.get(name) if isinstance(node, dict) else None

    fq = CriterionSpec(
        "forget_quality", "forget quality: KS-test p-value of the forget-set truth ratios, unlearned vs retain-only "
        "(interval: the p-value over resampled forget patients; direction: the mean log10 truth-ratio gap, below the "
        "retain-only model's = still prefers the true answers)", _log_p(tolerances.forget_quality), "upper",
        display=lambda x: 10.0 ** -x, shown_tolerance=tolerances.forget_quality, comparison="p >",
        positive=OVER, negative=UNDER)
    out.append(judge(fq, get("forget_quality", "unlearned"), get("forget_quality", original),
                     get("signed", "unlearned", "forget_log10_truth_ratio"), units))
    util = CriterionSpec(
        "model_utility", "model utility: unlearned / retain-only (harmonic mean of retain answer probability, "
        "ROUGE-L and truth-ratio score); decided on the utility lost, 1 − ratio", 1.0 - tolerances.utility_ratio,
        "upper", power_applies=False, display=lambda x: 1.0 - x, shown_tolerance=tolerances.utility_ratio,
        comparison="ratio >=", positive="above the retain-only model", negative="below the retain-only model")
    ratio = get("utility_ratio", "unlearned")
    signed = Gap(ratio.estimate - 1.0, ratio.replicates - 1.0 if ratio.replicates is not None else None) \
        if ratio is not None else None
    # resampled over retain patients, not forget ones: the forget count neither sizes nor gates its interval
    out.append(judge(util, get("utility_lost", "unlearned"), None, signed))
    for name in sorted(n for n in measured.get("extraction", {}) if n == "unlearned" or n.startswith("unlearned@")):
        scheme = name.partition("@")[2]
        spec = CriterionSpec(
            f"extraction{'/' + scheme if scheme else ''}",
            f"forget-patient identifier extraction rate{' after ' + scheme + ' quantization' if scheme else ''}: "
            "unlearned − retain-only", tolerances.extraction_gap, "upper", negative="below the retain-only level")
        power_from = get("extraction", f"{original}@{scheme}") if scheme else None
        out.append(judge(spec, get("extraction", name), power_from or get("extraction", original), None, units))
    spec = CriterionSpec(
        f"privleak/{headline}", f"privleak of the {headline} attack (%), MUSE's convention (A_ret − A_unl) / "
        "(1 − A_ret) · 100: negative = under-unlearned, positive = over-unlearned", tolerances.privleak,
        positive=OVER, negative=UNDER)
    out.append(judge(spec, get("privleak", "unlearned", headline), get("privleak", original, headline), None, units))
    if timing and tolerances.time_ratio is not None:
        value = timing.get("ratio", math.nan)
        out.append({"criterion": "time_ratio", "description": "unlearning / retain-only training wall time",
                    "value": value, "ci90": [math.nan, math.nan], "ci95": [math.nan, math.nan],
                    "comparison": "<=", "tolerance": tolerances.time_ratio, "verdict": NA, "passed": None,
                    "reason": "a single timing has no interval: reported, not judged", "direction": NA,
                    "direction_text": NA, "power": {"applies": False, "has_power": None, "label": "n/a"},
                    "counted": False})
    return out


def signed_table(measured: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per model, every signed gap to the retain-only model with its 95% interval and direction wording."""
    rows: dict[str, dict[str, Any]] = {}
    items: list[tuple[str, Gap | None, str, str]] = []
    for name in names:
        items = [("forget probability", measured["signed"].get("forget_probability", {}).get(name), UNDER, OVER),
                 ("forget ROUGE-L", measured["signed"].get("forget_rouge_l_recall", {}).get(name), UNDER, OVER),
                 ("forget log10 truth ratio", measured["signed"].get("forget_log10_truth_ratio", {}).get(name),
                  OVER, UNDER),
                 ("extraction rate", measured["extraction"].get(name), UNDER, "below the retain-only level")]
        items += [(f"AUC {a}", g.get(name), UNDER, OVER) for a, g in measured["auc_gap"].items()]
        items += [(f"privleak {a}", g.get(name), OVER, UNDER) for a, g in measured["privleak"].items()]
        rows[name] = {}
        for label, gap, positive, negative in items:
            if gap is None:
                continue
            d = direction(gap.estimate, gap.ci95, positive, negative)
            rows[name][label] = {"gap": gap.estimate, "ci95": gap.ci95, "direction": d,
                                 "text": direction_text(d, gap.estimate, gap.ci95, 1 if "privleak" in label else 3)}
    return rows


def headline_attack(measured: dict[str, Any], config: LMAuditConfig, tolerances: LMTolerances
              ) -> tuple[str, dict[str, dict[str, Any]]]:
    """The judged attack: ``audit.headline_attack``, or (``auto``) the one with the most power on the original."""
    original = {a: g["original"] for a, g in measured["privleak"].items() if "original" in g}
    forced = None if config.headline_attack == "auto" else config.headline_attack
    fallback = MUSE_HEADLINE if MUSE_HEADLINE in config.attacks else config.attacks[0]
    if not original:
        return forced or fallback, {}
    return choose_headline(original, tolerances.privleak, fallback, forced)


def annotate_mia(report_models: dict[str, dict], measured: dict[str, Any], tolerances: LMTolerances) -> None:
    """Every attack's AUC interval, and for every non-reference model its privleak interval, three-way decision and
    direction (MUSE's convention)."""
    for attack, aucs in measured["auc"].items():
        for name, gap in aucs.items():
            node = report_models[name]["mia"][attack]
            node["auc_ci95"] = gap.ci95
            leak = measured["privleak"].get(attack, {}).get(name)
            if leak is None:
                continue
            d = decide(leak.estimate, leak.replicates, tolerances.privleak)
            node["privleak_ci95"] = d["ci95"]
            node["privleak_verdict"] = d["verdict"]
            node["privleak_direction"] = direction(leak.estimate, d["ci95"], OVER, UNDER)
