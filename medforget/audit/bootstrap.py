"""The paired patient bootstrap, vectorised.

Studies of one patient are correlated and the patient is the unit that is forgotten, so every interval of the audit
resamples *patients* (with replacement) and takes all their studies. A resample is a weight per sample, the number of
times its patient was drawn (:func:`patient_weights`); every metric has a weighted form that equals the plain metric
at unit weights (tested against :func:`medforget.audit.utility.classification_metrics` and scikit-learn), so the
``B`` replicates of a metric are a few matrix products instead of ``B`` recomputations. All models of a run are
scored on the same resamples (paired), so their differences are resampled together.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np


def patient_draws(groups: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``reps`` patient-level bootstrap resamples: ``(counts (reps, P), codes (N,))``, how many times each of the
    ``P`` patients (sorted) was drawn (with replacement, ``P`` draws) and the patient code of each of the ``N`` samples.
    ``counts[:, codes]`` are the per-sample weights."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_patients = int(codes.max()) + 1 if len(codes) else 0
    if n_patients == 0:
        return np.zeros((reps, 0)), codes
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=reps)  # (reps, P)
    return counts.astype(float), codes


def patient_weights(groups: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``(reps, N)`` sample weights of ``reps`` patient-level bootstrap resamples: for each resample and sample, how
    many times the sample's patient was drawn (:func:`patient_draws`).

    Args:
        groups: Patient code of each of the ``N`` samples (any hashable values).
        reps: Resamples.
        rng: Random generator.
    """
    counts, codes = patient_draws(groups, reps, rng)
    return counts[:, codes]


class PatientResampler:
    """One patient-level bootstrap draw per part, shared by every model and statistic (paired): the parts are drawn
    in their order from one seeded generator, so two audits of one request get the same resamples.

    Args:
        patients: Per part, the patients (integer codes or positions) that any of its samples belong to.
        reps: Replicates.
        seed: Seed.
    """

    def __init__(self, patients: Mapping[str, Sequence[int]], reps: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.reps = reps
        self.patients = {part: np.unique(np.asarray(list(p), dtype=int)) for part, p in patients.items()}
        self.counts = {part: patient_weights(p, reps, rng) for part, p in self.patients.items()}  # (B, P) each

    def weights(self, part: str, groups: Sequence[int]) -> np.ndarray:
        """``(B, N)`` weights of samples whose patients are ``groups`` (every one of them among the part's)."""
        groups = np.asarray(groups, dtype=int)
        index = np.searchsorted(self.patients[part], groups)
        if len(groups) and (index.max() >= len(self.patients[part]) or (self.patients[part][index] != groups).any()):
            raise ValueError(f"samples of patients outside the resampled {part} patients")
        return self.counts[part][:, index]


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B,)`` weighted means of ``values (N,)`` (NaN where the total weight is 0)."""
    values = np.asarray(values, dtype=float)
    total = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ values / np.where(total > 0, total, 1.0), np.nan)


def _comparisons(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``(n_pos, n_neg)``: 1 where the positive scores higher, 0.5 on ties, 0 otherwise."""
    pos, neg = np.asarray(pos, dtype=float)[:, None], np.asarray(neg, dtype=float)[None, :]
    return (pos > neg) + 0.5 * (pos == neg)


def weighted_auc(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """ROC-AUC of positives vs negatives under sample weights (Mann-Whitney with ties as 1/2).

    Args:
        pos, neg: Scores ``(P,)`` and ``(Q,)``.
        w_pos, w_neg: Weights ``(B, P)`` and ``(B, Q)`` (or 1-D for one weighting).

    Returns:
        ``(B,)`` AUCs (a scalar array for 1-D weights); NaN where a side has zero weight.
    """
    c = _comparisons(pos, neg)
    w_pos, w_neg = np.atleast_2d(w_pos), np.atleast_2d(w_neg)
    num = ((w_pos @ c) * w_neg).sum(1)
    den = w_pos.sum(1) * w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_macro_auc(probs: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC-AUC under sample weights: per class, the weighted AUC of its probability for that class
    vs the rest, averaged over the classes with positive and negative weight (absent classes skipped, as
    :func:`medforget.audit.utility.macro_auroc` does). ``probs (N, C)``, ``target (N,)``, ``weights (B, N)``."""
    probs, target = np.asarray(probs, dtype=float), np.asarray(target)
    weights = np.atleast_2d(weights)
    per_class = []
    for c in range(probs.shape[1]):
        positive = target == c
        if not positive.any() or positive.all():
            continue
        per_class.append(weighted_auc(probs[positive, c], probs[~positive, c], weights[:, positive],
                                      weights[:, ~positive]))
    if not per_class:
        return np.full(len(weights), np.nan)
    stacked = np.stack(per_class)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no class measurable) stay NaN
        return np.nanmean(stacked, axis=0)


def weighted_accuracy(correct: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted share of correct predictions, ``(B,)``; NaN for zero total weight."""
    weights = np.atleast_2d(weights)
    total = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * np.asarray(correct, dtype=float)).sum(1) / np.where(total > 0, total, 1),
                        np.nan)


def weighted_macro_f1(preds: np.ndarray, target: np.ndarray, num_classes: int, weights: np.ndarray) -> np.ndarray:
    """Macro F1 under sample weights over the labels present (weighted ``tp + fp + fn > 0``), as scikit-learn's
    ``f1_score(average="macro")`` on the resampled data."""
    preds, target = np.asarray(preds), np.asarray(target)
    weights = np.atleast_2d(weights)
    f1s, present = [], []
    for c in range(num_classes):
        tp = weights @ ((preds == c) & (target == c)).astype(float)
        fp = weights @ ((preds == c) & (target != c)).astype(float)
        fn = weights @ ((preds != c) & (target == c)).astype(float)
        denom = 2 * tp + fp + fn
        present.append(denom > 0)
        f1s.append(np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0))
    f1, mask = np.stack(f1s), np.stack(present)  # (C, B)
    n = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (f1 * mask).sum(0) / np.where(n > 0, n, 1), np.nan)


def classification_replicates(logits: np.ndarray, target: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """``{"auc", "f1", "accuracy"}`` replicates ``(B,)`` of logits ``(N, C)`` under weights ``(B, N)``."""
    logits = np.asarray(logits, dtype=float)
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    preds = probs.argmax(1)
    target = np.asarray(target).astype(int)
    return {
        "auc": weighted_macro_auc(probs, target, weights),
        "f1": weighted_macro_f1(preds, target, probs.shape[1], weights),
        "accuracy": weighted_accuracy(preds == target, weights),
    }


def patient_scores(scores: np.ndarray, groups: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Per-patient aggregate of per-study scores: ``(patient codes, aggregated scores)``, patients sorted by code.

    Args:
        scores: Per-study scores ``(N,)``.
        groups: Patient of each study ``(N,)``.
        how: ``mean`` or ``max`` of the patient's studies.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"patient aggregation must be 'mean' or 'max', got {how!r}")
    uniq, codes = np.unique(np.asarray(groups), return_inverse=True)
    scores = np.asarray(scores, dtype=float)
    if how == "mean":
        out = np.bincount(codes, weights=scores, minlength=len(uniq)) / np.bincount(codes, minlength=len(uniq))
    else:
        out = np.full(len(uniq), -np.inf)
        np.maximum.at(out, codes, scores)
    return uniq, out
