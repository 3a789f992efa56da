"""The language-model audit's decisions on constructed numbers (no model): MUSE's privleak, three-way verdicts on
intervals, power on the original model, signed direction wording, the paired patient bootstrap and SemEval-2025
Task 4 scoring against hand computations."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import ks_2samp

from medforget.audit.lm import privleak
from medforget.audit.lm.config import LMTolerances
from medforget.audit.lm.criteria import (
    NO_POWER,
    OVER,
    SAME,
    UNDER,
    CriterionSpec,
    Gap,
    PatientResampler,
    choose_headline,
    direction,
    judge,
    ks_pvalue_replicates,
    lm_verdict,
)
from medforget.audit.lm.judging import lm_criteria
from medforget.audit.lm.measure import measure
from medforget.audit.lm.semeval import (
    knowledge_score,
    mia_score,
    regurgitation_score,
    semeval_aggregate,
    split_completion,
    task_means,
)
from medforget.audit.lm.tables import format_lm_criteria
from medforget.audit.verdict import FAIL, INCONCLUSIVE, PASS, decide


def gap(estimate: float, sd: float, seed: int = 0) -> Gap:
    """A gap with 2,000 normal bootstrap replicates around it."""
    return Gap(estimate, np.random.default_rng(seed).normal(estimate, sd, 2000))


# --- privleak in MUSE's convention -------------------------------------------------------------------------------
def test_privleak_is_muses_formula_on_the_issue_example():
    a_unl, a_ret = 0.66, 0.70
    # MUSE labels forget 0 and holdout 1: its AUCs are 1 - A, and PrivLeak = (AUC_unl - AUC_ret) / AUC_ret * 100
    muse = ((1 - a_unl) - (1 - a_ret)) / (1 - a_ret) * 100
    assert privleak(a_unl, a_ret) == pytest.approx(muse) == pytest.approx(13.333, abs=1e-3)
    # judged at +-10 on a tight interval: FAIL, over-unlearned
    spec = CriterionSpec("privleak/loss", "", 10.0, positive=OVER, negative=UNDER)
    c = judge(spec, gap(privleak(a_unl, a_ret), 1.0), gap(-60.0, 5.0))
    assert c["verdict"] == FAIL and c["passed"] is False and c["direction"] == OVER
    assert c["direction_text"].startswith("over-unlearned: +13.333")
    assert c["power"]["has_power"] is True and c["counted"]


# --- three-way verdicts on constructed intervals -----------------------------------------------------------------
@pytest.mark.parametrize("estimate, sd, expected", [(1.0, 2.0, PASS), (30.0, 3.0, FAIL), (-30.0, 3.0, FAIL),
                                                    (8.0, 4.0, INCONCLUSIVE), (0.0, 9.0, INCONCLUSIVE)])
def test_lm_privleak_verdict_on_constructed_intervals(estimate, sd, expected):
    spec = CriterionSpec("privleak/loss", "", 10.0, positive=OVER, negative=UNDER)
    c = judge(spec, gap(estimate, sd), gap(-80.0, 5.0), units=10)
    assert c["verdict"] == expected == decide(estimate, gap(estimate, sd).replicates, 10.0)["verdict"]
    if expected == INCONCLUSIVE:
        assert c["units_needed"] and "resolves gaps" in c["reason"]
    assert lm_verdict([c])["verdict"] == expected


def test_overall_lm_verdict_fail_beats_inconclusive_and_n_a_blocks_pass():
    spec = CriterionSpec("x", "", 0.1, "upper")
    ok, unsure, bad = (judge(spec, gap(e, s), gap(0.9, 0.01)) for e, s in ((0.0, 0.01), (0.09, 0.05), (0.5, 0.01)))
    assert lm_verdict([ok, ok])["verdict"] == PASS
    assert lm_verdict([ok, unsure])["verdict"] == INCONCLUSIVE
    assert lm_verdict([ok, unsure, bad])["verdict"] == FAIL
    unmeasured = judge(spec, Gap(math.nan), gap(0.9, 0.01))
    assert unmeasured["verdict"] == "n/a" and lm_verdict([ok, unmeasured])["verdict"] == INCONCLUSIVE
    no_interval = judge(spec, Gap(0.0), gap(0.9, 0.01))
    assert no_interval["verdict"] == "n/a" and no_interval["ci95"] == [] or math.isnan(no_interval["ci95"][0])


# --- power on the original model ---------------------------------------------------------------------------------
def constructed(min_k_power: bool = False) -> dict:
    """A measured set: the original is caught by LOSS and the reference attack, not by Min-K% (AUC ~ the retain-only
    model's), and leaks every identifier; the unlearned model is over-unlearned on LOSS."""
    original_min_k = gap(-40.0, 5.0, 3) if min_k_power else gap(-2.0, 3.0, 3)
    return {
        "privleak": {"loss": {"original": gap(-35.0, 6.0, 1), "unlearned": gap(30.0, 4.0, 2)},
                     "min_k": {"original": original_min_k, "unlearned": gap(1.0, 2.0, 4)},
                     "reference": {"original": gap(-82.0, 4.0, 5), "unlearned": gap(2.0, 2.0, 6)}},
        "extraction": {"original": gap(1.0, 0.0001, 7), "unlearned": Gap(0.0, np.zeros(2000)),
                       "unlearned@int4": gap(0.3, 0.05, 8)},
        "forget_quality": {"original": gap(20.0, 2.0, 9), "unlearned": gap(0.3, 0.1, 10)},  # -log10 p
        "utility_lost": {"unlearned": gap(0.02, 0.01, 11)},
        "utility_ratio": {"unlearned": gap(0.98, 0.01, 11)},
        "signed": {"forget_log10_truth_ratio": {"unlearned": gap(0.2, 0.05, 12)}},
    }


def test_an_attack_without_power_is_marked_excluded_and_named_in_the_verdict():
    measured = constructed()
    original = {a: g["original"] for a, g in measured["privleak"].items()}
    headline, table = choose_headline(original, 10.0, fallback="min_k")
    assert table["min_k"]["has_power"] is False and table["loss"]["has_power"] and table["reference"]["has_power"]
    assert headline == "reference"  # the interval farthest from 0; chosen without the unlearned model
    # forcing MUSE's headline (Min-K%) that has no power on this model: marked, not counted, and the verdict says so
    checks = lm_criteria(measured, LMTolerances(), "min_k", units=10)
    leak = next(c for c in checks if c["criterion"] == "privleak/min_k")
    assert leak["verdict"] == PASS and leak["power"]["has_power"] is False and leak["power"]["label"] == NO_POWER
    assert not leak["counted"]
    decision = lm_verdict(checks)
    assert "privleak/min_k" in decision["without_power"] and "privleak/min_k" not in decision["counted"]
    assert decision["with_power"] == 3 and decision["power_applicable"] == 4  # FQ and two extraction criteria
    assert "3 of 4 forgetting criteria had power" in decision["summary"] and NO_POWER in decision["summary"]
    assert decision["verdict"] == FAIL  # extraction after int4 quantization
    text = format_lm_criteria(checks)
    assert NO_POWER in text and "(not counted)" in text and "3 of 4" in text
    # with power, Min-K%'s PASS counts
    powered = lm_criteria(constructed(min_k_power=True), LMTolerances(), "min_k", units=10)
    assert next(c for c in powered if c["criterion"] == "privleak/min_k")["counted"]


def test_no_attack_with_power_falls_back_to_muse_headline():
    flat = {a: gap(1.0, 2.0, i) for i, a in enumerate(("loss", "min_k", "zlib"))}
    headline, table = choose_headline(flat, 10.0, fallback="min_k")
    assert headline == "min_k" and not any(t["has_power"] for t in table.values())
    assert choose_headline(flat, 10.0, fallback="min_k", forced="zlib")[0] == "zlib"


def test_utility_power_does_not_apply_and_it_counts():
    checks = {c["criterion"]: c for c in lm_criteria(constructed(), LMTolerances(), "loss", units=10)}
    util = checks["model_utility"]
    assert util["power"]["applies"] is False and util["power"]["has_power"] is None and util["counted"]
    assert util["verdict"] == PASS and util["value"] == pytest.approx(0.98) and util["comparison"] == "ratio >="
    assert util["ci90"][0] < 0.98 < util["ci90"][1]  # shown as the ratio
    fq = checks["forget_quality"]
    assert fq["value"] == pytest.approx(10 ** -0.3) and fq["tolerance"] == 0.05 and fq["verdict"] == PASS
    assert fq["power"]["has_power"] and fq["power"]["original_verdict"] == FAIL
    assert fq["direction"] == OVER  # higher truth ratio than the retain-only model: prefers wrong answers


def test_one_forget_patient_leaves_forget_criteria_inconclusive_but_not_utility():
    checks = {c["criterion"]: c for c in lm_criteria(constructed(), LMTolerances(), "loss", units=1)}
    fq = checks["forget_quality"]
    assert fq["verdict"] == INCONCLUSIVE and "cannot resample" in fq["reason"]
    assert fq["power"]["has_power"]  # the original's estimate still lies outside
    assert checks["model_utility"]["verdict"] == PASS  # resampled over retain patients: one forget patient is moot


# --- direction ---------------------------------------------------------------------------------------------------
def test_signed_direction_wording_for_an_over_unlearned_model():
    checks = {c["criterion"]: c for c in lm_criteria(constructed(), LMTolerances(), "loss", units=10)}
    leak = checks["privleak/loss"]
    assert leak["verdict"] == FAIL and leak["direction"] == OVER and leak["direction_text"].startswith(
        "over-unlearned: +30.000 [")
    assert checks["extraction"]["direction"] == SAME and checks["extraction/int4"]["direction"] == UNDER
    assert direction(-0.2, [-0.3, -0.1]) == OVER and direction(0.2, [0.1, 0.3]) == UNDER
    assert direction(0.2, [-0.1, 0.5]) == SAME and direction(math.nan, None) == "n/a"
    assert direction(-25.0, [-30.0, -20.0], positive=OVER, negative=UNDER) == UNDER  # privleak < 0


# --- the paired patient bootstrap --------------------------------------------------------------------------------
def test_ks_pvalue_replicates_equal_scipy_on_repeated_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 24), rng.normal(0.4, 1, 24)
    groups = np.repeat(np.arange(8), 3)  # 8 patients, 3 questions each
    rs = PatientResampler({"forget": groups}, 50, seed=1)
    w = rs.weights("forget", groups)
    got = ks_pvalue_replicates(a, b, w)
    for i in range(50):
        k = w[i].astype(int)
        assert got[i] == pytest.approx(ks_2samp(np.repeat(a, k), np.repeat(b, k)).pvalue)
    assert ks_pvalue_replicates(a, b, np.ones((1, 24)))[0] == pytest.approx(ks_2samp(a, b).pvalue)


