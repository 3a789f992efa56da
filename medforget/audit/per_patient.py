"""The per-patient forgetting test: the certificate a hospital files for each request.

For every forget patient: is the audited model's behaviour on this patient's studies consistent with a patient it
never saw?

1. Each study gets the offline LiRA statistic (:class:`~medforget.audit.classifier.mia.lira.LiRAAttack`, pooled
   variance):
   the audited model's logit-scaled confidence ``phi`` standardised by the K reference models that never trained on
   the study, ``(phi - mu_out) / sigma_out``. The reference models remove each study's own difficulty, which is what
   gives the test its power.
2. A patient's statistic is the mean over its studies.
3. The null distribution is the same statistic on patients that the audited model certainly never saw and that no
   reference model saw either: the val and test patients. For a model that never trained on the forget patients (a
   retrained model) forget, val and test patients are exchangeable, so the p-value of patient ``i``,
   ``(1 + #{null >= s_i}) / (1 + n_null)``, is exactly uniform (a permutation test; no Gaussian assumption). For a
   model that memorised the patient, ``s_i`` sits in the null's upper tail and ``p_i`` is small.
4. The request's combined test: the mean statistic of the forget patients against the means of random sets of as
   many patients drawn from forget + null patients together (a permutation test of the same exchangeability).

Patients are listed by salted hash only. A patient *passes* when ``p >= alpha`` (no evidence that the model still
knows it); a small ``p`` is evidence of membership, a large one is not proof of absence: read it with the power that
the same test has on the original model (reported beside it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medforget.audit.bootstrap import patient_scores


def per_patient_test(
    forget_scores: np.ndarray,
    forget_groups: np.ndarray,
    null_scores: np.ndarray,
    null_groups: np.ndarray,
    permutations: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
    name: Callable[[Any], str] | None = None,
) -> dict[str, Any]:
    """Per-patient p-values and the combined test of a request.

    Args:
        forget_scores: Per-study statistic of the forget studies (higher = more member-like).
        forget_groups: Patient of each forget study.
        null_scores: Per-study statistic of studies of never-seen patients (val + test).
        null_groups: Patient of each null study (distinct from the forget patients).
        permutations: Random patient sets of the combined permutation test.
        alpha: Level below which a patient's p-value is evidence of membership.
        seed: Seed of the permutations.
        name: How to list a patient (a salted hash); default: its position.

    Returns:
        ``patients`` (one row each: ``patient``, ``studies``, ``statistic``, ``p_value``, ``passed``),
        ``combined_p``, ``pass_share``, ``alpha``, ``null_patients``, ``forget_patients`` and ``mean_statistic``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    forget_ids, forget_stat = patient_scores(forget_scores, forget_groups)
    _, null_stat = patient_scores(null_scores, null_groups)
    if len(null_stat) < 1 or len(forget_stat) < 1:
        raise ValueError("the per-patient test needs forget patients and never-seen (val/test) patients")
    studies = np.bincount(np.unique(np.asarray(forget_groups), return_inverse=True)[1].reshape(-1))
    null_sorted = np.sort(null_stat)
    at_least = len(null_sorted) - np.searchsorted(null_sorted, forget_stat, side="left")  # #{null >= s_i}
    p_values = (1.0 + at_least) / (1.0 + len(null_sorted))
    observed = float(forget_stat.mean())
    pooled = np.concatenate([forget_stat, null_stat])
    rng = np.random.default_rng(seed)
    k = len(forget_stat)
    exceed = 0
    for start in range(0, permutations, 2000):  # chunks of random k-subsets of the pooled patients
        chunk = min(2000, permutations - start)
        subsets = np.argsort(rng.random((chunk, len(pooled))), axis=1)[:, :k]
        exceed += int((pooled[subsets].mean(1) >= observed - 1e-12).sum())
    combined = (1.0 + exceed) / (1.0 + permutations)
    label = name or (lambda i: str(i))
    rows = [{"patient": label(pid), "studies": int(n), "statistic": float(s), "p_value": float(p),
             "passed": bool(p >= alpha)}
            for pid, n, s, p in zip(forget_ids, studies, forget_stat, p_values, strict=True)]
    rows.sort(key=lambda r: r["patient"])
    return {
        "patients": rows,
        "combined_p": float(combined),
        "pass_share": float(np.mean(p_values >= alpha)),
        "alpha": alpha,
        "forget_patients": k,
        "null_patients": int(len(null_stat)),
        "mean_statistic": observed,
        "smallest_p": float(1.0 / (1.0 + len(null_stat))),
    }
