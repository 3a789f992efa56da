"""The classifier audit's criteria: gaps to the retrained model with paired patient-bootstrap intervals, decided
three ways as the shared criteria with operators (:mod:`medforget.audit.criteria`, :mod:`medforget.audit.verdict`).

Every criterion is a gap between the unlearned and the retrained model computed from per-sample outputs kept in
:class:`RunArtifacts`. Its interval comes from the same ``B`` patient resamples for every model of a run (paired):
forget patients for forget-set criteria, test patients for utility, the relearning attack's held-out forget patients
for relearning. With several runs (seeds) the per-run replicates are combined by resampling runs as well
(:func:`~medforget.audit.verdict.combine_runs`).

=========================  ======================================================  ==========  ==============
criterion                  gap                                                     sided       tolerance
=========================  ======================================================  ==========  ==============
``mia/<attack>``           patient-level attack AUC (forget vs test): u - r        two-sided   mia_auc_gap
``forget_accuracy``        forget accuracy (fused head): u - r                     two-sided   forget_accuracy_gap
``forget_auc``             forget macro AUC: u - r                                 two-sided   forget_auc_gap
``test_auc_drop``          test macro AUC: r - u                                   upper       test_auc_drop
``quantization/<scheme>``  forget accuracy recovered beyond what quantization       upper       quantization_recovery
                           does to the retrained model: ((q(u) - u) - (q(r) - r)) / (o - u)
``relearning``             forget accuracy after the relearning attack: u - r      upper       relearn_accuracy_gap
=========================  ======================================================  ==========  ==============

(u: unlearned, r: retrained, o: original, q: quantized.) Each forgetting criterion (attacks, forget accuracy and AUC,
relearning) is also computed for the original model in the unlearned model's place (its **power**): a criterion on
which the original is not shown to differ (FAIL, or at least a point estimate outside the tolerance) cannot tell
forgetting from not forgetting on this model; it is marked ``no power`` and does not count towards the verdict.
Utility lost and quantization recovery are not forgetting tests of the original (it loses no utility and has nothing
to recover), so they always count. With several runs of one request, the same gap between the
retrained models of different seeds is the criterion's **noise floor**: a gap within it is not a difference, so FAIL
needs the 95% interval outside the larger of the tolerance and the floor (:func:`medforget.audit.verdict.decide`).
With one run there is no floor, and the intervals hold the patients' noise only, not the retrained model's own seed
noise: audit several runs (seeds) of a request to fold it in. A criterion resting on a single patient (a 1-patient
request) is INCONCLUSIVE; the per-patient test judges such a request.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medforget.audit.bootstrap import PatientResampler, classification_replicates, patient_scores, weighted_auc
from medforget.audit.classifier.config import REFERENCE
from medforget.audit.criteria import Criterion, Gap
from medforget.audit.verdict import NA, combine_runs

MIN_CHANGE = 0.02  # a recovered fraction needs the original and the model to differ by this much (as robustness)


@dataclass
class RunArtifacts:
    """Per-sample outputs of one audit run, kept in memory for intervals and plots (no patient ID is kept; patients
    are integer codes).

    Attributes:
        scores: Per model and attack, the per-part membership scores.
        logits: Per model, fused-head logits ``(N, C)`` of the ``forget`` and ``test`` parts.
        labels: Labels of each part.
        groups: Patient code of each sample, per part.
        quantized: Per model and scheme, fused-head logits of the quantized model on ``forget``.
        relearned: Per model, fused-head logits on the relearning attack's held-out forget studies after the attack.
        relearn_labels: Labels of those studies.
        relearn_groups: Patient codes of those studies.
        request: The forget request this run audits (runs of one request share their patient resamples).
    """

    scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    logits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    quantized: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    relearned: dict[str, np.ndarray] = field(default_factory=dict)
    relearn_labels: np.ndarray | None = None
    relearn_groups: np.ndarray | None = None
    request: str = ""


Values = dict[str, Gap]  # quantity -> (estimate, (B,) replicates)


def resampler(art: RunArtifacts, reps: int, seed: int) -> PatientResampler:
    """The patient resamples of one run: forget, test and held-out (relearning) patients, drawn in that order from
    one seeded generator, so two runs of one request get the same resamples."""
    parts = {"forget": art.groups["forget"], "test": art.groups["test"]}
    if art.relearn_groups is not None:
        parts["held"] = art.relearn_groups
    return PatientResampler(parts, reps, seed)


def _with_point(weights: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> Gap:
    """``fn`` on unit weights (the estimate) and on every resample."""
    ones = np.ones((1, weights.shape[1]))
    return Gap(float(fn(ones)[0]), fn(weights))


def model_values(art: RunArtifacts, model: str, rs: PatientResampler) -> Values:
    """Every quantity the criteria need for one model, with its replicates (``rs``: :func:`resampler`)."""
    out: Values = {}
    forget, test = art.groups["forget"], art.groups["test"]
    wf, wt = rs.weights("forget", forget), rs.weights("test", test)
    for part, w in (("forget", wf), ("test", wt)):
        if model not in art.logits or part not in art.logits[model]:
            continue
        logits, labels = art.logits[model][part], art.labels[part]
        point = classification_replicates(logits, labels, np.ones((1, len(labels))))
        reps = classification_replicates(logits, labels, w)
        for metric in point:
            out[f"{part}_{metric}"] = Gap(float(point[metric][0]), reps[metric])
    for attack, parts in art.scores.get(model, {}).items():
        f, t = np.asarray(parts["forget"], dtype=float), np.asarray(parts["test"], dtype=float)
        out[f"mia_study/{attack}"] = _pair_auc(f, t, wf, wt)
        for how, key in (("mean", "mia"), ("max", "mia_max")):  # patients sorted, as the resampler's counts
            pf, pt = patient_scores(f, forget, how)[1], patient_scores(t, test, how)[1]
            out[f"{key}/{attack}"] = _pair_auc(pf, pt, rs.counts["forget"], rs.counts["test"])
    for scheme, logits in art.quantized.get(model, {}).items():
        out[f"quantized_forget_accuracy/{scheme}"] = _with_point(
            wf, lambda w, lg=logits: classification_replicates(lg, art.labels["forget"], w)["accuracy"])
    if model in art.relearned and "held" in rs.patients:
        wh = rs.weights("held", art.relearn_groups)
        logits = art.relearned[model]
        out["relearned_accuracy"] = _with_point(
            wh, lambda w: classification_replicates(logits, art.relearn_labels, w)["accuracy"])
    return out


def _pair_auc(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> Gap:
    return Gap(float(weighted_auc(pos, neg, np.ones(len(pos)), np.ones(len(neg)))[0]),
               weighted_auc(pos, neg, w_pos, w_neg))


# --- criterion definitions -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GapCriterion(Criterion):
    """A :class:`~medforget.audit.criteria.Criterion` with how its gap is computed from the model values (``u``,
    ``r``, ``o``) and which patients it rests on (``forget``, ``test`` or ``held``)."""

    gap: Callable[[Values, Values, Values | None], Gap | None] = field(kw_only=True)
    units: str = field(default="forget", kw_only=True)


def _diff(key: str, sign: float = 1.0):
    def gap(u: Values, r: Values, o: Values | None):
        if key not in u or key not in r:
            return None
        return Gap(sign * (u[key][0] - r[key][0]), sign * (u[key][1] - r[key][1]))

    return gap


def _recovered(scheme: str):
    def gap(u: Values, r: Values, o: Values | None):
        key = f"quantized_forget_accuracy/{scheme}"
        if o is None or key not in u or "forget_accuracy" not in o:
            return None
        q, base, orig = u[key], u["forget_accuracy"], o["forget_accuracy"]
        # what the same quantization does to the retrained model's forget accuracy: a perfect unlearner (the
        # retrained model itself) recovers nothing beyond it, whatever quantization noise does on a few patients
        own = (r[key][0] - r["forget_accuracy"][0], r[key][1] - r["forget_accuracy"][1]) \
            if key in r and "forget_accuracy" in r else (0.0, 0.0)

        def fraction(qv, bv, ov, rv):
            change = ov - bv
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(np.abs(change) >= MIN_CHANGE, (qv - bv - rv) / np.where(change == 0, 1, change),
                                np.nan)

        return Gap(float(fraction(q[0], base[0], orig[0], own[0])), fraction(q[1], base[1], orig[1], own[1]))

    return gap


def criteria_for(attacks: list[str], schemes: list[str], relearning: bool, tolerances: Any) -> list[GapCriterion]:
    """The criteria of an audit that ran ``attacks``, quantization ``schemes`` and (maybe) the relearning attack, with
    their tolerances (:class:`~medforget.audit.classifier.config.Tolerances`)."""
    t = tolerances
    out = [GapCriterion(f"mia/{a}", f"{a} AUC per patient (forget vs test): unlearned - retrained", t.mia_auc_gap,
                        gap=_diff(f"mia/{a}")) for a in attacks]
    out += [
        GapCriterion("forget_accuracy", "forget accuracy (fused head): unlearned - retrained", t.forget_accuracy_gap,
                     gap=_diff("forget_accuracy")),
        GapCriterion("forget_auc", "forget AUC (fused head): unlearned - retrained", t.forget_auc_gap,
                     gap=_diff("forget_auc")),
        GapCriterion("test_auc_drop", "test AUC (fused head) lost: retrained - unlearned", t.test_auc_drop, "upper",
                     power_applies=False, positive="utility lost", negative="utility gained",
                     gap=_diff("test_auc", -1.0), units="test"),
    ]
    out += [GapCriterion(f"quantization/{s}", f"share of the forgotten forget accuracy that {s} quantization recovers",
                         t.quantization_recovery, "upper", power_applies=False, gap=_recovered(s)) for s in schemes]
    if relearning:
        out.append(GapCriterion("relearning", "forget accuracy after the relearning attack: unlearned - retrained",
                                t.relearn_accuracy_gap, "upper", gap=_diff("relearned_accuracy"), units="held"))
    return out


def _units(art: RunArtifacts, which: str) -> int:
    groups = {"forget": art.groups.get("forget"), "test": art.groups.get("test"), "held": art.relearn_groups}[which]
    return int(len(np.unique(groups))) if groups is not None else 0


def evaluate_criteria(
    runs: list[RunArtifacts],
    tolerances: Any,
    reps: int,
    seed: int = 0,
    unlearned: str = "unlearned",
) -> list[dict[str, Any]]:
    """Decide every criterion over one or more runs.

    Args:
        runs: One :class:`RunArtifacts` per run; each needs ``unlearned`` and ``retrained`` outputs.
        tolerances: The :class:`~medforget.audit.classifier.audit.Tolerances`.
        reps: Bootstrap resamples (0: no intervals, every verdict ``n/a``).
        seed: Seed of the resamples (runs of one request share them, so their gaps pair).
        unlearned: The model judged (``unlearned``; ``original`` judges the original, as the power check does).

    Returns:
        One dict per criterion: ``criterion``, ``description``, the :func:`~medforget.audit.verdict.decide`
        fields, ``power`` (the original's decision, when an original was audited), ``has_power``, ``counted``,
        ``noise_floor`` (mean ``|gap|`` between retrained models of different runs of one request; ``None`` with one
        run) and ``runs``.
    """
    usable = [a for a in runs if unlearned in a.logits and REFERENCE in a.logits]
    if not usable or reps <= 0:
        return []
    values = [{m: model_values(a, m, resampler(a, reps, seed)) for m in a.logits} for a in usable]
    first = usable[0]
    attacks = sorted(set.intersection(*[set(a.scores.get(unlearned, {})) for a in usable]))
    schemes = sorted(set.intersection(*[set(a.quantized.get(unlearned, {})) for a in usable]))
    relearning = all(unlearned in a.relearned for a in usable)
    out = []
    for crit in criteria_for(attacks, schemes, relearning, tolerances):
        units = _units(first, crit.units)
        unit = {"test": "test patients", "held": "held-out forget patients"}.get(crit.units, "forget patients")
        floor = _noise_floor(crit, usable, values)

        def judged(model: str, crit: GapCriterion = crit, units: int = units, unit: str = unit,
                   floor: float | None = floor) -> dict[str, Any] | None:
            gaps = [crit.gap(v[model], v[REFERENCE], v.get("original")) for v in values if model in v]
            if len(gaps) != len(values) or any(g is None for g in gaps):
                return None
            return crit.decide(Gap(*combine_runs([g[0] for g in gaps], [g[1] for g in gaps], seed)), units, unit,
                               floor)

        decision = judged(unlearned)
        if decision is None:
            continue
        entry = {"criterion": crit.name, "description": crit.description, **decision, "runs": len(usable),
                 "direction": _direction(crit, decision)}
        power = judged("original") if unlearned != "original" and crit.power_applies else None
        if power is not None:
            entry["power"] = {k: power[k] for k in ("verdict", "estimate", "ci95")}
            entry["has_power"] = crit.shows_difference(power)
        else:
            entry["power"], entry["has_power"] = None, None
        entry["counted"] = entry["has_power"] is not False and decision["verdict"] != NA
        entry["noise_floor"] = floor
        out.append(entry)
    return out


def _direction(crit: GapCriterion, decision: dict[str, Any]) -> str:
    """Which way the model is off: the direction of a gap whose 95% interval excludes 0 (else ``""``)."""
    lo, hi = decision["ci95"]
    if math.isnan(lo) or lo <= 0 <= hi:
        return ""
    return crit.positive if lo > 0 else crit.negative


def _noise_floor(crit: GapCriterion, runs: list[RunArtifacts], values: list[dict[str, Values]]) -> float | None:
    """Mean ``|gap|`` of the criterion between the retrained models of two runs of the same request."""
    gaps = []
    for i, j in itertools.permutations(range(len(runs)), 2):
        if i > j or runs[i].request != runs[j].request:
            continue
        g = crit.gap(values[i][REFERENCE], values[j][REFERENCE], values[j].get("original"))
        if g is not None and not math.isnan(g[0]):
            gaps.append(abs(g[0]))
    return float(np.mean(gaps)) if gaps else None
