"""The language-model audit end to end on the tiny fixtures (through the ``evaluate-lm`` CLI), its files and schema,
that no forget patient's name, MRN, date of birth or note reaches any output, pass/fail criteria and model checks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from medforget.audit.lm.audit import run_lm_audit
from medforget.audit.lm.checks import check_models
from medforget.audit.lm.config import LM_SCHEMA_VERSION, LMAuditConfig, LMTolerances
from medforget.audit.lm.tables import format_lm_table
from medforget.cli import main
from medforget.commands import evaluate_lm
from medforget.systems.lm import export_lm, load_lm
from tests.llm.conftest import tiny_lm_datamodule

FAST = ["--audit.retain_questions=24", "--audit.holdout_questions=24", "--audit.max_new_tokens=24",
        "--audit.bootstrap=200", "--audit.semeval_max_new_tokens=24"]


@pytest.fixture(scope="module")
def original_ckpt(tiny_lm_ckpt, tmp_path_factory) -> Path:
    """The tiny original, fine-tuned a few more steps on the forget patients so that it clearly knows them (the tiny
    fixture's 6 epochs leave every patient about as unknown as a never-seen one)."""
    model = load_lm(tiny_lm_ckpt).train()
    dm = tiny_lm_datamodule()
    dm.setup()
    examples = dm.examples(dm.parts["forget"])
    batch = model.encode([e["prompt"] for e in examples], [e["text"] for e in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(20):
        nll, count = model.sequence_nll(batch)
        optimizer.zero_grad()
        (nll.sum() / count.sum()).backward()
        optimizer.step()
    return export_lm(model.eval(), tmp_path_factory.mktemp("lm_memorised") / "model.ckpt", model.provenance)


@pytest.fixture(scope="module")
def perturbed_ckpt(original_ckpt, tmp_path_factory) -> Path:
    """A stand-in "unlearned" model: the original with a little noise on every weight."""
    model = load_lm(original_ckpt)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * p.std() * torch.randn(p.shape, generator=generator))
    provenance = {**model.provenance, "kind": "unlearned", "method": "Noise", "unlearn_seconds": 1.5}
    return export_lm(model, tmp_path_factory.mktemp("lm_noise") / "model.ckpt", provenance)


@pytest.fixture(scope="module")
def audit(original_ckpt, perturbed_ckpt, tiny_retain_lm_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_audit")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = evaluate_lm([f"--original={original_ckpt}", f"--unlearned={perturbed_ckpt}",
                              f"--retain={tiny_retain_lm_ckpt}", f"--out={out}", *FAST])  # no --data: provenance
    return out, report, printed.getvalue()


def _strict(text: str):
    def bad(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=bad)


def test_lm_audit_files_and_schema(audit):
    out, report, printed = audit
    for name in ("lm_audit.json", "lm_audit.md", "lm_audit.html", "table.txt", "plots/lm_truth_ratios.png",
                 "plots/lm_roc.png", "plots/lm_extraction.png"):
        assert (out / name).is_file(), name
    written = _strict((out / "lm_audit.json").read_text())
    assert written["schema"] == "medforget.lm_audit" and written["schema_version"] == LM_SCHEMA_VERSION == 2
    for key in ("created", "code", "config", "data", "forget_request", "models", "gaps_to_retain", "timing",
                "criteria", "verdict", "verdict_summary", "power", "headline", "directions", "semeval", "bootstrap",
                "audit_seconds"):
        assert key in written, key
    assert set(written["models"]) == {"retain", "original", "unlearned", "unlearned@int8", "unlearned@int4"}
    assert written["config"]["cli"]["data"]["num_patients"] == 30  # taken from the original's provenance
    assert written["config"]["truth_ratio_base"] == "answer"  # a from-scratch model
    identity = written["data"]["corpus_identity"]
    assert len(identity["corpus_sha256"]) == 64 and identity["parts"]["forget"]["patients"] == 3
    assert written["data"]["probes"]["questions"] == {"forget": 18, "retain": 24, "holdout": 24}
    unlearned = written["models"]["unlearned"]
    for key in ("forget", "retain", "holdout", "model_utility", "holdout_utility", "forget_quality", "extraction",
                "mia", "provenance"):
        assert key in unlearned, key
    assert set(unlearned["mia"]) == {"loss", "zlib", "min_k", "min_k_plus_plus", "reference"}
    for attack in unlearned["mia"].values():
        assert {"auc", "privleak", "auc_ci95", "privleak_ci95", "tpr@1%fpr"} <= set(attack)
    assert set(written["models"]["unlearned@int4"]["recovered_fraction"]) >= {"forget_probability",
                                                                             "extraction_rate"}
    assert written["gaps_to_retain"]["unlearned"]["forget"]["probability"] == pytest.approx(
        unlearned["forget"]["probability"] - written["models"]["retain"]["forget"]["probability"])
    assert written["timing"]["unlearn_seconds"] == 1.5 and written["timing"]["retain_train_seconds"] > 0
    headline = written["headline"]["attack"]
    assert {c["criterion"] for c in written["criteria"]} == {
        "forget_quality", "model_utility", "extraction", "extraction/int8", "extraction/int4", f"privleak/{headline}"}
    for c in written["criteria"]:
        assert len(c["ci90"]) == len(c["ci95"]) == 2, c
        # the tiny retain-only model has no utility to keep (0): its ratio is not measurable, n/a
        assert c["verdict"] in ("pass", "inconclusive", "fail") or c["criterion"] == "model_utility", c
        assert c["direction"] in ("under-unlearned", "over-unlearned", "indistinguishable", "below the retain-only "
                                  "level", "above the retain-only model", "below the retain-only model", "n/a")
        assert c["power"]["has_power"] in (True, False, None)
    # the headline is chosen on the original and the retain-only model: an attack with power, if any has
    table = written["headline"]["attacks"]
    assert set(table) == set(unlearned["mia"]) and written["headline"]["muse_headline"] == "min_k"
    assert table[headline]["has_power"] or not any(t["has_power"] for t in table.values())
    assert written["config"]["audit"]["min_k"] == 0.4
    assert written["verdict"] in ("pass", "fail", "inconclusive", "n/a")
    assert "forgetting criteria had power" in written["verdict_summary"]
    semeval = written["semeval"]
    assert set(semeval["models"]) == {"retain", "original", "unlearned"} and "MMLU" in semeval["note"]
    for m in semeval["models"].values():
        assert len(m["terms"]) == 4 and 0 <= m["final"] <= 1 and len(m["final_ci95"]) == 2
        assert m["final"] == pytest.approx((m["task_aggregate"] + m["mia_score"] + m["utility"]) / 3)
    assert semeval["models"]["original"]["means"]["forget"]["clinical-notes"]["regurgitation"] > \
        semeval["models"]["retain"]["means"]["forget"]["clinical-notes"]["regurgitation"]
    assert set(written["directions"]["unlearned"]) >= {"forget probability", "extraction rate", "AUC loss"}
    assert report["verdict"] == written["verdict"] and "lm_audit.json" in printed
    html = (out / "lm_audit.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<title>medforget language-model audit</title>" in html
    for text in (html, (out / "lm_audit.md").read_text()):
        assert "SemEval-2025 Task 4" in text and "power (original)" in text and "under-unlearned" in text
    assert "SemEval-2025 Task 4" in printed and "forgetting criteria had power" in printed


def test_lm_audit_original_is_far_from_retain_only(audit):
    _, report, _ = audit
    models = report["models"]
    assert models["retain"]["forget_quality"]["p_value"] == 1.0
    assert models["original"]["forget_quality"]["p_value"] < 0.05  # the original still knows the forget patients
    assert models["original"]["forget"]["probability"] > models["retain"]["forget"]["probability"]
    assert models["retain"]["mia"]["reference"]["auc"] == 0.5  # its own reference: every score is 0
    assert models["retain"]["mia"]["loss"]["privleak"] == 0.0


def test_lm_audit_outputs_hold_no_forget_patient_data(audit):
    out, _, printed = audit
    dm = tiny_lm_datamodule()
    dm.setup()
    secrets = set()
    for p in dm.parts["forget"]:
        record = dm.records[p]
        secrets |= {record.patient_id, record.name, record.mrn, record.dob, *record.notes,
                    *(q.answer for q in record.qa), *(q.question for q in record.qa)}
        secrets |= set(record.name.split())  # first and last names on their own
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) >= 8
    for f in files:
        text = f.read_bytes().decode("utf-8", errors="ignore")
        leaked = [s for s in secrets if len(s) >= 4 and s in text]
        assert not leaked, f"{f.relative_to(out)} contains forget-patient data"
    assert "verdict" in printed and not [s for s in secrets if len(s) >= 4 and s in printed]


def test_lm_audit_of_the_retain_model_against_itself(tiny_retain_lm_ckpt, tmp_path):
    config = LMAuditConfig(retain_questions=12, holdout_questions=12, max_new_tokens=16, attacks=["loss", "reference",
                                                                                                  "min_k_plus_plus"],
                           quantization=[], bootstrap=200, plots=False, semeval_max_new_tokens=16)
    report = run_lm_audit({"unlearned": tiny_retain_lm_ckpt, "retain": tiny_retain_lm_ckpt}, tiny_lm_datamodule(),
                          tmp_path, config)
    unlearned = report["models"]["unlearned"]
    assert unlearned["forget_quality"]["p_value"] == 1.0 and unlearned["forget_quality"]["statistic"] == 0.0
    assert all(a["privleak"] == 0.0 for a in unlearned["mia"].values())
    checks = {c["criterion"]: c["passed"] for c in report["criteria"]}
    utility = checks.pop("model_utility")
    assert utility in (True, None)  # None: the tiny retain-only model has no utility to keep
    assert checks == {"forget_quality": True, "extraction": True, "privleak/loss": True}  # Min-K% not run: LOSS
    assert report["verdict"] == ("pass" if utility else "inconclusive")  # an unmeasurable criterion blocks PASS
    assert all(c["power"]["has_power"] is None for c in report["criteria"])  # no original: power not measured
    assert "Δ unlearned − retain" in format_lm_table(report)
    assert not (tmp_path / "plots").exists()


def test_check_models_refuses_mismatched_models():
    dm = tiny_lm_datamodule()
    data = {"num_patients": 30, "corpus_seed": 0, "split_seed": 0, "holdout_fraction": 0.2, "forget_fraction": 0.1}
    check_models({"retain": {"data": {**data, "exclude_forget": True}}, "unlearned": {"kind": "unlearned",
                                                                                      "data": data}}, dm)
    with pytest.raises(ValueError, match="exclude_forget"):
        check_models({"retain": {"data": {**data, "exclude_forget": False}}}, dm)
    with pytest.raises(ValueError, match="saw some forget patients"):
        check_models({"retain": {"data": {**data, "exclude_forget": True, "forget_fraction": 0.05}}}, dm)
    with pytest.raises(ValueError, match="forget fraction"):
        check_models({"unlearned": {"kind": "unlearned", "data": {**data, "forget_fraction": 0.2}}}, dm)
    with pytest.raises(ValueError, match="num_patients"):
        check_models({"original": {"data": {**data, "num_patients": 40}}}, dm)


def test_lm_audit_config_and_cli_errors(tiny_lm_ckpt, tiny_retain_lm_ckpt, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown attack"):
        LMAuditConfig(attacks=["gradnorm"])
    with pytest.raises(ValueError, match="headline_attack"):
        LMAuditConfig(attacks=["loss"], headline_attack="zlib")
    with pytest.raises(ValueError, match="semeval"):
        LMAuditConfig(attacks=["zlib"])
    with pytest.raises(ValueError, match="extraction_gap"):
        LMTolerances(extraction_gap=0.0)
    with pytest.raises(ValueError, match="quantization"):
        LMAuditConfig(quantization=["int3"])
    with pytest.raises(ValueError, match="retain"):
        run_lm_audit({"original": tiny_lm_ckpt}, tiny_lm_datamodule(), tmp_path)
    with pytest.raises(SystemExit):
        evaluate_lm([f"--original={tiny_lm_ckpt}", f"--out={tmp_path}"])  # no --unlearned / --retain
    with pytest.raises(SystemExit, match="num_patients"):  # one clear line, no traceback
        main(["evaluate-lm", f"--original={tiny_lm_ckpt}", f"--unlearned={tiny_lm_ckpt}",
              f"--retain={tiny_retain_lm_ckpt}", f"--out={tmp_path}", "--data.num_patients=31"])
