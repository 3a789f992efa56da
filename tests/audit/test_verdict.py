"""The three-way verdict on constructed intervals, and the run combination."""

import math

import numpy as np
import pytest

from medforget.audit.verdict import FAIL, INCONCLUSIVE, NA, PASS, combine_runs, decide, interval, overall


def replicates(center: float, half: float, n: int = 4001) -> np.ndarray:
    """Replicates spread evenly over [center - half, center + half]: the 90% interval is +-0.9 half, 95% +-0.95."""
    return np.linspace(center - half, center + half, n)


@pytest.mark.parametrize(
    ("center", "half", "expected"),
    [
        (0.0, 0.04, PASS),  # 90% interval [-0.036, 0.036] inside +-0.05
        (0.02, 0.03, PASS),  # [-0.007, 0.047]
        (0.0, 0.2, INCONCLUSIVE),  # straddles both ends
        (0.04, 0.05, INCONCLUSIVE),  # upper end 0.085 outside, lower end -0.0075 inside
        (0.2, 0.1, FAIL),  # 95% interval [0.105, 0.295] wholly above 0.05
        (-0.2, 0.1, FAIL),  # wholly below -0.05
        (0.1, 0.06, INCONCLUSIVE),  # 95% lower end 0.043 reaches into the band
    ],
)
def test_two_sided_verdict_on_constructed_intervals(center, half, expected):
    d = decide(center, replicates(center, half), 0.05, units=10)
    assert d["verdict"] == expected
    assert d["ci90"][0] == pytest.approx(center - 0.9 * half, abs=1e-3)
    assert d["ci95"][1] == pytest.approx(center + 0.95 * half, abs=1e-3)


def test_fail_needs_the_whole_95_interval_outside_and_pass_the_whole_90_inside():
    # 90% inside but the 95% interval crosses: PASS (TOST at alpha 0.05 uses the 90% interval)
    d = decide(0.0, replicates(0.0, 0.0535), 0.05)
    assert d["ci90"][1] < 0.05 < d["ci95"][1] and d["verdict"] == PASS
    # 95% lower end just inside the band: not FAIL
    d = decide(0.2, replicates(0.2, 0.16), 0.05)
    assert d["ci95"][0] < 0.05 and d["verdict"] == INCONCLUSIVE


@pytest.mark.parametrize(
    ("center", "half", "expected"),
    [(-0.5, 0.2, PASS), (0.0, 0.02, PASS), (0.0, 0.1, INCONCLUSIVE), (0.2, 0.1, FAIL)],
)
def test_upper_sided_verdict(center, half, expected):
    assert decide(center, replicates(center, half), 0.03, sided="upper")["verdict"] == expected


def test_inconclusive_says_what_would_decide_it():
    d = decide(0.0, replicates(0.0, 0.1), 0.05, units=10)
    # the 90% half-width 0.09 must shrink to 0.05: n * (0.09 / 0.05)^2 = 32.4 -> 33 patients
    assert d["units_needed"] == 33
    assert d["resolvable_gap"] == pytest.approx(0.095, abs=1e-3)
    assert "33 forget patients" in d["reason"]
    d = decide(0.1, replicates(0.1, 0.1), 0.05, units=10)
    # to show a difference the 95% half-width 0.095 must shrink to 0.05: 10 * 1.9^2 = 36.1 -> 37
    assert d["verdict"] == INCONCLUSIVE and d["units_needed"] == 37


def test_no_interval_or_no_estimate_is_not_judged():
    assert decide(0.0, None, 0.05)["verdict"] == NA
    assert decide(math.nan, replicates(0, 0.01), 0.05)["verdict"] == NA
    with pytest.raises(ValueError, match="tolerance"):
        decide(0.0, replicates(0, 0.01), 0.0)


def test_overall_rule():
    assert overall([PASS, PASS]) == PASS
    assert overall([PASS, INCONCLUSIVE]) == INCONCLUSIVE
    assert overall([PASS, FAIL, INCONCLUSIVE]) == FAIL
    assert overall([PASS, NA]) == INCONCLUSIVE
    assert overall([NA]) == NA
    assert overall([]) == NA


def test_interval_percentiles():
    assert interval(np.arange(101.0), 0.9) == pytest.approx([5.0, 95.0])
    assert interval(np.array([np.nan, 1.0, 1.0]), 0.95) == [1.0, 1.0]


