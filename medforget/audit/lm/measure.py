"""The language-model audit's measurements: every criterion's value for every model, with its paired
patient-bootstrap replicates (:func:`measure`; the intervals are described in :mod:`medforget.audit.lm.criteria`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from medforget.audit.bootstrap import PatientResampler, weighted_auc, weighted_mean
from medforget.audit.criteria import Gap
from medforget.audit.lm.config import REFERENCE
from medforget.audit.lm.criteria import harmonic_mean_rows, ks_pvalue_replicates


def _log_p(p: np.ndarray | float) -> np.ndarray | float:
    """``-log10 p`` (p clipped at 1e-300)."""
    return -np.log10(np.clip(p, 1e-300, None))


def measure(evaluations: Mapping[str, Any], probes: Any, scores: Mapping[str, Mapping[str, tuple]],
            reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Estimates and paired patient-bootstrap replicates of every quantity the LM criteria and tables need.

    Args:
        evaluations: Model name -> :class:`~medforget.audit.lm.LMEvaluation` (``retain`` required).
        probes: The audit's :class:`~medforget.audit.lm.Probes`.
        scores: Model name -> attack -> ``(member scores, non-member scores)``.
        reps: Bootstrap replicates (0: estimates only, no intervals).
        seed: Seed of the draw.

    Returns:
        ``{"auc": {attack: {model: Gap}}, "privleak": {attack: {model: Gap}}, "auc_gap": ..., "extraction": {model:
        Gap}, "utility_lost": ..., "utility_ratio": ..., "forget_quality": {model: Gap of -log10 p},
        "signed": {quantity: {model: Gap}}, "semeval": {model: Gap of the final score}}``: every gap is the model's
        minus the retain-only model's unless stated.
    """
    from medforget.audit.lm import privleak
    from medforget.audit.lm.metrics import forget_quality

    ret = evaluations[REFERENCE]
    names = [n for n in evaluations if n != REFERENCE]
    q_forget = np.array([p for p, _ in probes.qa.get("forget", [])], dtype=int)
    q_retain = np.array([p for p, _ in probes.qa.get("retain", [])], dtype=int)
    q_holdout = np.array([p for p, _ in probes.qa.get("holdout", [])], dtype=int)
    hits_patients = sorted(ret.extraction_hits.get("forget", {}))
    comp = {part: np.array([p for p, _, _ in probes.completion.get(part, [])], dtype=int) for part in ("forget",
                                                                                                     "retain")}
    patients = {"forget": np.r_[q_forget, probes.member_groups, hits_patients, comp["forget"]],
                "holdout": np.r_[probes.nonmember_groups, q_holdout],
                "retain": np.r_[q_retain, comp["retain"]]}
    boot = reps > 0
    rs = PatientResampler(patients, reps, seed) if boot else None

    def w(part: str, groups: np.ndarray) -> np.ndarray | None:
        return rs.weights(part, groups) if boot else None

    w_member, w_nonmember = w("forget", probes.member_groups), w("holdout", probes.nonmember_groups)
    w_qf, w_qr, w_qh = w("forget", q_forget), w("retain", q_retain), w("holdout", q_holdout)
    w_hits = w("forget", np.asarray(hits_patients, dtype=int))
    out: dict[str, Any] = {"auc": {}, "privleak": {}, "auc_gap": {}, "extraction": {}, "utility_lost": {},
                           "utility_ratio": {}, "forget_quality": {}, "signed": {}, "semeval": {},
                           "replicates": reps}

    # membership attacks: AUC, its gap, MUSE's privleak
    for attack in next(iter(scores.values()), {}):
        aucs: dict[str, Gap] = {}
        for name in scores:
            if attack not in scores[name]:
                continue
            member, nonmember = (np.asarray(x, dtype=float) for x in scores[name][attack])
            est = float(weighted_auc(member, nonmember, np.ones(len(member)), np.ones(len(nonmember)))[0])
            aucs[name] = Gap(est, weighted_auc(member, nonmember, w_member, w_nonmember) if boot else None)
        out["auc"][attack] = aucs
        if REFERENCE not in aucs:
            continue
        base = aucs[REFERENCE]
        out["auc_gap"][attack] = {n: Gap(g.estimate - base.estimate, g.replicates - base.replicates if boot else None)
                                  for n, g in aucs.items() if n != REFERENCE}
        leaks = {}
        for n, g in aucs.items():
            if n == REFERENCE:
                continue
            reps_leak = None
            if boot:
                with np.errstate(invalid="ignore", divide="ignore"):
                    reps_leak = np.where(base.replicates < 1.0, (base.replicates - g.replicates)
                                         / (1.0 - base.replicates) * 100.0, np.nan)
            leaks[n] = Gap(privleak(g.estimate, base.estimate), reps_leak)
        out["privleak"][attack] = leaks

    # identifier extraction of the forget patients
    def hits(e: Any) -> np.ndarray:
        h = e.extraction_hits.get("forget", {})
        return np.array([float(h.get(p, False)) for p in hits_patients])

    h_ret = hits(ret)
    for n in names:
        h = hits(evaluations[n])
        est = float(h.mean() - h_ret.mean()) if len(h) else math.nan
        out["extraction"][n] = Gap(est, weighted_mean(h, w_hits) - weighted_mean(h_ret, w_hits)
                                   if boot and len(h) else None)

    # model utility on the retain questions
    def utility(e: Any, weights: np.ndarray | None, part: str = "retain") -> tuple[float, np.ndarray | None]:
        prob, rouge = e.probabilities.get(part, np.zeros(0)), e.rouge.get(part, np.zeros(0))
        score = np.maximum(0.0, 1.0 - np.asarray(e.truth_ratios.get(part, np.zeros(0)), dtype=float))
        if len(prob) == 0 or len(rouge) != len(prob):
            return math.nan, None
        est = float(harmonic_mean_rows(*(np.array([np.nanmean(x)]) for x in (prob, rouge, score)))[0])
        if weights is None:
            return est, None
        return est, harmonic_mean_rows(*(weighted_mean(np.nan_to_num(x), weights) for x in (prob, rouge, score)))

    u_ret, u_ret_reps = utility(ret, w_qr)
    for n in names:
        u, u_reps = utility(evaluations[n], w_qr)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = u / u_ret if u_ret else math.nan  # no utility to keep: not measurable
            ratio_reps = (np.where(u_ret_reps > 0, u_reps / np.where(u_ret_reps > 0, u_ret_reps, 1.0), np.nan)
                          if u_reps is not None and u_ret_reps is not None else None)
        out["utility_ratio"][n] = Gap(ratio, ratio_reps)
        out["utility_lost"][n] = Gap(1.0 - ratio, 1.0 - ratio_reps if ratio_reps is not None else None)

    # forget quality (-log10 of the KS p-value) and the signed knowledge gaps
    tr_ret = np.asarray(ret.truth_ratios.get("forget", np.zeros(0)), dtype=float)
    for n in names:
        e = evaluations[n]
        tr = np.asarray(e.truth_ratios.get("forget", np.zeros(0)), dtype=float)
        p = forget_quality(tr, tr_ret)["p_value"]
        p_reps = ks_pvalue_replicates(tr, tr_ret, w_qf) if boot and len(tr) else None
        out["forget_quality"][n] = Gap(float(_log_p(p)) if not math.isnan(p) else math.nan,
                                       _log_p(p_reps) if p_reps is not None else None)
        for key, a, b in (("forget_probability", e.probabilities.get("forget"), ret.probabilities.get("forget")),
                          ("forget_rouge_l_recall", e.rouge.get("forget"), ret.rouge.get("forget")),
                          ("forget_log10_truth_ratio", np.log10(np.clip(tr, 1e-300, None)),
                           np.log10(np.clip(tr_ret, 1e-300, None)))):
            if a is None or b is None or len(a) == 0:
                continue
            diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
            out["signed"].setdefault(key, {})[n] = Gap(float(np.nanmean(diff)),
                                                       weighted_mean(np.nan_to_num(diff), w_qf) if boot else None)

    # SemEval-2025 Task 4 final score per model (retain-only included)
    if ret.semeval and scores and "loss" in next(iter(scores.values()), {}):
        out["semeval"] = {n: _semeval_gap(evaluations[n], scores[n]["loss"], w_member, w_nonmember, rs, utility,
                                          w_qh) for n in evaluations
                          if evaluations[n].semeval and n in scores and "loss" in scores[n]}  # not quantized copies
    return out


