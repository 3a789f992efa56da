"""Membership-inference attacks and their metrics, against scikit-learn reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from medforget.evaluation.mia import LossAttack, MembershipAttack, attack_metrics
from medforget.evaluation.mia.base import tpr_at_fpr

ATTACKS = sorted(MembershipAttack.registry)
C = 4


def test_registry_contains_the_loss_attack():
    assert "LossAttack" in MembershipAttack.registry
    assert MembershipAttack.registry["LossAttack"] is LossAttack
    for cls in MembershipAttack.registry.values():
        assert issubclass(cls, MembershipAttack)


def memorizing(n: int, seed: int = 0):
    """Members: logits strongly favouring the true label; non-members: random logits."""
    g = torch.Generator().manual_seed(seed)
    labels_m = torch.randint(0, C, (n,), generator=g)
    logits_m = torch.randn(n, C, generator=g) + 8.0 * F.one_hot(labels_m, C)
    labels_n = torch.randint(0, C, (n,), generator=g)
    logits_n = torch.randn(n, C, generator=g)
    return (logits_m, labels_m), (logits_n, labels_n)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_scores_shape_and_finite(name):
    attack = MembershipAttack.registry[name]()
    (logits, labels), _ = memorizing(50)
    scores = attack.score(logits, labels)
    assert scores.shape == (50,)
    assert torch.isfinite(scores).all()
    # extreme logits stay finite too
    extreme = torch.tensor([[1e4, -1e4, 0.0, 0.0], [-1e4, 1e4, 0.0, 0.0]])
    s = attack.score(extreme, torch.tensor([0, 0]))
    assert s.shape == (2,) and torch.isfinite(s).all()
    assert s[0] > s[1]  # the correctly, confidently classified sample looks more member-like


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_detects_memorization(name):
    members, nonmembers = memorizing(500)
    out = MembershipAttack.registry[name]().evaluate(members, nonmembers)
    assert out["auc"] > 0.9
    assert out["member_rate"] > 0.9
    assert out["n_members"] == 500 and out["n_nonmembers"] == 500


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_on_identical_distributions_is_chance(name):
    g = torch.Generator().manual_seed(123)
    n = 2000
    members = (torch.randn(n, C, generator=g) * 2, torch.randint(0, C, (n,), generator=g))
    nonmembers = (torch.randn(n, C, generator=g) * 2, torch.randint(0, C, (n,), generator=g))
    out = MembershipAttack.registry[name]().evaluate(members, nonmembers)
    assert abs(out["auc"] - 0.5) < 0.1
    assert abs(out["member_rate"] - 0.5) < 0.1


def sk_tpr_at(y, scores, target):
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    return float(tpr[fpr <= target].max()) if (fpr <= target).any() else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attack_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    members = rng.normal(0.8, 1.0, 700)
    nonmembers = rng.normal(0.0, 1.0, 1300)
    out = attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers))
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    s = np.r_[members, nonmembers]
    assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)  # torchmetrics integrates in float32
    assert out["tpr@1%fpr"] == pytest.approx(sk_tpr_at(y, s, 0.01), abs=1e-6)
    assert out["tpr@0.1%fpr"] == pytest.approx(sk_tpr_at(y, s, 0.001), abs=1e-6)
    assert out["tpr@1%fpr"] > 0  # non-trivial values were compared
    assert out["member_rate"] == pytest.approx(float(np.mean(members > np.median(nonmembers))))
    assert (out["n_members"], out["n_nonmembers"]) == (700, 1300)


def test_attack_metrics_with_ties_match_sklearn():
    rng = np.random.default_rng(5)
    members = rng.integers(0, 6, 300).astype(float)
    nonmembers = rng.integers(0, 5, 400).astype(float)
    out = attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers))
    y = np.r_[np.ones(300), np.zeros(400)]
    s = np.r_[members, nonmembers]
    assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)  # torchmetrics integrates in float32
    assert out["tpr@1%fpr"] == pytest.approx(sk_tpr_at(y, s, 0.01), abs=1e-6)


@pytest.mark.parametrize(
    ("members", "nonmembers"),
    [
        ([50.0, 60.0], [40.0, 0.0]),  # large scores: a sigmoid would tie 40/50/60 at 1.0 in float64
        ([-700.0, -800.0], [-900.0, -1000.0]),  # very negative (huge losses)
        ([-1e-20, -2e-20], [-1e-18, -5.0]),  # tiny losses of a memorizing model
    ],
)
def test_attack_metrics_keep_the_order_of_extreme_scores(members, nonmembers):
    out = attack_metrics(torch.tensor(members), torch.tensor(nonmembers))
    y = [1] * len(members) + [0] * len(nonmembers)
    assert roc_auc_score(y, members + nonmembers) == 1.0
    assert out["auc"] == 1.0
    assert out["tpr@1%fpr"] == 1.0 and out["tpr@0.1%fpr"] == 1.0


def test_attack_metrics_hand_computed():
    out = attack_metrics(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert out["auc"] == 1.0
    assert out["member_rate"] == 1.0
    assert out["tpr@1%fpr"] == 1.0 and out["tpr@0.1%fpr"] == 1.0
    assert (out["n_members"], out["n_nonmembers"]) == (2, 2)

    out = attack_metrics(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))
    assert out["auc"] == 0.0
    assert out["member_rate"] == 0.0
    assert out["tpr@1%fpr"] == 0.0

    # members [1, 3, 5] vs non-members [0, 2, 4]: 1+2+3 of 9 pairs won -> 2/3; median 2 -> members 3, 5 above
    out = attack_metrics(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0.0, 2.0, 4.0]))
    assert out["auc"] == pytest.approx(2 / 3)
    assert out["member_rate"] == pytest.approx(2 / 3)

    # all scores equal: chance
    out = attack_metrics(torch.ones(3), torch.ones(3))
    assert out["auc"] == pytest.approx(0.5)
    assert out["member_rate"] == 0.0


def test_tpr_at_fpr():
    fpr = np.array([0.0, 0.0, 0.005, 0.01, 0.5, 1.0])
    tpr = np.array([0.0, 0.2, 0.3, 0.6, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.6
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.2
    assert tpr_at_fpr(fpr, tpr, 1.0) == 1.0
    assert tpr_at_fpr(np.array([0.1, 1.0]), np.array([0.5, 1.0]), 0.01) == 0.0


def test_loss_attack_is_negative_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 3])
    scores = LossAttack().score(logits, labels)
    z0 = math.exp(2.0) + math.exp(0.0) + math.exp(-1.0) + math.exp(0.5)
    expected = [-(math.log(z0) - 2.0), -math.log(4.0)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-6)
    assert scores.dtype == torch.float32
    # half-precision logits and int32 labels are accepted
    assert LossAttack().score(logits.half(), labels.int()).tolist() == pytest.approx(expected, abs=1e-2)


def test_loss_attack_evaluate_equals_attack_metrics_of_scores():
    members, nonmembers = memorizing(100, seed=3)
    attack = LossAttack()
    out = attack.evaluate(members, nonmembers)
    ref = attack_metrics(attack.score(*members), attack.score(*nonmembers))
    assert out == ref
    y = np.r_[np.ones(100), np.zeros(100)]
    s = np.r_[attack.score(*members).numpy(), attack.score(*nonmembers).numpy()]
    assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)  # torchmetrics integrates in float32
