"""The language-model audit's decisions: every criterion on a paired patient-bootstrap interval, its power on the
original model, and which way a model is off.

The criteria with their operators, the gap, the power test and the direction words are the ones both audits share
(:mod:`medforget.audit.criteria`; :class:`CriterionSpec` is its :class:`~medforget.audit.criteria.Criterion`); this
module keeps the language model's record of a decided criterion (:func:`judge`), its verdict summary
(:func:`lm_verdict`), the headline-attack choice and the LM-only bootstrap statistics.

**Intervals.** One draw of patients per part (forget, retain, holdout;
:class:`~medforget.audit.bootstrap.PatientResampler`, >= 2,000 replicates by default) is shared by every model and
every criterion, so the gaps between models are resampled together (paired) and each replicate is computed with the
vectorised weighted statistics of :mod:`medforget.audit.bootstrap`:

- **privleak** (MUSE's convention, :func:`medforget.audit.lm.privleak`): weighted Mann-Whitney AUCs of the
  forget texts (members) vs the holdout texts, forget *and* holdout patients resampled;
- **extraction**: the share of resampled forget patients whose MRN or date of birth greedy generation emits;
- **model utility**: TOFU's harmonic mean of the weighted means of answer probability, ROUGE-L and truth-ratio score
  over resampled retain patients' questions, as a ratio to the retain-only model's (decided as the utility lost,
  ``1 - ratio``, one-sided);
- **forget quality** has no natural bootstrap (it is itself a test's p-value): its interval is that of the KS-test
  p-value over resampled forget patients (the same patients' questions for the unlearned and the retain-only model),
  i.e. how much the p-value depends on which patients were asked. It is decided on ``-log10 p`` against
  ``-log10(tolerance)`` (one-sided): PASS when the 5th percentile of the p-value is above the tolerance, FAIL when its
  97.5th percentile is below. The KS p-value of a fixed-size sample is a monotone function of the KS distance, so this
  is equally a decision on the distance;
- **time** is a single measurement without an interval: reported, never judged (``n/a``).

**Power** (issue 19). Each criterion is also measured for the original model against the retain-only model. A
criterion the original does not FAIL, and whose estimate for the original is not even outside the tolerance, cannot
detect an un-unlearned model: it is marked *no power on this model* and left out of the overall verdict, which says
how many criteria had power. Utility is a do-no-harm criterion whose baseline the original is: power does not apply
and it always counts. The privacy headline is the attack with the most power on the original (the 95% interval of its
privleak farthest from 0), chosen on the original and the retain-only model only, never on the unlearned one; MUSE's
own headline (Min-K%, ``k = 0.4``) and every other attack are reported beside it.

**Direction.** Every gap to the retain-only model is signed: ``under-unlearned`` (the model still behaves as if it had
seen the forget patients), ``over-unlearned`` (it treats them as less likely than never-seen patients: the
"Streisand effect", itself a leak), or ``indistinguishable`` when the 95% interval holds 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medforget.audit.bootstrap import PatientResampler
from medforget.audit.criteria import (
    NO_POWER,
    OVER,
    SAME,
    UNDER,
    Criterion,
    Gap,
    counted_verdict,
    direction,
    direction_text,
)
from medforget.audit.lm.config import REFERENCE
from medforget.audit.verdict import FAIL, NA, PASS

__all__ = [
    "NO_POWER", "OVER", "REFERENCE", "SAME", "UNDER", "CriterionSpec", "Gap", "PatientResampler", "choose_headline",
    "direction", "direction_text", "harmonic_mean_rows", "has_power", "judge", "ks_pvalue_replicates", "lm_verdict",
]

CriterionSpec = Criterion  # the LM criteria are the shared criteria with operators


def harmonic_mean_rows(*columns: np.ndarray) -> np.ndarray:
    """Element-wise harmonic mean of equally shaped arrays (0 where one is 0, NaN where one is NaN or negative), as
    :func:`medforget.audit.lm.harmonic_mean`."""
    stacked = np.stack([np.asarray(c, dtype=float) for c in columns])  # (K, B)
    bad = np.isnan(stacked).any(0) | (stacked < 0).any(0)
    zero = (stacked == 0).any(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = len(columns) / (1.0 / np.where(stacked > 0, stacked, 1.0)).sum(0)
    return np.where(bad, np.nan, np.where(zero, 0.0, h))


def ks_pvalue_replicates(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """KS-test p-values (``scipy.stats.ks_2samp``) of paired samples ``a`` and ``b`` (the same ``N`` questions under
    two models) under integer bootstrap ``weights (B, N)``: each replicate tests ``a`` and ``b`` with every question
    repeated as often as its patient was drawn. The distances are computed vectorised; the p-value of each distinct
    (distance, size) once."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    weights = np.asarray(weights)
    if len(a) == 0:
        return np.full(len(weights), np.nan)
    grid = np.unique(np.r_[a, b])  # (X,)
    below_a = (a[:, None] <= grid[None, :]).astype(float)  # (N, X)
    below_b = (b[:, None] <= grid[None, :]).astype(float)
    n = weights.sum(1)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.abs(weights @ below_a - weights @ below_b).max(1) / n  # (B,)
    out = np.full(len(weights), np.nan)
    cache: dict[tuple[float, int], float] = {}
    for i in range(len(weights)):
        if n[i] <= 0:
            continue
        key = (round(float(distance[i]), 12), int(n[i]))
        if key not in cache:
            w = weights[i].astype(int)
            cache[key] = float(ks_2samp(np.repeat(a, w), np.repeat(b, w)).pvalue)
        out[i] = cache[key]
    return out


