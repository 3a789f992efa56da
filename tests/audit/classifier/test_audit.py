"""The audit: one run's numbers against scikit-learn, aggregation over runs, pass/fail criteria, the written report
(JSON/Markdown/HTML, plots) and that no patient identifier or report text reaches any output or log."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medforget.audit.classifier.audit import aggregate, criteria, run_audit, verdict_of
from medforget.audit.classifier.config import SCHEMA_VERSION, AuditConfig, Tolerances, default_attacks
from medforget.audit.classifier.criteria import RunArtifacts, evaluate_criteria
from medforget.audit.classifier.measure import evaluate_models
from medforget.audit.classifier.tables import format_table
from medforget.core.privacy import salted_hash
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import read_patient_ids
from medforget.systems.classifier import FusionClassifier, load_classifier


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
    # the forget patients set aside for checkpoint selection are left out of the audited forget part
    assert parts["forget"]["patients"] + parts["forget_selection"]["patients"] == len(forget_file.read_text().split())
    assert report["data"]["selection_fraction"] == 0.25
    assert (parts["retain"]["studies"] + parts["forget"]["studies"] + parts["forget_selection"]["studies"]
            == parts["train"]["studies"])
    assert len(report["data"]["manifest_sha256"]) == 64
    # the audit says what it scored: bounded seeded samples by default (the tiny hospital fits in them whole)
    sampling = report["data"]["sampling"]
    assert sampling["bounded"] is True and sampling["max_eval_patients"] == 256
    for part in ("retain", "val", "test"):
        assert sampling["parts"][part]["patients"] == sampling["parts"][part]["of_patients"] == parts[part]["patients"]
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
    assert a["mia"].keys() == b["mia"].keys()
    for attack, values in a["mia"].items():
        assert all(_same(v, b["mia"][attack][k]) for k, v in values.items()), attack
    loss_gap = gaps["original"]["mia"]["LossAttack"]
    assert {k: loss_gap[k] for k in ("auc", "patient_auc", "patient_max_auc", "member_rate")} == dict.fromkeys(
        ("auc", "patient_auc", "patient_max_auc", "member_rate"), 0.0)
    assert math.isnan(loss_gap["tpr@1%fpr"])  # a handful of test patients cannot resolve a 1% FPR: n/a


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


def _artifacts(seed: int, gap: float = 0.0, same: bool = False, original_gap: float | None = None,
               request: str = "r") -> RunArtifacts:
    """A synthetic run: 24 forget patients x 2 studies, 40 test patients; the loss-attack scores of the unlearned
    (and original) model are shifted up by ``gap`` on the forget studies (forget patients stand out), the retrained
    model's are not; ``same``: the unlearned model is a copy of the retrained one."""
    rng = np.random.default_rng(seed)
    art = RunArtifacts(request=request)
    art.groups = {"forget": np.repeat(np.arange(24), 2), "test": np.arange(40)}
    art.labels = {"forget": rng.integers(0, 4, 48), "test": rng.integers(0, 4, 40)}
    base = {p: rng.normal(size=(len(y), 4)) + 2.0 * np.eye(4)[y] for p, y in art.labels.items()}
    scores = {p: rng.normal(size=len(y)) for p, y in art.labels.items()}
    art.logits["retrained"] = {p: v.copy() for p, v in base.items()}
    art.scores["retrained"] = {"LossAttack": {p: v.copy() for p, v in scores.items()}}
    for name, shift in (("unlearned", 0.0 if same else gap), ("original", original_gap)):
        if shift is None:
            continue
        art.logits[name] = {p: v.copy() for p, v in base.items()}
        art.scores[name] = {"LossAttack": {"forget": scores["forget"] + shift, "test": scores["test"].copy()}}
    return art