def test_patient_resampler_is_paired_across_sample_sets():
    rs = PatientResampler({"forget": [3, 7, 9]}, 100, seed=0)
    questions = rs.weights("forget", [3, 3, 7, 9, 9])  # (B, 5)
    texts = rs.weights("forget", [9, 3, 7])
    assert (questions[:, 0] == texts[:, 1]).all() and (questions[:, 3] == texts[:, 0]).all()
    assert (rs.counts["forget"].sum(1) == 3).all()
    with pytest.raises(ValueError, match="outside"):
        rs.weights("forget", [4])


def _evaluation(rng, shift: float, leak: bool) -> SimpleNamespace:
    tokens = SimpleNamespace()
    return SimpleNamespace(
        truth_ratios={"forget": np.exp(rng.normal(shift, 1, 12)), "retain": np.exp(rng.normal(-1, 1, 8)),
                      "holdout": np.exp(rng.normal(0, 1, 6))},
        probabilities={p: rng.uniform(0.1, 0.9, n) for p, n in (("forget", 12), ("retain", 8), ("holdout", 6))},
        rouge={p: rng.uniform(0, 1, n) for p, n in (("forget", 12), ("retain", 8), ("holdout", 6))},
        extraction_hits={"forget": {0: leak, 1: leak, 2: False, 3: False}}, semeval={}, tokens=tokens)


