"""The audit skeleton both audits run on (:mod:`medforget.audit.skeleton`), the shared criteria with operators
(:mod:`medforget.audit.criteria`), the shared patient resampler and the shared report writer, against hand
computations and the functions they replaced."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medforget.audit.bootstrap import PatientResampler, patient_draws, weighted_mean
from medforget.audit.criteria import OVER, SAME, UNDER, Criterion, Gap, counted_verdict, direction
from medforget.audit.render import interval_text, write_documents
from medforget.audit.skeleton import Audit, AuditSettings, hashed_request, timing_of
from medforget.audit.verdict import FAIL, INCONCLUSIVE, MIN_REPLICATES, NA, PASS, decide
from medforget.core.privacy import salted_hashes


# --- criteria with operators ---------------------------------------------------------------------------------------
def test_criterion_decides_as_verdict_decide_with_its_operator():
    reps = np.random.default_rng(0).normal(0.03, 0.01, 2000)
    two = Criterion("g", "", 0.05)
    upper = Criterion("u", "", 0.05, "upper")
    assert two.operator == "|x| <=" and upper.operator == "<="
    assert Criterion("p", "", 0.05, "upper", comparison="p >").operator == "p >"
    for crit in (two, upper):
        assert crit.decide(Gap(0.03, reps), units=12) == decide(0.03, reps, 0.05, crit.sided, units=12)
    # a negative gap: outside |x| <= 0.05, but always fine for x <= 0.05
    far = Gap(-0.3, reps - 0.33)
    assert two.decide(far)["verdict"] == FAIL and upper.decide(far)["verdict"] == PASS
    assert two.decide(None)["verdict"] == NA and two.decide(Gap(0.0))["verdict"] == NA  # unmeasured / no interval


def test_power_is_a_fail_or_an_estimate_outside_the_tolerance():
    crit = Criterion("g", "", 0.05)
    assert crit.outside(-0.06) and not crit.outside(0.05) and not crit.outside(math.nan)
    assert not Criterion("u", "", 0.05, "upper").outside(-0.06)
    assert crit.shows_difference({"verdict": FAIL, "estimate": 0.0})
    assert crit.shows_difference({"verdict": INCONCLUSIVE, "estimate": 0.07})
    assert not crit.shows_difference({"verdict": INCONCLUSIVE, "estimate": 0.04})


def test_display_scale_and_direction_words():
    crit = Criterion("fq", "", 2.0, "upper", display=lambda x: 10.0 ** -x)  # decided on -log10 p, shown as p
    assert crit.shown(2.0) == pytest.approx(0.01) and math.isnan(crit.shown(math.nan))
    assert crit.shown_interval([1.0, 3.0]) == pytest.approx([0.001, 0.1])  # sorted after the monotone map
    assert direction(0.2, [0.1, 0.3]) == UNDER and direction(-0.2, [-0.3, -0.1]) == OVER
    assert direction(0.2, [-0.1, 0.3]) == SAME and direction(math.nan, None) == NA


def test_counted_verdict_leaves_out_criteria_without_power():
    checks = [{"criterion": "a", "verdict": PASS, "counted": True, "p": True},
              {"criterion": "b", "verdict": FAIL, "counted": False, "p": False},
              {"criterion": "c", "verdict": INCONCLUSIVE, "counted": True, "p": None}]
    verdict, counted, without = counted_verdict(checks, lambda c: c["p"])
    assert verdict == INCONCLUSIVE and [c["criterion"] for c in counted] == ["a", "c"] and without == ["b"]
    assert counted_verdict([], lambda c: None)[0] == NA


# --- the shared resampler ------------------------------------------------------------------------------------------
def test_resampler_draws_what_per_part_patient_draws_drew():
    """The classifier audit's resamples used to be drawn part by part with :func:`patient_draws` from one generator;
    the shared resampler draws the same ones (so its published intervals are unchanged)."""
    groups = {"forget": np.repeat(np.arange(7), 3), "test": np.array([4, 9, 9, 2, 30]), "held": np.arange(3)}
    rng = np.random.default_rng(5)
    expected = {part: patient_draws(g, 300, rng) for part, g in groups.items()}
    rs = PatientResampler(groups, 300, seed=5)
    for part, g in groups.items():
        counts, codes = expected[part]
        np.testing.assert_array_equal(rs.counts[part], counts)
        np.testing.assert_array_equal(rs.weights(part, g), counts[:, codes])
    with pytest.raises(ValueError, match="outside the resampled test patients"):
        rs.weights("test", [5])


def test_weighted_mean_by_hand():
    w = np.array([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    out = weighted_mean(np.array([1.0, 5.0, 4.0]), w)
    assert out[0] == pytest.approx(3.0) and math.isnan(out[1])


# --- settings, timing, the forget request --------------------------------------------------------------------------
@dataclass
class Settings(AuditSettings):
    bootstrap: int = MIN_REPLICATES
    seed: int = 0
    plots: bool = False
    quantization: list[str] = field(default_factory=list)
    int4_group_size: int = 32


def test_shared_settings_are_checked_naming_the_flag():
    Settings().check_settings(strict_bootstrap=True)
    with pytest.raises(ValueError, match="audit.quantization: unknown scheme"):
        Settings(quantization=["int3"]).check_settings(strict_bootstrap=False)
    with pytest.raises(ValueError, match="audit.bootstrap must be >= 0"):
        Settings(bootstrap=-1).check_settings(strict_bootstrap=False)
    with pytest.raises(ValueError, match="--audit.bootstrap 200"):
        Settings(bootstrap=200).check_settings(strict_bootstrap=True)
    Settings(bootstrap=200).check_settings(strict_bootstrap=False)  # the LM audit only warns


def test_timing_of_by_hand():
    models = {"unlearned": {"provenance": {"unlearn_seconds": 3}}, "ref": {"provenance": {"fit_seconds": 12.0}},
              "original": {"provenance": {}}}
    t = timing_of(models, "ref", "ref_seconds")
    assert list(t) == ["unlearn_seconds", "ref_seconds", "original_train_seconds", "ratio"]
    assert t["unlearn_seconds"] == 3.0 and t["ratio"] == 0.25 and math.isnan(t["original_train_seconds"])
    assert math.isnan(timing_of({}, "ref", "ref_seconds")["ratio"])


def test_hashed_request_one_or_several():
    one = hashed_request(["p2", "p1"], "salt")
    assert one["patients"] == 2 and one["salted_hashes"] == salted_hashes(["p1", "p2"], "salt")
    nested = hashed_request([["p2", "p1"]], "salt")
    assert nested["patients"] == [2] and nested["salted_hashes"] == one["salted_hashes"]
    two = hashed_request([["p1"], ["p3", "p4"]], "salt")
    assert two["patients"] == [1, 2] and two["salted_hashes"][1] == salted_hashes(["p3", "p4"], "salt")
    assert "p1" not in json.dumps(two)


def test_interval_text_variants():
    assert interval_text([0.1, 0.25]) == "[+0.100, +0.250]"
    assert interval_text([0.1, 0.25], signed=False, digits=1, missing="") == "[0.1, 0.2]"
    assert interval_text(None) == "n/a" and interval_text([math.nan, 1.0], nan_missing=True) == "n/a"


# --- the run flow --------------------------------------------------------------------------------------------------
@dataclass
class Tol:
    gap: float = 0.1


class ToyAudit(Audit):
    """An audit of one constant gap: records what the flow called, in order."""

    stem = "toy"
    schema_version = 7

    def __init__(self, out: Path, gap: float, bad: bool = False) -> None:
        super().__init__(Settings(), Tol(), out, cli_config={"note": "x"})
        self.gap, self.bad, self.calls = gap, bad, []

    def prepare(self) -> None:
        self.calls.append("prepare")
        if self.bad:
            raise ValueError("bad input")

    def measure(self, salt: str) -> None:
        self.calls.append("measure")
        self.value = Gap(self.gap, np.full(MIN_REPLICATES, self.gap))

    def data(self) -> dict:
        return {"rows": 3}

    def forget_ids(self) -> list[str]:
        return ["a", "b"]

    def results(self) -> dict:
        return {"models": {"unlearned": {"provenance": {"unlearn_seconds": 1.0}},
                           "ref": {"provenance": {"fit_seconds": 4.0}}}}

    def timing(self) -> dict:
        self.calls.append("timing")
        return timing_of(self.results()["models"], "ref", "ref_seconds")

    def criteria(self, timing: dict) -> list[dict]:
        self.calls.append("criteria")
        crit = Criterion("gap", "a constant gap", self.tolerances.gap)
        return [{"criterion": crit.name, **crit.decide(self.value), "counted": True}]

    def verdict(self, checks: list[dict]) -> dict:
        self.calls.append("verdict")
        return {"verdict": counted_verdict(checks, lambda c: None)[0]}

    def write_documents(self, report: dict) -> dict:
        self.calls.append("write")
        return write_documents(self.out, self.stem, lambda images: [("h1", "toy"), ("p", report["verdict"])])


def test_audit_run_flow_report_and_files(tmp_path):
    audit = ToyAudit(tmp_path / "out", gap=0.02)
    report = audit.run()
    assert audit.calls == ["prepare", "measure", "timing", "criteria", "verdict", "write"]
    assert list(report) == ["schema_version", "created", "code", "config", "data", "forget_request", "models",
                            "timing", "criteria", "verdict", "audit_seconds"]
    assert report["config"] == {"audit": {"bootstrap": MIN_REPLICATES, "seed": 0, "plots": False, "quantization": [],
                                          "int4_group_size": 32}, "tolerances": {"gap": 0.1}, "cli": {"note": "x"}}
    assert report["verdict"] == PASS and report["timing"]["ratio"] == 0.25
    assert report["forget_request"]["patients"] == 2
    out = tmp_path / "out"
    assert json.loads((out / "toy.json").read_text())["verdict"] == PASS
    assert (out / "toy.md").read_text().startswith("# toy") and "<h1>toy</h1>" in (out / "toy.html").read_text()
    assert (out / "private" / "salt").is_file() and not (out / "plots").exists()  # no plots asked: no plots/
    assert ToyAudit(tmp_path / "fail", gap=0.5).run()["verdict"] == FAIL


def test_audit_checks_its_inputs_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="bad input"):
        ToyAudit(tmp_path / "out", gap=0.0, bad=True).run()
    assert not (tmp_path / "out").exists()


def test_write_documents_draws_the_plots_it_is_given(tmp_path):
    def plot(data, path):
        path.write_bytes(b"\x89PNG")
        return path

    written = write_documents(tmp_path, "r", lambda images: [("img", images["a"], "cap")],
                              [("a", plot, None), ("none", lambda data, path: None, None)], prefix="x_")
    assert written["plots"] == {"a": "plots/x_a.png"} and (tmp_path / "plots" / "x_a.png").is_file()
    assert "![cap](plots/x_a.png)" in (tmp_path / "r.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()
