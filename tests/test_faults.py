"""The fault campaign of issue 18 in its quick form (``python benchmarks/faults.py --quick``): every campaign runs a
few seeded trials; each must end in a clear error or a clean result, with nothing lost and no partial file."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark

faults = load_benchmark("faults", "faults")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "faults.json"
    return faults.run_campaigns(quick=True, seed=0, work=tmp_path_factory.mktemp("work"), out=out)


def test_results_file(report, tmp_path_factory):
    assert set(report["campaigns"]) == set(faults.CAMPAIGNS)
    for name, result in report["campaigns"].items():
        assert set(faults.COUNTS) <= set(result), name
        assert result["trials"] > 0 and result["trials"] == result["clear_error"] + result["ok"] + result["crash"]
    json.dumps(report)  # plain JSON


@pytest.mark.parametrize("campaign", faults.CAMPAIGNS)
def test_campaign_meets_its_targets(report, campaign):
    result = report["campaigns"][campaign]
    assert (result["crash"], result["lost"], result["partial"]) == (0, 0, 0), result["examples"]


def test_campaigns_see_both_outcomes(report):
    c = report["campaigns"]
    assert c["dicom_corruptions"]["clear_error"] > 0
    assert c["manifest_fuzz"]["clear_error"] > 0
    assert c["kills"]["ok"] == c["kills"]["trials"]
    assert c["concurrent_out"]["by_kind"] == {"second run": {"clear_error": 1}, "stale lock": {"ok": 1}}
    assert c["tampered_checkpoints"]["clear_error"] == c["tampered_checkpoints"]["trials"]
    assert c["tampered_checkpoints"]["code_executed"] is False
    assert c["disk_full"]["clear_error"] > 0


def test_summary_table_matches_the_json(report):
    table = faults.summary_table(report)
    for name, result in report["campaigns"].items():
        assert f"| {name} | {result['trials']} |" in table