def test_measure_estimates_equal_the_plain_statistics():
    from medforget.audit.lm import forget_quality, mia_auc, model_utility

    rng = np.random.default_rng(0)
    probes = SimpleNamespace(
        qa={"forget": [(p, None) for p in np.repeat([0, 1, 2, 3], 3)],
            "retain": [(p, None) for p in np.repeat([10, 11, 12, 13], 2)],
            "holdout": [(p, None) for p in np.repeat([20, 21, 22], 2)]},
        completion={}, member_groups=np.repeat([0, 1, 2, 3], 2), nonmember_groups=np.repeat([20, 21, 22], 2))
    evaluations = {"retain": _evaluation(rng, 0.0, False), "original": _evaluation(rng, -2.0, True),
                   "unlearned": _evaluation(rng, 0.5, False)}
    scores = {n: {"loss": (rng.normal(s, 1, 8), rng.normal(0, 1, 6))} for n, s in
              (("retain", 0.0), ("original", 2.0), ("unlearned", -0.5))}
    m = measure(evaluations, probes, scores, reps=300, seed=0)
    a = {n: mia_auc(*scores[n]["loss"]) for n in scores}
    assert m["auc"]["loss"]["original"].estimate == pytest.approx(a["original"])
    assert m["privleak"]["loss"]["unlearned"].estimate == pytest.approx(privleak(a["unlearned"], a["retain"]))
    assert m["extraction"]["original"].estimate == 0.5 and m["extraction"]["unlearned"].estimate == 0.0
    p = forget_quality(evaluations["unlearned"].truth_ratios["forget"], evaluations["retain"].truth_ratios["forget"])
    assert m["forget_quality"]["unlearned"].estimate == pytest.approx(-math.log10(p["p_value"]))

    def util(e):
        return model_utility(e.probabilities["retain"].mean(), e.rouge["retain"].mean(),
                             np.maximum(0, 1 - e.truth_ratios["retain"]).mean())

    assert m["utility_ratio"]["unlearned"].estimate == pytest.approx(util(evaluations["unlearned"])
                                                                     / util(evaluations["retain"]))
    for key in ("privleak", "auc"):
        reps = m[key]["loss"]["original"].replicates
        assert reps.shape == (300,) and np.isfinite(reps).all()
    # paired: the retain-only model's own privleak is 0 in every replicate by construction of the gap
    assert m["extraction"]["original"].replicates.min() >= 0
    checks = lm_criteria(m, LMTolerances(), "loss", units=4)
    assert {c["criterion"] for c in checks} == {"forget_quality", "model_utility", "extraction", "privleak/loss"}
    assert all(c["verdict"] in (PASS, FAIL, INCONCLUSIVE) for c in checks)

    # SemEval: scored for the full-precision models only (a quantized copy has no SemEval items)
    for name in ("retain", "original", "unlearned"):
        evaluations[name].semeval = {part: {"regurgitation": rng.uniform(0, 1, 4),
                                            "regurgitation_patients": np.array(pats[:4]),
                                            "knowledge": rng.integers(0, 2, 4).astype(float),
                                            "knowledge_patients": np.array(pats[:4])}
                                     for part, pats in (("forget", [0, 1, 2, 3]), ("retain", [10, 11, 12, 13]))}
    evaluations["unlearned@int4"] = _evaluation(rng, 0.4, False)
    scores["unlearned@int4"] = {"loss": (rng.normal(0, 1, 8), rng.normal(0, 1, 6))}
    m = measure(evaluations, probes, scores, reps=100, seed=0)
    assert set(m["semeval"]) == {"retain", "original", "unlearned"} and "unlearned@int4" in m["extraction"]
    assert all(g.replicates.shape == (100,) for g in m["semeval"].values())


