"""The weighted (bootstrap) metrics equal the plain metrics on the resampled data."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medforget.audit.bootstrap import (
    classification_replicates,
    patient_scores,
    patient_weights,
    weighted_auc,
)
from medforget.audit.utility import classification_metrics


@pytest.mark.parametrize("seed", range(5))
def test_weighted_metrics_equal_metrics_of_the_resampled_rows(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 60))
    logits, y = rng.normal(size=(n, 4)), rng.integers(0, 4, n)
    groups = rng.integers(0, 9, n)
    weights = patient_weights(groups, 4, rng)
    plain = classification_replicates(logits, y, np.ones((1, n)))
    reference = classification_metrics(torch.tensor(logits), torch.tensor(y))
    for key, value in reference.items():
        assert plain[key][0] == pytest.approx(value, abs=1e-6, nan_ok=True)
    reps = classification_replicates(logits, y, weights)
    for b in range(len(weights)):
        rows = np.repeat(np.arange(n), weights[b].astype(int))
        resampled = classification_metrics(torch.tensor(logits[rows]), torch.tensor(y[rows]))
        for key, value in resampled.items():
            assert reps[key][b] == pytest.approx(value, abs=1e-6, nan_ok=True)


def test_patient_weights_draw_whole_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    w = patient_weights(groups, 50, np.random.default_rng(0))
    assert w.shape == (50, 6)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 5])  # one patient's studies move together
    assert np.all(w[:, [0, 2, 3]].sum(1) == 3)  # as many patient draws as patients


def test_weighted_auc_matches_sklearn_with_ties():
    pos, neg = np.array([0.9, 0.5, 0.5, 0.1]), np.array([0.5, 0.2, 0.2])
    expected = roc_auc_score(np.r_[np.ones(4), np.zeros(3)], np.r_[pos, neg])
    assert weighted_auc(pos, neg, np.ones(4), np.ones(3))[0] == pytest.approx(expected)
    # weight 2 on a sample = the sample twice
    expected2 = roc_auc_score(np.r_[np.ones(5), np.zeros(3)], np.r_[pos, 0.9, neg])
    assert weighted_auc(pos, neg, np.array([2.0, 1, 1, 1]), np.ones(3))[0] == pytest.approx(expected2)
    assert np.isnan(weighted_auc(pos, neg, np.zeros(4), np.ones(3))[0])


def test_patient_scores_mean_and_max():
    codes, means = patient_scores(np.array([1.0, 3.0, 5.0]), np.array([7, 7, 2]))
    assert list(codes) == [2, 7] and list(means) == [5.0, 2.0]
    assert list(patient_scores(np.array([1.0, 3.0, 5.0]), np.array([7, 7, 2]), "max")[1]) == [5.0, 3.0]


def test_patient_bootstrap_of_an_auc_is_seeded_and_patient_level():
    from medforget.audit.verdict import interval

    def aucs(member, nonmember, m_groups, n_groups, reps, seed):
        rng = np.random.default_rng(seed)
        return weighted_auc(member, nonmember, patient_weights(m_groups, reps, rng),
                            patient_weights(n_groups, reps, rng))

    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 60)
    m_groups, n_groups = np.repeat(np.arange(10), 4), np.repeat(np.arange(20), 3)  # 10 and 20 patients
    out = aucs(members, nonmembers, m_groups, n_groups, 100, 3)
    assert out.shape == (100,)
    np.testing.assert_array_equal(out, aucs(members, nonmembers, m_groups, n_groups, 100, 3))  # seeded
    lo, hi = interval(out, 0.95)
    point = roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[members, nonmembers])
    assert lo < point < hi
    # perfectly separated: every resample has AUC 1
    assert interval(aucs(members + 100, nonmembers, m_groups, n_groups, 20, 0), 0.95) == pytest.approx([1.0, 1.0])
    # a single member patient is drawn in every resample; the non-member patients are still resampled
    assert aucs(members[:4], nonmembers, np.zeros(4), n_groups, 30, 1).std() > 0
    # resampling patients (clusters) gives a wider interval than treating correlated studies as independent
    clustered = np.repeat(rng.normal(0.5, 1.0, 10), 4)  # 4 identical studies per member patient
    wide = interval(aucs(clustered, nonmembers, m_groups, n_groups, 300, 0), 0.95)
    narrow = interval(aucs(clustered, nonmembers, np.arange(40), np.arange(60), 300, 0), 0.95)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
