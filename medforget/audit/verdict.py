"""Three-way verdicts decided on intervals, never on point estimates.

A gap between the unlearned and the retrained model measured on a handful of patients is noisy, so each criterion is
judged on its bootstrap interval (see ``shared/design/EVALUATION.md``):

- **PASS**: equivalence shown. Two-sided criteria (``|gap| <= tolerance``): the 90% interval lies inside
  ``[-tolerance, +tolerance]`` (two one-sided tests at alpha = 0.05, TOST). One-sided criteria (``gap <= tolerance``,
  e.g. utility lost): the 90% interval's upper end (a one-sided 95% bound) is at most ``tolerance``.
- **FAIL**: a difference shown: the 95% interval lies wholly outside the tolerance band.
- **INCONCLUSIVE**: otherwise. The request cannot tell; the decision records the smallest gap it can resolve (the
  half-width of the 95% interval) and roughly how many units (forget patients, or audit seeds) would decide it, from
  the usual ``1 / sqrt(n)`` shrinkage of the interval with the estimate held fixed.

Two rules keep a verdict from resting on noise the interval does not hold:

- **One unit decides nothing.** An interval over fewer than :data:`MIN_UNITS` resampled units (a single forget
  patient) cannot vary them: it shows only the other side's noise (e.g. the test patients of an attack AUC), or none
  at all (``[0.2, 0.2]``). Such a criterion is INCONCLUSIVE whatever its interval; a single patient is judged by the
  per-patient test, not by a group interval.
- **A difference smaller than the noise floor is not a difference.** Given the retrain-vs-retrain noise floor of a
  criterion (the same gap between retrained models of different seeds), FAIL needs the 95% interval wholly outside
  ``±max(tolerance, floor)`` (one-sided: above it). PASS is unchanged: equivalence is always shown within the
  tolerance.

The overall verdict is FAIL if any counted criterion FAILs, PASS if all PASS, otherwise INCONCLUSIVE.

With several runs (seeds) the replicates of each run are combined by resampling the runs too
(:func:`combine_runs`): each combined replicate averages the per-run replicates of a bootstrap draw of runs, so the
interval carries both the patient and the seed variability; interval endpoints are never averaged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

PASS, INCONCLUSIVE, FAIL, NA = "pass", "inconclusive", "fail", "n/a"
VERDICTS = (PASS, INCONCLUSIVE, FAIL, NA)
Sided = Literal["two-sided", "upper"]
MIN_REPLICATES = 2000
MIN_UNITS = 2  # resampled units (forget patients) an interval needs before it can decide anything


def interval(replicates: np.ndarray, level: float) -> list[float]:
    """Percentile interval of ``level`` (e.g. 0.95) of bootstrap ``replicates`` (NaN replicates left out)."""
    x = np.asarray(replicates, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return [math.nan, math.nan]
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(x, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def decide(
    estimate: float,
    replicates: np.ndarray | None,
    tolerance: float,
    sided: Sided = "two-sided",
    units: int | None = None,
    unit: str = "forget patients",
    floor: float | None = None,
) -> dict[str, Any]:
    """The three-way decision of one criterion.

    Args:
        estimate: The gap measured on the whole request (unlearned - retrained, or the criterion's own value).
        replicates: Bootstrap replicates of the same gap (paired over models); ``None`` or empty: no interval, the
            verdict is ``n/a`` (a gap without an interval is not judged).
        tolerance: The tolerance (> 0).
        sided: ``two-sided`` (``|gap| <= tolerance``) or ``upper`` (``gap <= tolerance``; smaller is always fine).
        units: How many independent units the interval rests on (forget patients, or seeds), for the sample size a
            conclusive answer would need.
        unit: What the units are, for the message.
        floor: The criterion's retrain-vs-retrain noise floor on the decision scale (``None`` or NaN: not measured,
            one run). FAIL needs the 95% interval outside ``max(tolerance, floor)``.

    Returns:
        ``verdict``, ``estimate``, ``ci90``, ``ci95``, ``tolerance``, ``sided``, ``resolvable_gap`` (half-width of the
        95% interval), ``units``, ``units_needed`` (for an INCONCLUSIVE result; ``None`` when it cannot be estimated),
        ``fail_band`` (the band FAIL must lie outside: the tolerance or the larger noise floor) and a one-line
        ``reason``.
    """
    if not tolerance > 0:
        raise ValueError(f"a tolerance must be > 0, got {tolerance}")
    if sided not in ("two-sided", "upper"):
        raise ValueError(f"sided must be 'two-sided' or 'upper', got {sided!r}")
    out: dict[str, Any] = {"verdict": NA, "estimate": float(estimate), "ci90": [math.nan, math.nan],
                           "ci95": [math.nan, math.nan], "tolerance": float(tolerance), "sided": sided,
                           "resolvable_gap": math.nan, "units": units, "unit": unit, "units_needed": None,
                           "fail_band": float(tolerance), "reason": "no interval"}
    if replicates is None or len(replicates) == 0 or math.isnan(estimate):
        out["reason"] = "not measurable on this request" if math.isnan(estimate) else "no interval"
        return out
    ci90, ci95 = interval(replicates, 0.90), interval(replicates, 0.95)
    if math.isnan(ci90[0]):
        out["reason"] = "every bootstrap replicate undefined"
        return out
    out.update(ci90=ci90, ci95=ci95, resolvable_gap=(ci95[1] - ci95[0]) / 2.0)
    if units is not None and units < MIN_UNITS:
        what = f"{units} {unit[:-1] if units == 1 and unit.endswith('s') else unit}"
        out.update(verdict=INCONCLUSIVE, reason=f"{what} only: a bootstrap over it cannot resample it, so the interval "
                                                f"shows neither equivalence nor a difference (>= {MIN_UNITS} needed)")
        return out
    tol = tolerance
    band = max(tol, float(floor)) if floor is not None and not math.isnan(floor) else tol
    out["fail_band"] = band
    if sided == "two-sided":
        passed = -tol <= ci90[0] and ci90[1] <= tol
        failed = ci95[0] > band or ci95[1] < -band
        beyond_tol = ci95[0] > tol or ci95[1] < -tol
        margin_pass = tol - abs(estimate)  # room left for the interval's half-width
        half90 = max(estimate - ci90[0], ci90[1] - estimate)
        half95_to_band = (estimate - ci95[0]) if estimate > 0 else (ci95[1] - estimate)
        excess = abs(estimate) - band
    else:
        passed = ci90[1] <= tol
        failed = ci95[0] > band
        beyond_tol = ci95[0] > tol
        margin_pass = tol - estimate
        half90 = ci90[1] - estimate
        half95_to_band = estimate - ci95[0]
        excess = estimate - band
    if passed:
        out.update(verdict=PASS, reason=f"90% interval within the tolerance {tol:g}")
    elif failed:
        out.update(verdict=FAIL, reason=f"95% interval wholly outside the tolerance {tol:g}" + (
            f" and the noise floor {band:.3f}" if band > tol else ""))
    elif beyond_tol:
        out.update(verdict=INCONCLUSIVE, reason=f"95% interval outside the tolerance {tol:g} but not beyond the "
                                                f"retrain-vs-retrain noise floor {band:.3f}: not shown to differ "
                                                f"more than retrained models differ from each other")
    else:
        out["verdict"] = INCONCLUSIVE
        needed = None
        if units:
            if margin_pass > 0 and half90 > 0:
                needed = math.ceil(units * (half90 / margin_pass) ** 2)
            elif excess > 0 and half95_to_band > 0:
                needed = math.ceil(units * (half95_to_band / excess) ** 2)
        out["units_needed"] = needed
        what = f"; about {needed} {unit} would decide it" if needed else ""
        out["reason"] = f"the interval straddles the tolerance {tol:g}: this request resolves gaps of about " \
                        f"±{out['resolvable_gap']:.3f}{what}"
    return out


def overall(verdicts: Sequence[str]) -> str:
    """FAIL if any FAILs, PASS if all PASS, ``n/a`` if none was judged, else INCONCLUSIVE (``n/a`` entries, criteria
    that could not be measured, make a PASS impossible but not a FAIL)."""
    judged = [v for v in verdicts if v != NA]
    if not judged:
        return NA
    if FAIL in judged:
        return FAIL
    if all(v == PASS for v in verdicts):
        return PASS
    return INCONCLUSIVE


def combine_runs(estimates: Sequence[float], replicates: Sequence[np.ndarray], seed: int = 0
                 ) -> tuple[float, np.ndarray]:
    """Combine one gap measured in several runs (seeds): the estimate is the mean over runs; each combined replicate
    is the mean of the per-run replicates of a bootstrap draw (with replacement) of the runs, so the interval holds
    the seed-to-seed variability as well as the patients'. One run: returned unchanged."""
    estimates = [float(e) for e in estimates]
    reps = [np.asarray(r, dtype=float) for r in replicates]
    if len(estimates) != len(reps) or not reps:
        raise ValueError("combine_runs needs one replicate array per run estimate")
    if len(reps) == 1:
        return estimates[0], reps[0]
    n = min(len(r) for r in reps)
    stacked = np.stack([r[:n] for r in reps])  # (runs, B)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(reps), size=(n, len(reps)))  # (B, runs): which runs each replicate averages
    with warnings.catch_warnings():  # a draw whose runs are all undefined (NaN) stays NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        combined = np.nanmean(stacked[draws, np.arange(n)[:, None]], axis=1)
        return float(np.nanmean(estimates)), combined


def counts(verdicts: Sequence[str]) -> dict[str, int]:
    """How many of each verdict."""
    return {v: sum(1 for x in verdicts if x == v) for v in VERDICTS}