def _semeval_gap(e: Any, loss: tuple, w_member: np.ndarray | None, w_nonmember: np.ndarray | None,
                 rs: PatientResampler | None, utility: Callable, w_qh: np.ndarray | None) -> Gap:
    """The SemEval final score of one model with its patient-bootstrap replicates (forget, retain and holdout
    patients resampled: the item means, the loss-attack AUC and the holdout utility of each replicate)."""
    from medforget.audit.lm.semeval import TASK, mia_score, semeval_aggregate

    means = {part: {TASK: {kind: float(np.mean(e.semeval[part][kind])) if len(e.semeval[part][kind]) else math.nan
                           for kind in ("regurgitation", "knowledge")}} for part in ("forget", "retain")}
    member, nonmember = (np.asarray(x, dtype=float) for x in loss)
    auc = float(weighted_auc(member, nonmember, np.ones(len(member)), np.ones(len(nonmember)))[0])
    hold, hold_reps = utility(e, w_qh, "holdout")
    est = semeval_aggregate(means, auc, hold)["final"]
    if rs is None:
        return Gap(est)
    terms = []
    for part in ("forget", "retain"):
        for kind in ("regurgitation", "knowledge"):
            values = e.semeval[part][kind]
            m = weighted_mean(values, rs.weights(part, e.semeval[part][f"{kind}_patients"]))
            terms.append(1.0 - m if part == "forget" else m)
    task = harmonic_mean_rows(*terms)
    mia = np.vectorize(mia_score)(weighted_auc(member, nonmember, w_member, w_nonmember))
    reps = (task + hold_reps + mia) / 3.0 if hold_reps is not None else None
    return Gap(est, reps)
