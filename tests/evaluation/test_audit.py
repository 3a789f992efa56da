"""The audit: one run's numbers against scikit-learn, aggregation over runs, pass/fail criteria, the written report
(JSON/Markdown/HTML, plots) and that no patient identifier or report text reaches any output or log."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medforget.checkpoint import load_classifier
from medforget.classifier import FusionClassifier
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import read_patient_ids, salted_hash
from medforget.evaluation.audit import (
    SCHEMA_VERSION,
    AuditConfig,
    Tolerances,
    aggregate,
    criteria,
    default_attacks,
    evaluate_models,
    format_table,
    run_audit,
)


@pytest.fixture(scope="module")
def model(trained_ckpt) -> FusionClassifier:
    return load_classifier(trained_ckpt)


def predict(model: FusionClassifier, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(model.prepare_batch(batch))


@pytest.fixture(scope="module")
def report(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    dm = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs)
    return evaluate_models({"original": trained_ckpt, "retrained": trained_ckpt}, dm, accelerator="cpu")


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_evaluate_models_report(report, trained_ckpt, forget_file):
    assert report["schema_version"] == SCHEMA_VERSION == 2
    assert set(report["models"]) == {"original", "retrained"}
    parts = report["data"]["parts"]
    assert parts["forget"]["patients"] == len(forget_file.read_text().split())
    assert parts["retain"]["studies"] + parts["forget"]["studies"] == parts["train"]["studies"]
    assert len(report["data"]["manifest_sha256"]) == 64
    for name in ("original", "retrained"):
        res = report["models"][name]
        assert res["checkpoint"] == str(trained_ckpt)
        assert res["provenance"]["kind"] == "original"
        assert set(res["metrics"]) == {"forget", "retain", "test", "val"}
        for part, heads in res["metrics"].items():
            assert set(heads) == {"fused", "image", "text"}, part
            for values in heads.values():
                assert set(values) == {"auc", "f1", "accuracy"}
                assert 0.0 <= values["accuracy"] <= 1.0
                assert 0.0 <= values["f1"] <= 1.0
                assert math.isnan(values["auc"]) or 0.0 <= values["auc"] <= 1.0
        assert set(res["mia"]) == set(default_attacks())  # every attack without reference models
        for mia in res["mia"].values():
            assert 0.0 <= mia["auc"] <= 1.0
            assert mia["n_members"] == parts["forget"]["studies"]
            assert mia["n_nonmembers"] == parts["test"]["studies"]
    # the same model twice: identical numbers and gaps of exactly zero
    a, b = report["models"]["original"], report["models"]["retrained"]
    gaps = report["gaps_to_retrained"]
    assert set(gaps) == {"original"}
    for part, heads in a["metrics"].items():
        for head, values in heads.items():
            for k, v in values.items():
                assert _same(v, b["metrics"][part][head][k])
                gap = gaps["original"]["metrics"][part][head][k]
                assert gap == 0.0 or (math.isnan(gap) and math.isnan(v)), (part, head, k)
    assert a["mia"] == b["mia"]
    assert gaps["original"]["mia"]["LossAttack"] == {"auc": 0.0, "tpr@1%fpr": 0.0, "tpr@0.1%fpr": 0.0,
                                                     "member_rate": 0.0}


def test_format_table(report):
    table = format_table(report)
    lines = table.splitlines()
    assert "MIA AUC" in lines[0]
    assert lines[1].strip("-") == ""
    rows = lines[2:]
    assert len(rows) == 3  # original, retrained, and the gap row
    assert rows[0].startswith("original") and rows[1].startswith("retrained")
    assert rows[2].startswith("Δ original vs retrained")
    mia = report["models"]["original"]["mia"]["LossAttack"]["auc"]
    assert rows[0].split()[-1] == f"{mia:.3f}"
    assert rows[2].split()[-1] == "+0.000"


def test_report_numbers_match_sklearn(report, model, forget_file, tiny_datamodule_kwargs):
    """The audit's numbers, recomputed from the model's own predictions with scikit-learn."""
    dm = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    logits, labels = {}, {}
    for part, loader in dm.evaluation_dataloaders().items():
        batches = list(loader)
        logits[part] = torch.cat([predict(model, b)["fused"] for b in batches]).double()
        labels[part] = torch.cat([b["label"] for b in batches]).numpy()
        y, p = labels[part], logits[part].softmax(-1).numpy()
        got = report["models"]["original"]["metrics"][part]["fused"]
        assert got["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-6), part
        expected_f1 = f1_score(y, p.argmax(1), average="macro", zero_division=0)
        assert got["f1"] == pytest.approx(expected_f1, abs=1e-6), part
        aucs = [roc_auc_score(y == c, p[:, c]) for c in range(4) if 0 < (y == c).sum() < len(y)]
        expected_auc = float(np.mean(aucs)) if aucs else math.nan
        assert _same(got["auc"], expected_auc) or got["auc"] == pytest.approx(expected_auc, abs=1e-4), part
    scores = {
        part: -F.cross_entropy(logits[part], torch.from_numpy(labels[part]), reduction="none")
        for part in ("forget", "test")
    }
    y = np.r_[np.ones(len(scores["forget"])), np.zeros(len(scores["test"]))]
    expected = roc_auc_score(y, np.r_[scores["forget"].numpy(), scores["test"].numpy()])
    assert report["models"]["original"]["mia"]["LossAttack"]["auc"] == pytest.approx(expected, abs=1e-5)


# --- several runs and criteria ------------------------------------------------------------------------------------
def test_aggregate_hand_computed():
    runs = [{"a": {"x": 1.0, "y": float("nan"), "c": [0.0, 1.0], "s": "text", "n": 3}},
            {"a": {"x": 3.0, "y": 2.0, "c": [1.0, 0.0], "s": "other", "n": 5}}]
    out = aggregate(runs)
    assert out["a"]["x"] == {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0)), "n": 2}
    assert out["a"]["y"] == {"mean": 2.0, "std": 0.0, "n": 1}  # NaN runs left out
    assert out["a"]["c"] == [0.5, 0.5]
    assert out["a"]["n"]["mean"] == 4.0
    assert "s" not in out["a"]
    single = aggregate([{"v": 0.25}])
    assert single["v"] == {"mean": 0.25, "std": 0.0, "n": 1}


def _summary(unl: dict, ret: dict) -> dict:
    def leafs(d):
        return {k: leafs(v) if isinstance(v, dict) else ({"mean": v, "std": 0.0, "n": 1} if not isinstance(v, list)
                                                          else v) for k, v in d.items()}

    return {"models": {"unlearned": leafs(unl), "retrained": leafs(ret)}}


def test_criteria_pass_and_fail_against_tolerances():
    def model(mia, facc, fauc, tauc, recovered, relearn):
        return {"mia": {"LossAttack": {"auc": mia}},
                "metrics": {"forget": {"fused": {"accuracy": facc, "auc": fauc}}, "test": {"fused": {"auc": tauc}}},
                "quantization": {"int4": {"recovered_fraction": {"forget_accuracy": recovered}}},
                "relearning": {"step": [0, 5], "accuracy": [0.5, relearn]}}

    summary = _summary(model(0.58, 0.70, 0.90, 0.85, 0.40, 0.95), model(0.50, 0.68, 0.80, 0.90, float("nan"), 0.70))
    checks = {c["criterion"]: c for c in criteria(summary, Tolerances())}
    assert checks["mia/LossAttack"]["value"] == pytest.approx(0.08) and checks["mia/LossAttack"]["passed"] is False
    assert checks["forget_accuracy"]["value"] == pytest.approx(0.02) and checks["forget_accuracy"]["passed"]
    assert checks["forget_auc"]["value"] == pytest.approx(0.10) and not checks["forget_auc"]["passed"]
    assert checks["test_auc_drop"]["value"] == pytest.approx(0.05) and not checks["test_auc_drop"]["passed"]
    assert checks["quantization/int4"]["value"] == pytest.approx(0.40) and not checks["quantization/int4"]["passed"]
    assert checks["relearning"]["value"] == pytest.approx(0.25) and not checks["relearning"]["passed"]
    assert "time_ratio" not in checks  # not judged unless a tolerance is given
    loose = {c["criterion"]: c for c in criteria(summary, Tolerances(mia_auc_gap=0.1, forget_auc_gap=0.2,
                                                                      test_auc_drop=0.06, quantization_recovery=0.5,
                                                                      relearn_accuracy_gap=0.3, time_ratio=0.5),
                                                 {"ratio": {"mean": 0.2, "std": 0.0, "n": 1}})}
    assert all(c["passed"] for c in loose.values())
    assert loose["time_ratio"]["value"] == 0.2
    # a better test AUC than the retrained model is no utility loss; an undefined value is not judged
    summary = _summary(model(0.5, 0.68, 0.8, 0.95, float("nan"), 0.7), model(0.5, 0.68, 0.8, 0.9, 0.0, 0.7))
    checks = {c["criterion"]: c for c in criteria(summary, Tolerances())}
    assert checks["test_auc_drop"]["passed"] and checks["test_auc_drop"]["value"] == pytest.approx(-0.05)
    assert checks["quantization/int4"]["passed"] is None


def test_criteria_need_unlearned_and_retrained():
    assert criteria(_summary({}, {}) | {"models": {"original": {}}}, Tolerances()) == []


# --- the written audit ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audit(trained_ckpt, unlearned_ckpt, retrained_ckpt, forget_file, tiny_datamodule_kwargs, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    runs = [{"original": trained_ckpt, "unlearned": unlearned_ckpt, "retrained": retrained_ckpt}] * 2
    config = AuditConfig(reference_models=2, reference_epochs=1, relearn_steps=3, quantization=["int8", "int4"])
    report = run_audit(runs, [forget_file], dict(tiny_datamodule_kwargs), out, config, Tolerances(),
                       accelerator="cpu", cli_config={"note": "test"})
    return report, out


def test_audit_report_contents(audit):
    report, out = audit
    saved = json.loads((out / "audit.json").read_text())  # strict JSON (NaN written as null)
    assert saved["schema_version"] == SCHEMA_VERSION
    assert set(saved) >= {"created", "code", "config", "data", "forget_request", "runs", "summary", "timing",
                          "criteria", "verdict"}
    assert saved["code"]["medforget"] and "git_commit" in saved["code"]
    assert len(saved["data"]["manifest_sha256"]) == 64
    assert len(saved["runs"]) == 2
    models = saved["summary"]["models"]
    assert set(models) == {"original", "unlearned", "retrained"}
    # the same checkpoints twice: n = 2 and std 0
    assert models["unlearned"]["metrics"]["test"]["fused"]["auc"]["n"] == 2
    assert models["unlearned"]["metrics"]["test"]["fused"]["auc"]["std"] == pytest.approx(0.0, abs=1e-9)
    # every registered attack ran, including the reference-model ones
    assert set(models["original"]["mia"]) == set(default_attacks()) | {"LiRAAttack", "RMIAAttack"}
    for name in ("original", "unlearned", "retrained"):
        quant = models[name]["quantization"]
        assert set(quant) == {"int8", "int4"}
        curve = models[name]["relearning"]
        assert curve["step"] == [0.0, 1.0, 2.0, 3.0]
        assert len(curve["accuracy"]) == 4
    assert "recovered_fraction" in models["unlearned"]["quantization"]["int4"]
    # patient-level bootstrap intervals: around each AUC, and around the paired gap (0 for the same checkpoint)
    run = saved["runs"][0]
    for name, res in run["models"].items():
        for attack, values in res["mia"].items():
            lo, hi = values["auc_ci95"]
            assert lo <= values["auc"] + 1e-9 and values["auc"] - 1e-9 <= hi, (name, attack)
    mia_checks = [c for c in saved["criteria"] if c["criterion"].startswith("mia/")]
    assert mia_checks and all(len(c["gap_ci95"]) == 2 for c in mia_checks)
    assert saved["timing"]["ratio"]["mean"] == pytest.approx(
        saved["timing"]["unlearn_seconds"]["mean"] / saved["timing"]["retrain_seconds"]["mean"])
    assert saved["verdict"] in ("pass", "fail")
    names = {c["criterion"] for c in saved["criteria"]}
    assert {"mia/LossAttack", "mia/LiRAAttack", "forget_accuracy", "test_auc_drop", "quantization/int8",
            "relearning"} <= names
    assert (out / "reference_models" / "run0" / "design.json").is_file()
    for plot in ("roc", "histograms", "relearning", "quantization", "utility"):
        png = out / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    md = (out / "audit.md").read_text()
    assert "## Criteria" in md and "## Membership inference" in md and "](plots/roc.png)" in md
    assert "± 0.000" in md  # mean ± std over the two runs
    html = (out / "audit.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # self-contained: every plot embedded
    assert not re.search(r'src="(?!data:)', html)  # no external file or URL
    assert "PASS" in html or "FAIL" in html


def test_audit_forget_request_is_salted_hashes(audit, forget_file):
    report, out = audit
    salt = (out / "private" / "salt").read_text().strip()
    ids = read_patient_ids(forget_file)
    assert report["forget_request"]["salted_hashes"] == sorted(salted_hash(i, salt) for i in ids)
    assert report["forget_request"]["patients"] == [len(ids)]
    assert (out / "private" / "salt").stat().st_mode & 0o077 == 0  # private


def test_audit_outputs_hold_no_patient_identifiers_or_report_text(audit, tiny_hospital):
    """No patient ID (of any patient) and no report sentence in any written file except the private salt."""
    import pandas as pd

    _, out = audit
    df = pd.read_csv(tiny_hospital)
    ids = set(df["patient_id"].astype(str))
    reports = {r.strip() for r in df["report"].astype(str)} if "report" in df else set()
    texts = [p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".md",
                                                                                                     ".html", ".txt")
             and "private" not in p.parts]
    assert texts
    for text in texts:
        assert not [i for i in ids if i in text]
        assert not [r for r in reports if r and r[:40] in text]


def test_reference_models_are_cached(audit, trained_ckpt, forget_file, tiny_datamodule_kwargs):
    from medforget.evaluation.reference_models import train_reference_models

    _, out = audit
    cache = out / "reference_models" / "run0"
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.ckpt")}
    dm = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    paths, design, retain = train_reference_models(trained_ckpt, dm, dict(tiny_datamodule_kwargs), 2, cache,
                                                   epochs=1, seed=0, accelerator="cpu")
    assert {p.name: p.stat().st_mtime_ns for p in paths} == before  # reused, not retrained
    assert design.shape == (2, len(retain)) and (design.sum(0) == 1).all()
    ckpt = load_classifier(paths[0])
    assert ckpt.provenance["kind"] == "reference" and ckpt.provenance["in_patients"] == int(design[0].sum())


def test_criterion_value_never_prints_a_failing_value_equal_to_its_tolerance():
    from medforget.evaluation.report import criterion_value

    assert criterion_value(0.89985, 0.9) == "0.89985"  # 0.900 would read as passing ">= 0.9"
    assert criterion_value(0.9, 0.9) == "0.900"
    assert criterion_value(0.267, 0.05) == "0.267"
    assert criterion_value(float("nan"), 0.05) == "n/a"