def test_combine_runs_resamples_seeds_not_endpoints():
    rng = np.random.default_rng(0)
    # two runs whose gaps disagree (seed noise) but each with a tight patient interval
    a, b = rng.normal(0.0, 0.005, 4000), rng.normal(0.1, 0.005, 4000)
    estimate, combined = combine_runs([0.0, 0.1], [a, b])
    assert estimate == pytest.approx(0.05)
    lo, hi = interval(combined, 0.95)
    # resampling runs puts mass at 0, 0.05 and 0.1: the interval covers the seed spread, which averaging the two
    # runs' endpoints ([0.04, 0.06]) would hide
    assert lo < 0.01 and hi > 0.09
    e1, c1 = combine_runs([0.3], [a])
    assert e1 == 0.3 and c1 is not None and len(c1) == len(a)


@pytest.mark.parametrize("center", [0.0, 0.5, -0.5])
def test_one_unit_decides_nothing(center):
    # a one-patient request: the interval cannot resample the forget side, so it can neither show equivalence
    # (a zero-width interval at 0) nor a difference (a narrow interval far outside the band)
    for reps in (replicates(center, 0.0), replicates(center, 0.02)):
        d = decide(center, reps, 0.05, units=1)
        assert d["verdict"] == INCONCLUSIVE, d
        assert d["reason"].startswith("1 forget patient only") and "cannot resample" in d["reason"]
        assert d["ci95"][0] == pytest.approx(center - 0.95 * (reps.max() - center), abs=1e-3)  # still reported
    assert decide(0.5, replicates(0.5, 0.02), 0.05, units=2)["verdict"] == FAIL  # two units may decide
    assert decide(0.5, replicates(0.5, 0.02), 0.05)["verdict"] == FAIL  # units unknown: the interval decides


@pytest.mark.parametrize("sided", ["two-sided", "upper"])
def test_a_gap_within_the_noise_floor_is_not_a_difference(sided):
    # 95% interval [0.105, 0.295]: outside the tolerance 0.05
    reps = replicates(0.2, 0.1)
    assert decide(0.2, reps, 0.05, sided=sided)["verdict"] == FAIL
    assert decide(0.2, reps, 0.05, sided=sided, floor=0.03)["verdict"] == FAIL  # a floor below the tolerance
    within = decide(0.2, reps, 0.05, sided=sided, floor=0.15)  # retrained models differ by 0.15 on their own
    assert within["verdict"] == INCONCLUSIVE and within["fail_band"] == 0.15
    assert "noise floor 0.150" in within["reason"]
    beyond = decide(0.2, reps, 0.05, sided=sided, floor=0.1)
    assert beyond["verdict"] == FAIL and "noise floor 0.100" in beyond["reason"]
    assert decide(0.2, reps, 0.05, sided=sided, floor=math.nan)["verdict"] == FAIL  # NaN floor: not measured
    # equivalence is still shown within the tolerance, whatever the floor
    assert decide(0.0, replicates(0.0, 0.04), 0.05, sided=sided, floor=0.3)["verdict"] == PASS
    if sided == "two-sided":
        assert decide(-0.2, reps - 0.4, 0.05, floor=0.15)["verdict"] == INCONCLUSIVE  # the lower side too
        assert decide(-0.2, reps - 0.4, 0.05, floor=0.1)["verdict"] == FAIL


def test_what_would_decide_it_counts_from_the_fail_band():
    # estimate 0.2 with 95% half-width 0.3: to show a difference beyond the floor 0.15 the half-width (0.285 to the
    # band side) must shrink to 0.05: 10 * (0.285 / 0.05)^2 = 324.9 -> 325
    d = decide(0.2, replicates(0.2, 0.3), 0.05, units=10, floor=0.15)
    assert d["verdict"] == INCONCLUSIVE and d["units_needed"] == 325


def test_combine_runs_keeps_an_all_undefined_draw_nan_without_warning():
    import warnings

    reps = [np.full(50, np.nan), np.full(50, np.nan)]  # both runs undefined (e.g. a one-class forget set)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        estimate, combined = combine_runs([float("nan"), float("nan")], reps)
    assert math.isnan(estimate) and np.isnan(combined).all()