def test_criteria_three_way_on_constructed_runs():
    # a copy of the retrained model: every gap is 0 with a zero-width interval -> PASS; the original differs
    checks = {c["criterion"]: c for c in evaluate_criteria([_artifacts(0, same=True, original_gap=3.0)],
                                                            Tolerances(), 2000)}
    assert checks["mia/LossAttack"]["verdict"] == "pass" and checks["mia/LossAttack"]["estimate"] == 0.0
    assert checks["mia/LossAttack"]["has_power"] and checks["mia/LossAttack"]["counted"]
    assert checks["mia/LossAttack"]["power"]["verdict"] == "fail"  # the original stands out
    # the logits are the same for all models: forget accuracy cannot tell the original -> no power, not counted
    assert checks["forget_accuracy"]["has_power"] is False and not checks["forget_accuracy"]["counted"]
    assert checks["test_auc_drop"]["sided"] == "upper"
    # a large shift: the patient-level attack AUC gap is far outside +-0.05 -> FAIL, "under-unlearned"
    big = {c["criterion"]: c for c in evaluate_criteria([_artifacts(1, gap=3.0, original_gap=3.0)], Tolerances(),
                                                         2000)}
    mia = big["mia/LossAttack"]
    assert mia["verdict"] == "fail" and mia["ci95"][0] > 0.05 and mia["direction"] == "under-unlearned"
    # a smaller shift with 24 patients: the interval straddles the tolerance -> INCONCLUSIVE, with what would decide
    art = _artifacts(2, gap=0.2, original_gap=3.0)
    mia = {c["criterion"]: c for c in evaluate_criteria([art], Tolerances(), 2000)}["mia/LossAttack"]
    assert mia["verdict"] == "inconclusive", mia
    assert mia["units"] == 24 and mia["units_needed"] and mia["units_needed"] > 24
    # the estimate is scikit-learn's patient-level AUC (mean score per patient) of unlearned minus retrained
    t = art.scores["unlearned"]["LossAttack"]["test"]
    y = np.r_[np.ones(24), np.zeros(40)]
    u_f = art.scores["unlearned"]["LossAttack"]["forget"].reshape(24, 2).mean(1)
    r_f = art.scores["retrained"]["LossAttack"]["forget"].reshape(24, 2).mean(1)
    assert mia["estimate"] == pytest.approx(roc_auc_score(y, np.r_[u_f, t]) - roc_auc_score(y, np.r_[r_f, t]))


def test_criteria_over_runs_resample_seeds_and_report_the_noise_floor():
    runs = [_artifacts(s, gap=0.2, original_gap=3.0) for s in (3, 4, 5)]
    one = {c["criterion"]: c for c in evaluate_criteria(runs[:1], Tolerances(), 2000)}
    three = {c["criterion"]: c for c in evaluate_criteria(runs, Tolerances(), 2000)}
    assert three["mia/LossAttack"]["runs"] == 3 and one["mia/LossAttack"]["noise_floor"] is None
    estimates = [evaluate_criteria([r], Tolerances(), 2000)[0]["estimate"] for r in runs]
    assert three["mia/LossAttack"]["estimate"] == pytest.approx(np.mean(estimates))
    # the three synthetic retrained models differ (different seeds): their mean |gap| is the noise floor
    assert three["mia/LossAttack"]["noise_floor"] > 0


def test_criteria_over_runs_fail_only_beyond_the_noise_floor():
    # every run's unlearned model is off by the same shift, but the retrained models of the runs differ from each
    # other by more: the gap is outside the tolerance yet within the retrain-vs-retrain floor -> not a FAIL
    runs = [_artifacts(s, gap=0.8, original_gap=3.0) for s in (3, 4, 5)]
    rng = np.random.default_rng(9)
    for art in runs:  # each run's retrained model gets its own seed noise on the forget patients' scores
        art.scores["retrained"]["LossAttack"]["forget"] = art.scores["retrained"]["LossAttack"]["forget"] \
            + rng.normal(0, 2.5)
    checks = {c["criterion"]: c for c in evaluate_criteria(runs, Tolerances(), 2000)}
    mia = checks["mia/LossAttack"]
    assert mia["noise_floor"] > 0.05 and mia["fail_band"] == pytest.approx(max(0.05, mia["noise_floor"]))
    lo, hi = mia["ci95"]
    assert 0.05 < lo < mia["noise_floor"], mia  # outside the tolerance, not beyond the floor
    assert mia["verdict"] == "inconclusive" and "noise floor" in mia["reason"]
    # the same runs with one retrained model: no floor, and the same interval would have FAILed
    alone = {c["criterion"]: c for c in evaluate_criteria(runs[:1], Tolerances(), 2000)}["mia/LossAttack"]
    assert alone["noise_floor"] is None and alone["verdict"] == "fail"


def test_one_forget_patient_is_never_a_group_verdict():
    # a retrained model against another retrained model on a single forget patient: their predictions on it differ
    # (seed noise), which a patient bootstrap over one patient cannot see -> INCONCLUSIVE, never FAIL or PASS
    art = _artifacts(0, same=True, original_gap=3.0)
    one = art.groups["forget"] == 0
    art.groups["forget"], art.labels["forget"] = art.groups["forget"][one], art.labels["forget"][one]
    for model in art.logits:
        art.logits[model]["forget"] = art.logits[model]["forget"][one]
        art.scores[model]["LossAttack"]["forget"] = art.scores[model]["LossAttack"]["forget"][one]
    art.logits["unlearned"]["forget"] = -art.logits["unlearned"]["forget"]  # every prediction flips
    art.scores["unlearned"]["LossAttack"]["forget"] = art.scores["unlearned"]["LossAttack"]["forget"] + 3.0
    checks = {c["criterion"]: c for c in evaluate_criteria([art], Tolerances(), 2000)}
    for name in ("mia/LossAttack", "forget_accuracy"):
        assert checks[name]["units"] == 1 and checks[name]["verdict"] == "inconclusive", checks[name]
        assert abs(checks[name]["estimate"]) > 0.05  # far outside the tolerance: would have FAILed
    assert checks["test_auc_drop"]["units"] == 40 and checks["test_auc_drop"]["verdict"] == "pass"  # test side decides