# --- SemEval-2025 Task 4 -----------------------------------------------------------------------------------------
def test_semeval_item_scores():
    assert knowledge_score("  The MRN is 123. ", "the mrn is 123.") == 1.0
    assert knowledge_score("The MRN is 124.", "The MRN is 123.") == 0.0
    # ROUGE-L recall with Porter stemming: "running" ~ "run", "cats" ~ "cat"; LCS 2 of the 4 reference tokens
    assert regurgitation_score("cat run", "the cats were running") == pytest.approx(0.5)
    assert regurgitation_score("anything", "") == 0.0
    assert split_completion("a b c d e") == ("a b", "c d e") and split_completion("one") is None
    assert mia_score(0.5) == 1.0 and mia_score(0.8) == pytest.approx(0.4) and mia_score(0.2) == pytest.approx(0.4)


def test_semeval_aggregate_equals_a_hand_computation_with_the_harmonic_means_zero_case():
    items = [("t", "regurgitation", 0.1), ("t", "regurgitation", 0.3), ("t", "knowledge", 1.0),
             ("t", "knowledge", 0.0)]
    forget = task_means(items)
    assert forget == {"t": {"regurgitation": pytest.approx(0.2), "knowledge": 0.5}}
    retain = {"t": {"regurgitation": 0.8, "knowledge": 0.6}}
    got = semeval_aggregate({"forget": forget, "retain": retain}, auc=0.6, utility=0.5)
    terms = [0.8, 0.5, 0.8, 0.6]  # forget as 1 - v, then retain
    hand_hmean = 4 / (1 / 0.8 + 1 / 0.5 + 1 / 0.8 + 1 / 0.6)
    assert got["terms"] == pytest.approx(terms)
    assert got["task_aggregate"] == pytest.approx(hand_hmean) == pytest.approx(0.648649, abs=1e-6)
    assert got["task_aggregate"] == pytest.approx(statistics.harmonic_mean(terms))
    assert got["mia_score"] == pytest.approx(0.8)
    assert got["final"] == pytest.approx((hand_hmean + 0.8 + 0.5) / 3) == pytest.approx(0.649550, abs=1e-6)
    # the zero case: the forget answers are all still known exactly (knowledge 1 -> term 0): the harmonic mean is 0
    known = semeval_aggregate({"forget": {"t": {"regurgitation": 0.2, "knowledge": 1.0}}, "retain": retain},
                              auc=0.6, utility=0.5)
    assert known["task_aggregate"] == 0.0 == statistics.harmonic_mean([0.8, 0.0, 0.8, 0.6])
    assert known["final"] == pytest.approx((0.0 + 0.8 + 0.5) / 3)
    # several tasks: every task's two values enter the one harmonic mean
    two = semeval_aggregate({"forget": {"a": {"regurgitation": 0.5, "knowledge": 0.5},
                                        "b": {"regurgitation": 0.0, "knowledge": 0.0}},
                             "retain": {"a": {"regurgitation": 1.0, "knowledge": 1.0},
                                        "b": {"regurgitation": 0.5, "knowledge": 0.5}}}, auc=0.5, utility=1.0)
    assert two["task_aggregate"] == pytest.approx(statistics.harmonic_mean([0.5, 0.5, 1, 1, 1, 1, 0.5, 0.5]))
    assert math.isnan(semeval_aggregate({"forget": forget, "retain": retain}, math.nan, 0.5)["final"])
