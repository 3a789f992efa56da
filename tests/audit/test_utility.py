"""Utility metrics against scikit-learn reference values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medforget.audit.utility import classification_metrics, macro_auroc, macro_f1

N, C = 200, 4


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, N)
    assert set(y.tolist()) == set(range(C))
    logits = rng.normal(size=(N, C)) + 1.5 * np.eye(C)[y]  # informative but imperfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, logits, probs


def sk_f1(y, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return f1_score(y, pred, average="macro")


def test_macro_auroc_matches_sklearn(data):
    y, _, probs = data
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    got = macro_auroc(torch.from_numpy(probs).float(), torch.from_numpy(y))
    assert 0.6 < expected < 0.99  # a non-trivial reference value
    assert got == pytest.approx(expected, abs=1e-6)


def test_macro_auroc_with_ties_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, C, N)
    rows = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]])
    probs = rows[rng.integers(0, len(rows), N)]  # heavily tied scores
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    got = macro_auroc(torch.from_numpy(probs), torch.from_numpy(y))
    assert got == pytest.approx(expected, abs=1e-6)


def test_macro_auroc_subset_missing_a_class(data):
    y, _, probs = data
    keep = y != 2
    ys, ps = y[keep], probs[keep]
    per_class = [roc_auc_score(ys == c, ps[:, c]) for c in range(C) if c != 2]
    got = macro_auroc(torch.from_numpy(ps), torch.from_numpy(ys))
    assert got == pytest.approx(float(np.mean(per_class)), abs=1e-6)
    # sklearn's multi-class OvR refuses this case (columns != classes present); ours skips the absent class
    with pytest.raises(ValueError):
        roc_auc_score(ys, ps, multi_class="ovr", average="macro")


def test_macro_auroc_single_class_is_nan(data):
    _, _, probs = data
    target = torch.full((10,), 1)
    assert math.isnan(macro_auroc(torch.from_numpy(probs[:10]), target))
    assert math.isnan(classification_metrics(torch.randn(10, C), target)["auc"])


def test_macro_auroc_perfect_and_inverted():
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    perfect = torch.nn.functional.one_hot(y, C).float()
    assert macro_auroc(perfect, y) == pytest.approx(1.0)
    assert macro_auroc(1 - perfect, y) == pytest.approx(0.0)


def test_macro_f1_matches_sklearn(data):
    y, logits, _ = data
    pred = logits.argmax(1)
    expected = sk_f1(y, pred)
    got = macro_f1(torch.from_numpy(pred), torch.from_numpy(y), C)
    assert 0.3 < expected < 0.99
    assert got == pytest.approx(expected, abs=1e-6)


def test_macro_f1_class_absent_from_target_and_predictions():
    y = np.array([0, 0, 1, 1, 3, 3, 3, 0])
    pred = np.array([0, 1, 1, 1, 3, 0, 3, 0])  # class 2 appears nowhere: excluded, as in sklearn
    expected = sk_f1(y, pred)
    got = macro_f1(torch.from_numpy(pred), torch.from_numpy(y), C)
    assert got == pytest.approx(expected, abs=1e-6)
    # hand value: F1 of classes 0, 1, 3 = 2*2/(4+1+1), 2*2/(4+1+0), 2*2/(4+0+1)
    assert got == pytest.approx(np.mean([4 / 6, 4 / 5, 4 / 5]), abs=1e-6)


def test_macro_f1_class_predicted_but_absent_from_target():
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 2, 1, 1, 2, 0])  # class 2 predicted (F1 = 0), never a target: counted, as in sklearn
    expected = sk_f1(y, pred)
    got = macro_f1(torch.from_numpy(pred), torch.from_numpy(y), C)
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(np.mean([2 * 2 / (4 + 0 + 1), 2 * 2 / (4 + 0 + 1), 0.0]), abs=1e-6)


def test_macro_f1_subset_of_random_data(data):
    y, logits, _ = data
    pred = logits.argmax(1)
    for keep in (y != 1, (y != 0) & (pred != 0), np.arange(N) < 7):
        expected = sk_f1(y[keep], pred[keep])
        got = macro_f1(torch.from_numpy(pred[keep]), torch.from_numpy(y[keep]), C)
        assert got == pytest.approx(expected, abs=1e-6)


def test_classification_metrics_match_sklearn(data):
    y, logits, probs = data
    out = classification_metrics(torch.from_numpy(logits).float(), torch.from_numpy(y))
    assert set(out) == {"auc", "f1", "accuracy"}
    pred = logits.argmax(1)
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert out["f1"] == pytest.approx(sk_f1(y, pred), abs=1e-6)
    assert out["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-5)
    assert all(isinstance(v, float) for v in out.values())


def test_classification_metrics_accepts_half_and_int32():
    y = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    logits = torch.nn.functional.one_hot(y.long(), C).half() * 5
    out = classification_metrics(logits, y)
    assert out == {"auc": pytest.approx(1.0), "f1": pytest.approx(1.0), "accuracy": pytest.approx(1.0)}