# --- decisions -----------------------------------------------------------------------------------------------------
def has_power(spec: CriterionSpec, decision: dict[str, Any]) -> bool | None:
    """Whether the original model's decision shows the criterion can detect an un-unlearned model: it FAILs, or at
    least its estimate lies outside the tolerance. ``None`` where power does not apply or was not measured."""
    if not spec.power_applies or decision["verdict"] == NA:
        return None
    return spec.shows_difference(decision)


def judge(spec: CriterionSpec, gap: Gap | None, original: Gap | None, signed: Gap | None = None,
          units: int | None = None) -> dict[str, Any]:
    """One criterion: the unlearned model's three-way decision on ``gap``, the original's decision on ``original``
    (its power), and the direction of the signed gap ``signed`` (default: ``gap``)."""
    gap = gap if gap is not None else Gap(math.nan)
    decision = spec.decide(gap, units)
    signed = signed if signed is not None else gap
    label = direction(signed.estimate, signed.ci95, spec.positive, spec.negative)
    out: dict[str, Any] = {
        "criterion": spec.name, "description": spec.description,
        "value": spec.shown(gap.estimate), "ci90": spec.shown_interval(decision["ci90"]),
        "ci95": spec.shown_interval(decision["ci95"]), "comparison": spec.operator,
        "tolerance": spec.shown_tolerance if spec.shown_tolerance is not None else spec.tolerance,
        "verdict": decision["verdict"], "passed": {PASS: True, FAIL: False}.get(decision["verdict"]),
        "reason": decision["reason"], "resolvable_gap": decision["resolvable_gap"],
        "units": decision["units"], "units_needed": decision["units_needed"],
        "decision": {k: decision[k] for k in ("estimate", "ci90", "ci95", "tolerance", "sided")},
        "direction": label, "direction_text": direction_text(label, signed.estimate, signed.ci95),
    }
    power: dict[str, Any] = {"applies": spec.power_applies, "has_power": None}
    if spec.power_applies and original is not None:
        od = spec.decide(original, units)
        power.update(has_power=has_power(spec, od), original_value=spec.shown(original.estimate),
                     original_ci95=spec.shown_interval(od["ci95"]), original_verdict=od["verdict"])
    power["label"] = ("n/a (do-no-harm criterion: the original is its baseline)" if not spec.power_applies else
                      "not measured (no original model or no interval)" if power["has_power"] is None else
                      "yes" if power["has_power"] else NO_POWER)
    out["power"] = power
    out["counted"] = power["has_power"] is not False  # an unmeasurable (n/a) criterion counts: no PASS without it
    return out


def lm_verdict(criteria: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The overall verdict over the criteria that count (power, and an interval), and how many had power."""
    verdict, counted, without = counted_verdict(criteria, lambda c: c.get("power", {}).get("has_power"))
    powered = sum(1 for c in criteria if c.get("power", {}).get("has_power"))
    applicable = sum(1 for c in criteria if c.get("power", {}).get("applies"))
    summary = (f"{verdict.upper()}: {powered} of {applicable} forgetting criteria had power on the original model"
               + (f" ({', '.join(without)}: {NO_POWER}, not counted)" if without else "")
               + f"; {len(counted)} criteria decided the verdict")
    return {"verdict": verdict, "summary": summary, "counted": [c["criterion"] for c in counted],
            "without_power": without, "with_power": powered, "power_applicable": applicable}


def choose_headline(original_privleak: Mapping[str, Gap], tolerance: float, fallback: str,
                    forced: str | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """The privacy headline: the attack with the most power on the original model (its privleak against the
    retain-only model FAILs or lies outside ``±tolerance``; among those, the one whose 95% interval lies farthest
    from 0, then the largest ``|privleak|``). Uses only the original and the retain-only model. ``fallback`` (MUSE's
    Min-K%) when no attack has power; ``forced`` overrides the choice (still reported with its power).

    Returns:
        The attack, and per attack the original's decision, power and strength.
    """
    spec = CriterionSpec("privleak", "", tolerance)
    table: dict[str, dict[str, Any]] = {}
    for attack, gap in original_privleak.items():
        d = spec.decide(gap)
        lo, hi = d["ci95"]
        strength = 0.0 if any(math.isnan(x) for x in (lo, hi)) or lo <= 0 <= hi else min(abs(lo), abs(hi))
        table[attack] = {"original_privleak": gap.estimate, "original_ci95": d["ci95"],
                         "original_verdict": d["verdict"], "has_power": has_power(spec, d), "strength": strength}
    powered = [a for a, t in table.items() if t["has_power"]]
    if forced is not None:
        choice = forced
    elif powered:
        choice = max(powered, key=lambda a: (table[a]["strength"], abs(table[a]["original_privleak"])))
    else:
        choice = fallback if fallback in table else next(iter(table), fallback)
    return choice, table
