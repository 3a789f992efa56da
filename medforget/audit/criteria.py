"""Criteria with operators, shared by both audits.

A criterion compares one measured gap (a :class:`Gap`: the estimate on the whole request and its paired
patient-bootstrap replicates) with a tolerance through an operator: ``|x| <= tolerance`` (``two-sided``) or
``x <= tolerance`` (``upper``; smaller is always fine). :meth:`Criterion.decide` turns it into PASS / INCONCLUSIVE /
FAIL with :func:`medforget.audit.verdict.decide`. A criterion may be decided on a transformed scale and shown on
another (``display``: e.g. ``-log10 p`` decided, ``p`` shown against ``p > tolerance``), which is why its operator as
shown (``comparison``) can differ from the one decided.

**Power.** A forgetting criterion is also decided with the original model in the unlearned model's place: one on
which the original is not shown to differ from the reference (no FAIL, and not even an estimate outside the
tolerance, :meth:`Criterion.shows_difference`) cannot tell forgetting from not forgetting on this model, and does not
count towards the verdict (:func:`counted_verdict`). Do-no-harm criteria (utility) have the original as their
baseline: power does not apply to them (``power_applies=False``).

**Direction.** A signed gap to the reference model reads ``under-unlearned`` (the model still behaves as if it had
seen the forget patients) or ``over-unlearned`` (it treats them as less likely than never-seen patients), in the
words a criterion sets (``positive`` / ``negative``).

Each audit keeps its own record of a decided criterion (the keys of its report); what it shares is this: the gap,
the operator, the decision, the power and the overall verdict over the counted criteria.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from medforget.audit.verdict import FAIL, NA, Sided, decide, interval, overall

UNDER, OVER, SAME = "under-unlearned", "over-unlearned", "indistinguishable"
NO_POWER = "no power on this model"
OPERATORS = {"two-sided": "|x| <=", "upper": "<="}


class Gap(NamedTuple):
    """One measured quantity of one model: its estimate on the whole request and its paired bootstrap replicates
    (``None``: no interval)."""

    estimate: float
    replicates: np.ndarray | None = None

    @property
    def ci95(self) -> list[float]:
        return interval(self.replicates, 0.95) if self.replicates is not None else [math.nan, math.nan]


@dataclass(frozen=True)
class Criterion:
    """How one criterion is judged.

    Attributes:
        name, description: Shown in the reports.
        tolerance: On the decision scale (> 0).
        sided: ``two-sided`` (``|x| <= tolerance``) or ``upper`` (``x <= tolerance``); see
            :func:`medforget.audit.verdict.decide`.
        power_applies: ``False`` for do-no-harm criteria (utility) whose baseline the original is.
        display: Decision scale -> displayed value (monotone), e.g. ``-log10 p -> p``; ``None``: the same.
        shown_tolerance: The tolerance as displayed (``None``: ``tolerance``).
        comparison: The operator as displayed (``""``: the decided one, :data:`OPERATORS`).
        positive, negative: Direction words of a positive / negative signed gap.
    """

    name: str
    description: str
    tolerance: float
    sided: Sided = "two-sided"
    power_applies: bool = True
    display: Callable[[float], float] | None = None
    shown_tolerance: float | None = None
    comparison: str = ""
    positive: str = UNDER
    negative: str = OVER

    @property
    def operator(self) -> str:
        """The comparison with the tolerance, as shown (``|x| <=``, ``<=``, ``p >``, ...)."""
        return self.comparison or OPERATORS[self.sided]

    def decide(self, gap: Gap | None, units: int | None = None, unit: str = "forget patients",
               floor: float | None = None) -> dict[str, Any]:
        """The three-way decision of ``gap`` (unmeasured: ``n/a``) against the tolerance (and, for FAIL, the noise
        ``floor`` when it is larger; :func:`medforget.audit.verdict.decide`)."""
        gap = gap if gap is not None else Gap(math.nan)
        return decide(gap.estimate, gap.replicates, self.tolerance, self.sided, units=units, unit=unit, floor=floor)

    def outside(self, estimate: float) -> bool:
        """Whether a point estimate lies outside the tolerance (NaN: no)."""
        return bool(abs(estimate) > self.tolerance) if self.sided == "two-sided" else bool(estimate > self.tolerance)

    def shows_difference(self, decision: dict[str, Any]) -> bool:
        """Power: whether the original model's ``decision`` shows the criterion can detect an un-unlearned model (it
        FAILs, or at least its estimate lies outside the tolerance)."""
        return decision["verdict"] == FAIL or self.outside(decision["estimate"])

    def shown(self, value: float) -> float:
        """A value on the decision scale as displayed."""
        if value is None or math.isnan(value):
            return math.nan
        return float(self.display(value)) if self.display else float(value)

    def shown_interval(self, ci: Sequence[float]) -> list[float]:
        """An interval on the decision scale as displayed (ends sorted)."""
        ends = [self.shown(c) for c in ci]
        return sorted(ends) if not any(math.isnan(e) for e in ends) else [math.nan, math.nan]


def direction(estimate: float, ci95: Sequence[float] | None, positive: str = UNDER, negative: str = OVER) -> str:
    """Which way a signed gap to the reference model points: ``positive`` above 0, ``negative`` below, or
    ``indistinguishable`` when its 95% interval holds 0 (or ``n/a`` when unmeasured)."""
    if estimate is None or math.isnan(estimate):
        return NA
    if ci95 is not None and len(ci95) == 2 and not any(math.isnan(c) for c in ci95) and ci95[0] <= 0 <= ci95[1]:
        return SAME
    if estimate == 0:
        return SAME
    return positive if estimate > 0 else negative


def direction_text(label: str, estimate: float, ci95: Sequence[float] | None, digits: int = 3) -> str:
    """``under-unlearned: +0.240 [+0.100, +0.380]`` style text."""
    if label == NA:
        return NA
    ci = ""
    if ci95 is not None and len(ci95) == 2 and not any(math.isnan(c) for c in ci95):
        ci = f" [{ci95[0]:+.{digits}f}, {ci95[1]:+.{digits}f}]"
    return f"{label}: {estimate:+.{digits}f}{ci}"


def counted_verdict(checks: Sequence[dict[str, Any]], has_power: Callable[[dict[str, Any]], bool | None]
                    ) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The overall verdict over the criteria that count (``counted``), the counted criteria, and the names of those
    without power (``has_power(record) is False``)."""
    counted = [c for c in checks if c.get("counted")]
    without = [c["criterion"] for c in checks if has_power(c) is False]
    return overall([c["verdict"] for c in counted]), counted, without