def test_criteria_need_unlearned_and_retrained():
    art = _artifacts(0, same=True)
    del art.logits["unlearned"]
    assert evaluate_criteria([art], Tolerances(), 2000) == []
    assert evaluate_criteria([_artifacts(0, same=True)], Tolerances(), 0) == []  # no intervals: nothing judged


def test_time_ratio_is_judged_as_a_measured_value():
    config = AuditConfig(quantization=[], relearn_steps=0)
    checks = {c["criterion"]: c for c in criteria([_artifacts(0, same=True)], Tolerances(time_ratio=0.5), config,
                                                  {"ratio": {"mean": 0.2, "std": 0.0, "n": 1}})}
    assert checks["time_ratio"]["verdict"] == "pass" and checks["time_ratio"]["estimate"] == 0.2
    # no original: no power check, every judged criterion counts; a copy of the retrained model passes them all
    assert verdict_of(list(checks.values()))["verdict"] == "pass"


def test_audit_config_rejects_bad_values_naming_the_flag():
    with pytest.raises(ValueError, match="--audit.bootstrap"):
        AuditConfig(bootstrap=200)
    with pytest.raises(ValueError, match="--audit.lira_variance per_sample needs --audit.reference_models >= 4"):
        AuditConfig(reference_models=2, lira_variance="per_sample")
    with pytest.raises(ValueError, match="audit.attacks"):
        AuditConfig(attacks=["LossAtack"])


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
            lo, hi = values["patient_auc_ci95"]
            assert lo <= values["patient_auc"] + 1e-9 and values["patient_auc"] - 1e-9 <= hi, (name, attack)
    mia_checks = [c for c in saved["criteria"] if c["criterion"].startswith("mia/")]
    assert mia_checks and all(len(c["ci95"]) == 2 and len(c["ci90"]) == 2 for c in mia_checks)
    for c in saved["criteria"]:
        assert c["verdict"] in ("pass", "inconclusive", "fail", "n/a")
        forgetting = not c["criterion"].startswith(("test_auc_drop", "quantization/"))
        assert (c["power"] is not None and isinstance(c["has_power"], bool)) == forgetting, c["criterion"]
        assert c["noise_floor"] == pytest.approx(0.0, abs=1e-12)  # two runs with the same retrained model
    # the per-patient test of every model, patients by salted hash only
    certificate = saved["per_patient"][0]
    assert set(certificate) == {"original", "unlearned", "retrained"}
    for res in certificate.values():
        assert 0 < res["combined_p"] <= 1 and res["forget_patients"] == len(res["patients"])
        assert all(len(r["patient"]) == 16 and 0 < r["p_value"] <= 1 for r in res["patients"])
    assert saved["timing"]["ratio"]["mean"] == pytest.approx(
        saved["timing"]["unlearn_seconds"]["mean"] / saved["timing"]["retrain_seconds"]["mean"])
    assert saved["verdict"] in ("pass", "inconclusive", "fail")
    assert saved["verdict_detail"]["criteria"] == len(saved["criteria"])
    names = {c["criterion"] for c in saved["criteria"]}
    assert {"mia/LossAttack", "mia/LiRAAttack", "forget_accuracy", "test_auc_drop", "quantization/int8",
            "relearning"} <= names
    assert len(list((out / "reference_models").glob("*/design.json"))) == 1  # both runs: one cached set
    for plot in ("roc", "histograms", "relearning", "quantization", "utility"):
        png = out / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    md = (out / "audit.md").read_text()
    assert "## Criteria" in md and "## Membership inference" in md and "](plots/roc.png)" in md
    assert "± 0.000" in md  # mean ± std over the two runs
    html = (out / "audit.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # self-contained: every plot embedded
    assert not re.search(r'src="(?!data:)', html)  # no external file or URL
    assert "PASS" in html or "FAIL" in html or "INCONCLUSIVE" in html
    assert "Per-patient forgetting test" in md


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


def test_reference_models_are_cached_and_reused_across_requests(audit, trained_ckpt, forget_file,
                                                                tiny_datamodule_kwargs, tmp_path):
    from medforget.audit.classifier.reference_models import train_reference_models
    from medforget.datamodules.splits import write_patient_ids

    _, out = audit
    cache = out / "reference_models"
    before = {p: p.stat().st_mtime_ns for p in cache.glob("*/*.ckpt")}
    dm = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    paths, in_sets = train_reference_models(trained_ckpt, dm, dict(tiny_datamodule_kwargs), 2, cache, epochs=1,
                                            seed=0, accelerator="cpu")
    assert {p: p.stat().st_mtime_ns for p in paths} == before  # reused, not retrained
    forget = set(read_patient_ids(forget_file))
    train = set(dm.df.loc[dm.indices["train"], "patient_id"])
    assert not forget & (in_sets[0] | in_sets[1])  # no reference model saw a forget patient
    assert in_sets[0] | in_sets[1] == train - forget and not in_sets[0] & in_sets[1]  # each retain patient IN once
    ckpt = load_classifier(paths[0])
    assert ckpt.provenance["kind"] == "reference" and ckpt.provenance["in_patients"] == len(in_sets[0])
    # a request contained in the cached one reuses the same models; its other patients are now OUT for both
    smaller = write_patient_ids(sorted(forget)[:2], tmp_path / "smaller.txt")
    dm2 = DicomReportDataModule(mode="evaluate", forget=str(smaller), selection_fraction=0.0,
                                **tiny_datamodule_kwargs)
    dm2.setup()
    paths2, in_sets2 = train_reference_models(trained_ckpt, dm2, dict(tiny_datamodule_kwargs), 2, cache, epochs=1,
                                              seed=0, accelerator="cpu")
    assert paths2 == paths and in_sets2 == in_sets
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/*.ckpt")} == before
    # the same hospital under another path (a moved or symlinked run folder): the recipe holds the manifest's content
    # hash, not its path, so the cached models are reused
    manifest = Path(tiny_datamodule_kwargs["manifest"])
    (tmp_path / "moved").symlink_to(manifest.parent, target_is_directory=True)
    moved = {**tiny_datamodule_kwargs, "manifest": str(tmp_path / "moved" / manifest.name)}
    dm3 = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **moved)
    dm3.setup()
    paths3, _ = train_reference_models(trained_ckpt, dm3, dict(moved), 2, cache, epochs=1, seed=0, accelerator="cpu")
    assert paths3 == paths
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/*.ckpt")} == before


def test_criterion_value_never_prints_a_failing_value_equal_to_its_tolerance():
    from medforget.audit.render import criterion_value

    assert criterion_value(0.89985, 0.9) == "0.89985"  # 0.900 would read as passing ">= 0.9"
    assert criterion_value(0.9, 0.9) == "0.900"
    assert criterion_value(0.267, 0.05) == "0.267"
    assert criterion_value(float("nan"), 0.05) == "n/a"


def test_quantization_recovery_is_relative_to_the_retrained_models_own():
    """A copy of the retrained model recovers nothing, even when quantization moves its forget accuracy (a noisy int4
    on a few patients): the gap is 0 exactly and the criterion passes. A model whose quantized copy regains the
    original's forget predictions beyond that is caught."""
    art = _artifacts(3, same=True, original_gap=0.0)
    y = art.labels["forget"]
    art.logits["original"]["forget"] = 5.0 * np.eye(4)[y]  # the original knows every forget study
    noisy = art.logits["retrained"]["forget"].copy()
    noisy[:10] = 5.0 * np.eye(4)[(y[:10] + 1) % 4]  # quantization flips 10 forget predictions (to wrong labels)
    art.quantized = {"retrained": {"int4": noisy}, "unlearned": {"int4": noisy.copy()},
                     "original": {"int4": art.logits["original"]["forget"].copy()}}
    crit = {c["criterion"]: c for c in evaluate_criteria([art], Tolerances(), 2000)}["quantization/int4"]
    assert crit["estimate"] == 0.0 and crit["verdict"] == "pass", crit
    # the unlearned model's quantized copy returns to the original's predictions: recovery 1 -> FAIL
    art.quantized["unlearned"]["int4"] = art.logits["original"]["forget"].copy()
    crit = {c["criterion"]: c for c in evaluate_criteria([art], Tolerances(), 2000)}["quantization/int4"]
    u = (art.logits["unlearned"]["forget"].argmax(1) == y).mean()
    r_q = (noisy.argmax(1) == y).mean()
    expected = (1.0 - u - (r_q - u)) / (1.0 - u)  # ((q(u) - u) - (q(r) - r)) / (o - u), u = r
    assert crit["estimate"] == pytest.approx(expected)
    assert crit["verdict"] == "fail", crit
