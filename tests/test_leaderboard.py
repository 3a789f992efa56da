"""benchmarks/leaderboard.py: the leaderboard rows (hand-computed aggregation) and its ``--quick`` run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from medforget.core.checkpoint import read_checkpoint
from tests.conftest import load_benchmark

KEYS = {"method", "setting", "avg_gap", "noise_floor", "gap_over_floor", "retain_acc_gap", "time_ratio", "pass",
        "inconclusive", "fail", "per_patient_pass_share", "patients", "image_size"}


leaderboard = load_benchmark("leaderboard", "leaderboard")


def _model(forget_auc, forget_f1, test_auc, mia, retain_acc=1.0):
    return {"forget_auc": forget_auc, "forget_f1": forget_f1, "test_auc": test_auc, "patient_mia_auc": mia,
            "retain_acc": retain_acc}


def _raw(seed, method, unlearned, retrained, verdict, share, time_ratio=0.05):
    row = {"seed": seed, "setting": "5pct", "method": method, "forget_patients": 6, "verdict": verdict,
           "per_patient_pass_share": share, "unlearned": unlearned, "retrained": retrained,
           "time_ratio": time_ratio, "tuning_time_ratio": 0.5}
    row["avg_gap"] = leaderboard.avg_gap(unlearned, retrained)
    row["retain_acc_gap"] = abs(unlearned["retain_acc"] - retrained["retain_acc"])
    return row


def test_rows_are_hand_computed():
    target = _model(0.6, 0.5, 0.8, 0.5)
    raw = [
        _raw(0, "Retrain", _model(0.62, 0.5, 0.8, 0.52), target, "PASS", 1.0, 1.0),   # floor 0.01
        _raw(1, "Retrain", _model(0.6, 0.54, 0.8, 0.5), target, "PASS", 1.0, 1.0),    # floor 0.01
        _raw(0, "X", _model(0.7, 0.5, 0.76, 0.5, 0.9), target, "FAIL", 0.5),           # gap (0.1 + 0.04) / 4
        _raw(1, "X", _model(math.nan, 0.5, 0.8, 0.56, 0.8), target, "inconclusive", 0.75),  # NaN left out: 0.06 / 3
    ]
    rows = {r["method"]: r for r in leaderboard.leaderboard(raw, patients=120, image_size=32)}
    x = rows["X"]
    assert KEYS <= set(x)
    assert x["avg_gap"] == pytest.approx((0.035 + 0.02) / 2)
    assert x["noise_floor"] == pytest.approx(0.01)
    assert x["gap_over_floor"] == pytest.approx(2.75)
    assert x["retain_acc_gap"] == pytest.approx(0.15)
    assert (x["pass"], x["inconclusive"], x["fail"]) == (0, 1, 1)
    assert x["per_patient_pass_share"] == pytest.approx(0.625)
    assert (x["patients"], x["image_size"], x["setting"]) == (120, 32, "5pct")
    assert rows["Retrain"]["gap_over_floor"] == pytest.approx(1.0)
    assert [r["method"] for r in leaderboard.leaderboard(raw, 120, 32)] == ["Retrain", "X"]  # sorted by gap


def test_requests_are_nested_and_apart_from_the_tuning_request():
    patients = [f"p{i:03d}" for i in range(200)]
    tuning, requests = leaderboard.requests_for(patients, seed=3)
    assert len(tuning) == 10 and len(requests["5pct"]) == 10 and len(requests["1pct"]) == 2
    assert len(requests["1patient"]) == 1
    assert set(requests["1patient"]) <= set(requests["1pct"]) <= set(requests["5pct"])
    assert not set(tuning) & set(requests["5pct"])  # tuning never sees an audited patient


@pytest.mark.skipif(not os.environ.get("MEDFORGET_BENCHMARK_TESTS"),
                    reason="the --quick leaderboard takes minutes on 2 cores; set MEDFORGET_BENCHMARK_TESTS=1")
def test_quick_leaderboard(tmp_path, monkeypatch):
    rows = leaderboard.main(["--quick", f"--out={tmp_path}"])
    assert {r["method"] for r in rows} == {"FineTune", "RefDistill", "Retrain"}
    for row in rows:
        assert KEYS <= set(row) and row["setting"] == "5pct" and row["patients"] == 120
        assert row["pass"] + row["inconclusive"] + row["fail"] == 1
    assert (tmp_path / "leaderboard.json").exists() and (tmp_path / "table.md").exists()
    timed = leaderboard.main(["--quick", f"--out={tmp_path}", "--timing", "--methods", "FineTune"])
    assert [t["method"] for t in timed] == ["FineTune"] and 0 < timed[0]["time_ratio"] < 10
    # every model is audited against the two retrained targets (the third is the Retrain row), and the methods apply
    # their tuned config blind: no checkpoint selection on the audited request, every forget patient audited
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert all(r["targets"] == 2 and r["audited_forget_patients"] == r["forget_patients"] for r in raw)
    provenance = read_checkpoint(tmp_path / "seed0" / "5pct" / "FineTune" / "model.ckpt")["medforget"]["provenance"]
    assert provenance["selection"]["selected"] == "last" and provenance["selection_split"]["patients"] == 0

    # a rerun with the same --out reuses every model and audit (the studies are complete: tune runs no trial)
    def refuse(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    for name in ("train", "unlearn", "evaluate"):
        monkeypatch.setattr(leaderboard.api, name, refuse)
    again = leaderboard.main(["--quick", f"--out={tmp_path}"])
    def kept(table):  # as JSON (NaN == NaN); without the (resumed, empty) study's wall time
        return json.dumps([{k: v for k, v in r.items() if k not in ("tuning_time_ratio", "quiet_time_ratio")}
                           for r in table], default=str)

    assert kept(again) == kept(rows)


def _audit(verdict, forget_auc, share, patients=6, targets=(0.6,)):
    def model(auc):
        return {"metrics": {"forget": {"fused": {"auc": auc, "f1": 0.5}}, "test": {"fused": {"auc": 0.8}},
                            "retain": {"fused": {"accuracy": 1.0}}},
                "mia": {"LossAttack": {"patient_auc": 0.5}}}

    return {"verdict": verdict, "data": {"parts": {"forget": {"patients": patients}}},
            "per_patient": [{"unlearned": {"pass_share": share}}],
            "runs": [{"models": {"unlearned": model(forget_auc), "retrained": model(t)}} for t in targets]}


def test_collect_tabulates_finished_audits_and_lists_the_missing(tmp_path, monkeypatch):
    # seed 0: 5pct has its retrained model, the Retrain row's and SCRUB's audits; SSD's is missing; 1pct has nothing
    base = tmp_path / "seed0" / "5pct"
    for r in ("retrained0", "retrained1"):  # their fit times come from the patched fit_seconds
        (base / r).mkdir(parents=True)
        (base / r / "model.ckpt").write_bytes(b"")
    (base / "forget.txt").write_text("a\nb\nc\n")
    # SCRUB audited against two retrained targets (forget AUC 0.6 and 0.64): its gap is the mean over both
    for name, audit in (("Retrain", _audit("inconclusive", 0.62, 1.0)),
                        ("SCRUB", _audit("fail", 0.7, 0.5, targets=(0.6, 0.64)))):
        (base / "audit" / name).mkdir(parents=True)
        (base / "audit" / name / "audit.json").write_text(json.dumps(audit))
    tune = tmp_path / "seed0" / "tune" / "SCRUB"
    tune.mkdir(parents=True)
    (tune / "trials.csv").write_text("number,user_attrs_seconds\n0,30.0\n1,10.0\n")
    (tune / "best.yaml").write_text("# tuned\nmodel:\n  class_path: medforget.methods.classifier.SCRUB\n  init_args:\n"
                                    "    lr: 0.1\ntrainer:\n  max_epochs: 4\n  accelerator: cpu\nout: runs/x\n")
    summary = {"best_params": {"lr": 0.1}, "trials_csv": str(tune / "trials.csv"), "best_value": 0.02,
               "best_trial": 1, "best_yaml": str(tune / "best.yaml"), "objective": "val/selection_score"}
    (tune / "tune.json").write_text(json.dumps(summary))
    # retrained2: the Retrain row (3 retrains); time ratios divide by the least contended retraining (retrained1's 50 s)
    seconds = {"retrained0": 100.0, "retrained1": 50.0, "retrained2": 100.0, "SCRUB": 5.0, "retrained": 125.0}
    for name in ("retrained", "SCRUB"):  # --timing's quiet runs: SCRUB 5 s against one retraining of 125 s
        (base / "timing" / name).mkdir(parents=True)
        (base / "timing" / name / "model.ckpt").write_bytes(b"")
    monkeypatch.setattr(leaderboard, "fit_seconds", lambda path: seconds[Path(path).parent.name])
    def refuse(*args, **kwargs):
        raise AssertionError("--collect ran a step")

    for name in ("train", "unlearn", "evaluate", "tune"):
        monkeypatch.setattr(leaderboard.api, name, refuse)
    rows = leaderboard.main([f"--out={tmp_path}", "--collect", "--seeds", "0", "--settings", "5pct", "1pct",
                             "--methods", "SCRUB", "SSD", "--patients", "120", f"--results={tmp_path / 'lb.json'}",
                             f"--write-configs={tmp_path / 'tuned'}"])
    by = {r["method"]: r for r in rows}
    assert set(by) == {"Retrain", "SCRUB"}
    x = by["SCRUB"]
    assert x["avg_gap"] == pytest.approx((0.1 + 0.06) / 2 / 4) and x["noise_floor"] == pytest.approx(0.02 / 4)
    assert x["gap_over_floor"] == pytest.approx(4.0) and x["time_ratio"] == pytest.approx(0.1)
    assert x["quiet_time_ratio"] == pytest.approx(0.04)
    assert x["tuning_time_ratio"] == pytest.approx(0.8) and (x["fail"], x["per_patient_pass_share"]) == (1, 0.5)
    assert x["forget_patients"] == 3 and x["patients"] == 120
    missing = [(m["setting"], m["method"]) for m in x["missing"]]
    assert missing == []  # SCRUB's own steps are done; SSD's audit and the 1pct setting are listed on their own rows
    written = json.loads((tmp_path / "lb.json").read_text())
    assert [r["method"] for r in written] == ["Retrain", "SCRUB"]
    table = (tmp_path / "table.md").read_text()
    assert "seed 0 5pct SSD" in table and "seed 0 1pct all (no retrained model yet)" in table
    # the chosen settings as the method's tuned config (SSD is training-free: nothing tuned, nothing written)
    import yaml

    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == ["scrub.yaml"]
    text = (tmp_path / "tuned" / "scrub.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["model"]["init_args"]["lr"] == 0.1 and config["trainer"] == {"max_epochs": 4} and "out" not in config
    assert "seed 0's best trial (1), val/selection_score = 0.0200" in text


def test_merged_rows_keep_each_budget_and_one_retrain_row():
    def row(method, trials, gap):
        return {"method": method, "setting": "5pct", "trials": trials, "avg_gap": gap}

    old = [row("Retrain", 4, 0.01), row("X", 4, 0.05), row("Y", 4, 0.08)]
    new = [row("Retrain", 12, 0.01), row("X", 12, 0.03), row("Y", 4, 0.07)]
    rows = leaderboard.merged(old, new)
    assert [(r["method"], r["trials"], r["avg_gap"]) for r in rows] == [
        ("Retrain", 12, 0.01), ("X", 12, 0.03), ("X", 4, 0.05), ("Y", 4, 0.07)]  # Y's 4-trial row replaced
    # the same budget with another epoch unit is another protocol: kept beside, not replaced
    forget_epochs = {**row("X", 12, 0.02), "unlearn_epoch": "forget"}
    rows = leaderboard.merged(rows, [forget_epochs])
    assert sorted((r["method"], r["trials"], r.get("unlearn_epoch", "retain")) for r in rows if r["method"] == "X") == [
        ("X", 4, "retain"), ("X", 12, "forget"), ("X", 12, "retain")]
    # so is the same budget with the tuned epochs capped (--max-epochs-high), and the table says which row is which
    capped = {**row("X", 12, 0.04), "max_epochs_high": 2}
    rows = leaderboard.merged(rows, [capped])
    assert sorted((r["trials"], r.get("unlearn_epoch", "retain"), r.get("max_epochs_high") or 0, r["avg_gap"])
                  for r in rows if r["method"] == "X") == [
        (4, "retain", 0, 0.05), (12, "forget", 0, 0.02), (12, "retain", 0, 0.03), (12, "retain", 2, 0.04)]
    full = {"avg_gap_range": [0.0, 0.1], "noise_floor_range": [0.0, 0.1], "gap_over_floor_range": [0.0, 1.0],
            "noise_floor": 0.02, "gap_over_floor": 2.0, "retain_acc_gap": 0.0, "time_ratio": 0.1, "pass": 0,
            "inconclusive": 1, "fail": 0, "per_patient_pass_share": 1.0, "tuning_time_ratio": 0.1}
    assert "| 5pct | X | 12, <= 2 epochs | 0.040" in leaderboard.table([{**capped, **full}])
    # and so is a smaller retain ratio (--retain-per-forget); a row naming the default ratio is the same protocol as
    # one written before the flag existed, so it replaces it
    lean = {**capped, "avg_gap": 0.045, "retain_per_forget": 2}
    rows = leaderboard.merged(rows, [lean, {**capped, "avg_gap": 0.035, "retain_per_forget": 8}])
    assert sorted((r.get("max_epochs_high") or 0, r.get("retain_per_forget") or 8, r["avg_gap"])
                  for r in rows if r["method"] == "X" and r["trials"] == 12 and "unlearn_epoch" not in r) == [
        (0, 8, 0.03), (2, 2, 0.045), (2, 8, 0.035)]
    assert "| 5pct | X | 12, <= 2 epochs, 2x retain | 0.045" in leaderboard.table([{**lean, **full}])
    # other training epochs are other originals and retrained models: their Retrain row and tuned rows stand beside
    longer = [{**row("Retrain", 12, 0.02), "epochs": 25}, {**row("X", 12, 0.01), "epochs": 25}]
    before = len(rows)
    rows = leaderboard.merged(rows, longer)
    assert len(rows) == before + 2
    assert sorted((r.get("epochs") or 10, r["avg_gap"]) for r in rows if r["method"] == "Retrain") == [
        (10, 0.01), (25, 0.02)]
    assert leaderboard.table([{**longer[1], **full}]).rstrip().endswith("| 1.00 | 25 |")
