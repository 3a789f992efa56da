"""The per-patient forgetting test: exact permutation p-values, a planted member, calibration under the null."""

import numpy as np
import pytest
from scipy.stats import kstest

from medforget.audit.per_patient import per_patient_test


def test_p_values_hand_computed():
    # forget patients a (studies 3, 5 -> mean 4) and b (study 0); null patients with means 1, 2, 3, 4.5
    forget = np.array([3.0, 5.0, 0.0])
    forget_groups = np.array(["a", "a", "b"])
    null = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    null_groups = np.array(["n1", "n2", "n3", "n4", "n4"])
    out = per_patient_test(forget, forget_groups, null, null_groups, permutations=2000, seed=0,
                           name=lambda p: f"h-{p}")
    rows = {r["patient"]: r for r in out["patients"]}
    assert rows["h-a"]["statistic"] == 4.0 and rows["h-a"]["studies"] == 2
    assert rows["h-a"]["p_value"] == pytest.approx((1 + 1) / (1 + 4))  # only 4.5 >= 4
    assert rows["h-b"]["p_value"] == pytest.approx((1 + 4) / (1 + 4))  # every null patient >= 0
    assert out["null_patients"] == 4 and out["forget_patients"] == 2
    assert out["pass_share"] == 1.0  # both p >= 0.05
    assert out["smallest_p"] == pytest.approx(1 / 5)
    # combined: mean statistic 2.0 against random pairs of the 6 pooled patient means {4, 0, 1, 2, 3, 4.5}
    pooled = np.array([4.0, 0.0, 1.0, 2.0, 3.0, 4.5])
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    exact = np.mean([(pooled[i] + pooled[j]) / 2 >= 2.0 for i, j in pairs])
    assert out["combined_p"] == pytest.approx(exact, abs=0.03)


def test_a_planted_member_patient_gets_a_small_p_value():
    rng = np.random.default_rng(0)
    null = rng.normal(size=200)  # 100 never-seen patients x 2 studies
    null_groups = np.repeat(np.arange(100), 2)
    forget = np.r_[rng.normal(size=6), [4.0, 4.5, 3.5, 5.0]]  # patients 0-2 like the null, 3 and 4 memorised
    groups = np.repeat(np.arange(5), 2)
    out = per_patient_test(forget, groups, null, null_groups, seed=1)
    rows = {r["patient"]: r for r in out["patients"]}
    for planted in ("3", "4"):
        assert rows[planted]["p_value"] == pytest.approx(1 / 101) and not rows[planted]["passed"]
    assert sum(rows[str(i)]["passed"] for i in range(3)) >= 2
    assert out["pass_share"] <= 0.6 and out["combined_p"] < 0.05


def test_p_values_are_uniform_when_forget_and_null_patients_are_exchangeable():
    rng = np.random.default_rng(2)
    p_values, combined = [], []
    for trial in range(400):  # independent trials: one patient's p-value each (p-values sharing a null correlate)
        scores = rng.normal(size=100) + np.repeat(rng.normal(size=50), 2)  # 50 patients x 2 correlated studies
        groups = np.repeat(np.arange(50), 2)
        out = per_patient_test(scores[:2], groups[:2], scores[2:], groups[2:], permutations=200, seed=trial)
        p_values.append(out["patients"][0]["p_value"])
        out = per_patient_test(scores[:10], groups[:10], scores[10:], groups[10:], permutations=200, seed=trial)
        combined.append(out["combined_p"])
    assert kstest(p_values, "uniform").pvalue > 0.01
    assert np.mean(np.array(p_values) < 0.05) == pytest.approx(0.05, abs=0.03)
    assert np.mean(np.array(combined) < 0.05) == pytest.approx(0.05, abs=0.03)  # the combined test holds its level


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        per_patient_test(np.ones(2), np.arange(2), np.ones(2), np.arange(2), alpha=1.5)
    with pytest.raises(ValueError, match="never-seen"):
        per_patient_test(np.ones(2), np.arange(2), np.ones(0), np.arange(0))
