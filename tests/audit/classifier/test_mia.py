"""Membership-inference attacks and their metrics, against scikit-learn reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve

from medforget.audit.classifier.mia import LossAttack, MembershipAttack, attack_metrics
from medforget.audit.classifier.mia.base import ThresholdAttack
from medforget.audit.roc import tpr_at_fpr

ATTACKS = sorted(MembershipAttack.registry)
THRESHOLD_ATTACKS = sorted(n for n, c in MembershipAttack.registry.items() if issubclass(c, ThresholdAttack))
C = 4


def test_registry_holds_the_whole_suite():
    assert set(ATTACKS) == {"LossAttack", "ConfidenceAttack", "EntropyAttack", "ModifiedEntropyAttack",
                            "LogisticRegressionAttack", "SVCAttack", "LiRAAttack", "RMIAAttack"}
    assert set(THRESHOLD_ATTACKS) == {"LossAttack", "ConfidenceAttack", "EntropyAttack", "ModifiedEntropyAttack"}
    assert {n for n, c in MembershipAttack.registry.items() if c.opt_in} == {"LiRAAttack", "RMIAAttack"}
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


@pytest.mark.parametrize("name", THRESHOLD_ATTACKS)
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
    if attack.uses_labels:
        assert s[0] > s[1]  # the correctly, confidently classified sample looks more member-like
    else:
        assert s[0] == s[1]  # label-free: both are equally confident


@pytest.mark.parametrize("name", THRESHOLD_ATTACKS)
def test_attack_detects_memorization(name):
    members, nonmembers = memorizing(500)
    out = MembershipAttack.registry[name]().evaluate(members, nonmembers)
    assert out["auc"] > 0.9
    assert out["member_rate"] > 0.9
    assert out["n_members"] == 500 and out["n_nonmembers"] == 500


@pytest.mark.parametrize("name", THRESHOLD_ATTACKS)
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
    out = attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers), nonmember_units=10_000)
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    s = np.r_[members, nonmembers]
    assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)  # torchmetrics integrates in float32
    assert out["tpr@1%fpr"] == pytest.approx(sk_tpr_at(y, s, 0.01), abs=1e-6)
    assert out["tpr@0.1%fpr"] == pytest.approx(sk_tpr_at(y, s, 0.001), abs=1e-6)
    # 1,300 non-members resolve an FPR of 1% but not of 0.1%: that TPR would be the TPR at 0% FPR, so it is n/a
    plain = attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers))
    assert plain["tpr@1%fpr"] == out["tpr@1%fpr"] and math.isnan(plain["tpr@0.1%fpr"])
    assert math.isnan(attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers),
                                     nonmember_units=999)["tpr@1%fpr"])
    assert out["tpr@1%fpr"] > 0  # non-trivial values were compared
    assert out["member_rate"] == pytest.approx(float(np.mean(members > np.median(nonmembers))))
    assert (out["n_members"], out["n_nonmembers"]) == (700, 1300)


def test_attack_metrics_with_ties_match_sklearn():
    rng = np.random.default_rng(5)
    members = rng.integers(0, 6, 300).astype(float)
    nonmembers = rng.integers(0, 5, 400).astype(float)
    out = attack_metrics(torch.from_numpy(members), torch.from_numpy(nonmembers), nonmember_units=10_000)
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
    out = attack_metrics(torch.tensor(members), torch.tensor(nonmembers), nonmember_units=10_000)
    y = [1] * len(members) + [0] * len(nonmembers)
    assert roc_auc_score(y, members + nonmembers) == 1.0
    assert out["auc"] == 1.0
    assert out["tpr@1%fpr"] == 1.0 and out["tpr@0.1%fpr"] == 1.0


def test_attack_metrics_hand_computed():
    out = attack_metrics(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0]), nonmember_units=10_000)
    assert out["auc"] == 1.0
    assert out["member_rate"] == 1.0
    assert out["tpr@1%fpr"] == 1.0 and out["tpr@0.1%fpr"] == 1.0
    assert (out["n_members"], out["n_nonmembers"]) == (2, 2)

    out = attack_metrics(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]), nonmember_units=1000)
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
    assert scores.dtype == torch.float64
    # half-precision logits and int32 labels are accepted
    assert LossAttack().score(logits.half(), labels.int()).tolist() == pytest.approx(expected, abs=1e-2)


def test_loss_attack_evaluate_equals_attack_metrics_of_scores():
    members, nonmembers = memorizing(100, seed=3)
    attack = LossAttack()
    out = attack.evaluate(members, nonmembers)
    ref = attack_metrics(attack.score(*members), attack.score(*nonmembers))
    assert out.keys() == ref.keys()
    assert all(out[k] == pytest.approx(ref[k], nan_ok=True) for k in ref)
    y = np.r_[np.ones(100), np.zeros(100)]
    s = np.r_[attack.score(*members).numpy(), attack.score(*nonmembers).numpy()]
    assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)  # torchmetrics integrates in float32


# --- hand-computed scores -------------------------------------------------------------------------------------------
def test_confidence_entropy_and_modified_entropy_hand_computed():
    from medforget.audit.classifier.mia import ConfidenceAttack, EntropyAttack, ModifiedEntropyAttack

    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=torch.float64)
    logits = p.log()
    labels = torch.tensor([0, 0])
    assert ConfidenceAttack().score(logits, labels).tolist() == pytest.approx([0.7, 0.1])
    h = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
         -(0.1 * math.log(0.1) + 0.3 * math.log(0.3) + 0.6 * math.log(0.6))]
    assert EntropyAttack().score(logits, labels).tolist() == pytest.approx([-h[0], -h[1]])
    # Song & Mittal: Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)
    m0 = -(0.3 * math.log(0.7)) - (0.2 * math.log(0.8) + 0.1 * math.log(0.9))
    m1 = -(0.9 * math.log(0.1)) - (0.3 * math.log(0.7) + 0.6 * math.log(0.4))
    assert ModifiedEntropyAttack().score(logits, labels).tolist() == pytest.approx([-m0, -m1])


def test_modified_entropy_is_exact_for_saturated_softmax():
    from medforget.audit.classifier.mia import ModifiedEntropyAttack

    logits = torch.tensor([[60.0, 0.0], [0.0, 60.0]])
    s = ModifiedEntropyAttack().score(logits, torch.tensor([0, 0]))
    # right and certain: Mentr ~ 0 (not nan); wrong and certain: -(1 - p_y) log p_y ~ 60
    # plus -p_1 log(1 - p_1) = -log p_0 ~ 60, so ~120 (log(1 - p) must not round to log 0)
    assert torch.isfinite(s).all()
    assert -s[1] == pytest.approx(120.0, rel=1e-6)
    assert 0 <= -s[0] < 1e-20
    # a less saturated case against the formula in exact arithmetic (p_y = 1 - 1e-12 would cancel in 1 - p_y)
    z = 30.0
    s = ModifiedEntropyAttack().score(torch.tensor([[z, 0.0]]), torch.tensor([0]))
    p1 = 1 / (1 + math.exp(z))  # = 1 - p_0
    expected = -2 * p1 * math.log1p(-p1)  # -(1 - p0) log p0 - p1 log(1 - p1), both = -p1 log p0 ~ e^-60
    assert -float(s[0]) == pytest.approx(expected, rel=1e-6)


# --- the whole suite on a synthetic audit ---------------------------------------------------------------------------
def scenario(forget_memorized: bool, seed: int = 0, k: int = 4):
    """Outputs of a model that memorised its training set (retain, and forget if ``forget_memorized``), with ``k``
    reference models in a balanced design (each retain sample IN for k/2 of them)."""
    from medforget.audit.classifier.mia.base import AttackData
    from medforget.audit.classifier.reference_models import balanced_design

    g = torch.Generator().manual_seed(seed)
    sizes = {"retain": 400, "val": 150, "forget": 80, "test": 300}

    def member(n):
        y = torch.randint(0, C, (n,), generator=g)
        return torch.randn(n, C, generator=g) + 4.0 * F.one_hot(y, C), y

    def nonmember(n, labels=None):
        y = torch.randint(0, C, (n,), generator=g) if labels is None else labels
        return torch.randn(n, C, generator=g) + 1.0 * F.one_hot(y, C), y

    target = {"retain": member(400), "val": nonmember(150), "forget": member(80) if forget_memorized
              else nonmember(80), "test": nonmember(300)}
    design = balanced_design(sizes["retain"], k, seed)
    references, members = [], []
    for i in range(k):
        logits = {}
        for part, (_, y) in target.items():
            lg = nonmember(len(y), y)[0]
            if part == "retain":
                lg[design[i]] = torch.randn(int(design[i].sum()), C, generator=g) + 4.0 * F.one_hot(y[design[i]], C)
            logits[part] = lg
        references.append(logits)
        members.append({p: torch.from_numpy(design[i]) if p == "retain" else torch.zeros(sizes[p], dtype=torch.bool)
                        for p in target})
    return AttackData(target, references, members)


@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_separates_memorised_forget_patients_and_not_forgotten_ones(name):
    attack = MembershipAttack.registry[name]()
    memorised = attack.run(scenario(True))
    assert memorised.metrics["auc"] > 0.9
    assert memorised.metrics["member_rate"] > 0.7  # calibrated on retain vs val: most forget samples called members
    assert memorised.metrics["nonmember_rate"] < 0.4
    assert memorised.metrics["calibration_auc"] > 0.9
    forgotten = MembershipAttack.registry[name]().run(scenario(False, seed=1))
    assert abs(forgotten.metrics["auc"] - 0.5) < 0.07  # the retrained model's situation: chance
    assert abs(forgotten.metrics["member_rate"] - forgotten.metrics["nonmember_rate"]) < 0.15
    # the reported AUC and TPR are scikit-learn's on the returned scores
    for result in (memorised, forgotten):
        s = np.r_[result.scores["forget"], result.scores["test"]]
        y = np.r_[np.ones(len(result.scores["forget"])), np.zeros(len(result.scores["test"]))]
        assert result.metrics["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        # 300 non-member samples (each its own patient here) cannot resolve a 1% FPR: n/a (NaN)
        assert math.isnan(result.metrics["tpr@1%fpr"]) and math.isnan(result.metrics["tpr@0.1%fpr"])
        assert result.metrics["patient_auc"] == pytest.approx(result.metrics["auc"])  # one study per patient
        assert result.metrics["member_rate"] == pytest.approx(
            float(np.mean(result.scores["forget"] >= result.metrics["threshold"])))


def test_attack_metrics_with_a_threshold_counts_scores_at_or_above_it():
    out = attack_metrics(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.5, 0.3, 0.0]), threshold=0.5)
    assert out["member_rate"] == pytest.approx(2 / 3)
    assert out["nonmember_rate"] == pytest.approx(1 / 4)
    assert out["threshold"] == 0.5


def test_youden_threshold_hand_computed():
    from medforget.audit.classifier.mia.base import youden_threshold

    # members [3, 4, 5], non-members [0, 1, 3.5]: threshold 4 -> TPR 2/3, FPR 0 (J = 2/3); 3 -> TPR 1, FPR 1/3 (2/3);
    # ties go to the higher threshold
    assert youden_threshold(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 3.5])) == 4.0
    assert youden_threshold(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 2.0
    assert youden_threshold(torch.tensor([]), torch.tensor([1.0])) == math.inf


def test_population_attack_is_class_balanced_and_cross_validated():
    from medforget.audit.classifier.mia import LogisticRegressionAttack
    from medforget.audit.classifier.mia.base import AttackData

    # retain (1000) and val (50) from the same distribution: a class-balanced attack must not call everything a
    # member just because members are the majority; its cross-validated AUC is near chance
    g = torch.Generator().manual_seed(0)

    def draw(n):
        return torch.randn(n, C, generator=g) * 2, torch.randint(0, C, (n,), generator=g)

    data = AttackData({"retain": draw(1000), "val": draw(50), "forget": draw(100), "test": draw(300)})
    attack = LogisticRegressionAttack()
    result = attack.run(data)
    assert 0.15 < result.metrics["nonmember_rate"] < 0.85
    assert abs(result.metrics["cv_auc"] - 0.5) < 0.15
    assert result.metrics["threshold"] == 0.0
    assert "best_C" in result.metrics
    # the member rate is the fitted classifier's own prediction
    from medforget.audit.classifier.mia.population import membership_features

    predicted = attack._fitted.predict(membership_features(*data.target["forget"]))
    assert result.metrics["member_rate"] == pytest.approx(float(predicted.mean()))


def test_population_attack_needs_val_samples():
    from medforget.audit.classifier.mia import SVCAttack
    from medforget.audit.classifier.mia.base import AttackData

    logits, labels = torch.randn(10, C), torch.randint(0, C, (10,))
    data = AttackData({"retain": (logits, labels), "val": (logits[:1], labels[:1]), "forget": (logits, labels),
                       "test": (logits, labels)})
    with pytest.raises(ValueError, match="at least 2"):
        SVCAttack().run(data)


def test_lira_offline_hand_computed():
    from medforget.audit.classifier.mia import LiRAAttack
    from medforget.audit.classifier.mia.base import AttackData, true_class_logit

    # two classes; phi = logit_y - logit_other for 2 classes. Target phis 3, 0 ; reference OUT phis per sample.
    def logits_for(phis):
        return torch.stack([torch.tensor(phis, dtype=torch.float64), torch.zeros(len(phis), dtype=torch.float64)], 1)

    labels = torch.zeros(2, dtype=torch.long)
    parts = ("forget", "retain", "val", "test")
    target = {p: (logits_for([3.0, 0.0]), labels) for p in parts}
    ref_phis = [[1.0, 0.0], [3.0, 2.0]]  # sample 0: mean 2; sample 1: mean 1
    references = [{p: logits_for(r) for p in parts} for r in ref_phis]
    members = [{p: torch.zeros(2, dtype=torch.bool) for p in parts} for _ in ref_phis]
    data = AttackData(target, references, members)
    assert true_class_logit(*target["forget"]).tolist() == pytest.approx([3.0, 0.0])
    # residuals: sample 0: -1, +1; sample 1: -1, +1 in every part -> pooled sd = std of (+-1 repeated) (ddof 1)
    residuals = torch.tensor([-1.0, 1.0, -1.0, 1.0] * 4, dtype=torch.float64)
    sd = float(residuals.std())
    scores = LiRAAttack().scores(data)
    assert scores["forget"].tolist() == pytest.approx([(3 - 2) / sd, (0 - 1) / sd])
    # per-sample variance: sd of [1, 3] and of [0, 2] = sqrt(2)
    per_sample = LiRAAttack(global_variance=False).scores(data)
    assert per_sample["forget"].tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])
    # an IN reference model is ignored for that sample (pooled variance); a per-sample variance from the one OUT
    # model left would be 0, so it is refused with a message naming the flags
    members[1]["forget"] = torch.tensor([True, False])
    pooled = LiRAAttack().scores(AttackData(target, references, members))
    # sample 0's OUT mean is now 1 (residual 0); the pooled residuals are 14 values of +-1 and that 0: sd 1
    assert pooled["forget"][0] == pytest.approx((3 - 1) / 1.0)
    with pytest.raises(ValueError, match="--audit.reference_models >= 4"):
        LiRAAttack(global_variance=False).scores(AttackData(target, references, members))


def test_rmia_offline_hand_computed():
    from medforget.audit.classifier.mia import RMIAAttack
    from medforget.audit.classifier.mia.base import AttackData

    def logits_for(probs):  # two classes with p_0 = probs
        p = torch.tensor(probs, dtype=torch.float64)
        return torch.stack([p.log(), (1 - p).log()], 1)

    labels = torch.zeros(2, dtype=torch.long)
    target = {"forget": (logits_for([0.9, 0.5]), labels), "retain": (logits_for([0.9, 0.9]), labels),
              "val": (logits_for([0.4, 0.6]), labels), "test": (logits_for([0.5, 0.5]), labels)}
    ref = {p: logits_for([0.5, 0.5]) for p in target}
    members = {p: torch.zeros(2, dtype=torch.bool) for p in target}
    data = AttackData(target, [ref, ref], [members, members])
    a = 0.3
    p_x = 0.5 * ((1 + a) * 0.5 + (1 - a))  # = 0.675 for every sample
    ratio_val = [0.4 / p_x, 0.6 / p_x]
    ratio_forget = [0.9 / p_x, 0.5 / p_x]
    scores = RMIAAttack(offline_a=a, gamma=1.0).scores(data)
    expected = [np.mean([r / z > 1.0 for z in ratio_val]) for r in ratio_forget]  # [1.0, 0.5]
    assert scores["forget"].tolist() == pytest.approx(expected)
    assert expected == [1.0, 0.5]
    # a val sample is compared with the other val samples only (strict >, never with itself): 0.4 beats none, 0.6
    # beats 0.4
    assert scores["val"].tolist() == pytest.approx([0.0, 1.0])
    # a test sample equal to a val sample does not beat it (strict)
    assert scores["test"].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="offline_a"):
        RMIAAttack(offline_a=1.5)


def test_reference_attacks_need_reference_models():
    from medforget.audit.classifier.mia import LiRAAttack, RMIAAttack
    from medforget.audit.classifier.mia.base import AttackData

    logits, labels = torch.randn(6, C), torch.randint(0, C, (6,))
    data = AttackData({p: (logits, labels) for p in ("forget", "retain", "val", "test")})
    for attack in (LiRAAttack(), RMIAAttack()):
        with pytest.raises(ValueError, match="reference_models"):
            attack.run(data)


def test_balanced_design():
    from medforget.audit.classifier.reference_models import balanced_design

    design = balanced_design(50, 4, seed=0)
    assert design.shape == (4, 50)
    assert (design.sum(0) == 2).all()  # every patient IN for exactly K/2 models, OUT for the rest
    assert (balanced_design(50, 4, seed=0) == design).all()
    assert (balanced_design(7, 3).sum(0) == 1).all()
    # every model gets about half the patients, whatever K
    for n, k in ((20, 2), (50, 4), (31, 6)):
        sizes = balanced_design(n, k, seed=1).sum(1)
        assert sizes.max() - sizes.min() <= 1, (n, k, sizes)
    assert not (balanced_design(50, 4, seed=0) == balanced_design(50, 4, seed=1)).all()
    with pytest.raises(ValueError, match="K must be >= 2"):
        balanced_design(5, 1)


def test_attack_data_requires_every_part():
    from medforget.audit.classifier.mia.base import AttackData

    with pytest.raises(ValueError, match="missing"):
        AttackData({"forget": (torch.randn(2, C), torch.zeros(2))})


@pytest.mark.parametrize("name", ["LogisticRegressionAttack", "SVCAttack"])
def test_population_attack_folds_never_split_a_patient(name, monkeypatch):
    from sklearn.model_selection import StratifiedGroupKFold

    from medforget.audit.classifier.mia.base import AttackData

    g = torch.Generator().manual_seed(0)
    parts = {"retain": 30, "val": 12, "forget": 6, "test": 12}  # patients, 3 studies each
    target = {p: (torch.randn(3 * n, C, generator=g), torch.randint(0, C, (3 * n,), generator=g))
              for p, n in parts.items()}
    groups = {p: np.repeat(np.arange(n), 3) for p, n in parts.items()}
    seen = []
    original_split = StratifiedGroupKFold.split

    def spy(self, x, y=None, groups=None):
        for train, held in original_split(self, x, y, groups):
            seen.append((set(groups[train]), set(groups[held])))
            yield train, held

    monkeypatch.setattr(StratifiedGroupKFold, "split", spy)
    result = MembershipAttack.registry[name]().run(AttackData(target, groups=groups))
    assert seen  # the grouped splitter was used, with the patients
    assert all(not (train & held) for train, held in seen)  # no patient on both sides of a fold
    assert result.metrics["patient_n_members"] == 6 and result.metrics["patient_n_nonmembers"] == 12
    # with too few val patients there is nothing to cross-validate
    few = {**groups, "val": np.zeros(36, dtype=int)}
    with pytest.raises(ValueError, match="2 val patients"):
        MembershipAttack.registry[name]().run(AttackData(target, groups=few))


def test_rmia_tunes_a_on_a_reference_model():
    from medforget.audit.classifier.mia import RMIAAttack
    from medforget.audit.classifier.mia.rmia import A_GRID

    data = scenario(True, seed=3, k=4)
    attack = RMIAAttack()
    attack.run(data)
    assert attack.chosen_a in A_GRID
    # the tuning chose the a of best AUC for reference model 0 (its IN retain samples vs val) against the others
    from medforget.audit.classifier.mia.base import attack_metrics, true_class_prob
    from medforget.audit.classifier.mia.rmia import pairwise_scores

    def auc_for(a: float) -> float:
        def ratio(part, rows=slice(None)):
            labels = data.target[part][1][rows]
            outs = [true_class_prob(r[part][rows], labels).masked_fill(m[part][rows].bool(), float("nan"))
                    for r, m in zip(data.references[1:], data.reference_members[1:], strict=True)]
            p_out = torch.stack(outs).nanmean(0)
            return true_class_prob(data.references[0][part][rows], labels) / (0.5 * ((1 + a) * p_out + (1 - a)))

        members = data.reference_members[0]["retain"].bool()
        population = ratio("val")
        member = pairwise_scores(ratio("retain", members), population, 1.0)
        nonmember = pairwise_scores(population, population, 1.0, torch.arange(len(population)))
        return attack_metrics(member, nonmember)["auc"]

    aucs = {a: auc_for(a) for a in A_GRID}
    assert aucs[attack.chosen_a] == pytest.approx(max(aucs.values()))
    fixed = RMIAAttack(offline_a=0.5)
    fixed.run(data)
    assert fixed.chosen_a == 0.5 and fixed.extra_metrics()["offline_a"] == 0.5
