"""The real CLI end to end on tiny data: synth -> train -> retrain -> unlearn -> evaluate, plus bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medforget.cli import main
from medforget.commands import evaluate, synth, train, unlearn
from medforget.core.checkpoint import read_checkpoint
from tests.conftest import TINY_DATA

CONF = Path(__file__).parent / "conf"
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def test_synth_cli(tmp_path):
    manifest = synth([f"--out={tmp_path / 'h'}", "--num_patients=3", "--image_size=16"])
    assert manifest.is_file() and len(list((tmp_path / "h" / "images").rglob("*.dcm"))) >= 3
    with pytest.raises(FileExistsError):
        synth([f"--out={tmp_path / 'h'}", "--num_patients=3", "--image_size=16"])


def test_fast_dev_run_from_yaml(tiny_hospital, tmp_path):
    out = tmp_path / "run"
    path = train([f"--config={CONF / 'train_tiny.yaml'}", f"--data.manifest={tiny_hospital}",
                  "--trainer.fast_dev_run=true", f"--out={out}", *QUIET])
    assert path.is_file()


def test_full_flow(tiny_hospital, forget_file, trained_ckpt, retrained_ckpt, tmp_path):
    """train -> unlearn -> evaluate through the CLI functions; the input checkpoint is untouched; the audit is
    written with the tolerances given on the command line."""
    data = [f"--data.manifest={tiny_hospital}", *TINY_DATA]
    digest = hashlib.sha256(trained_ckpt.read_bytes()).hexdigest()
    unlearned = unlearn(["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}", *data,
                         "--trainer.max_epochs=1", *QUIET, f"--out={tmp_path / 'unlearned'}"])
    assert hashlib.sha256(trained_ckpt.read_bytes()).hexdigest() == digest
    out = tmp_path / "eval"
    report = evaluate([f"--original={trained_ckpt}", f"--unlearned={unlearned}", f"--retrained={retrained_ckpt}",
                       f"--forget={forget_file}", *data, f"--out={out}", "--accelerator=cpu",
                       "--audit.relearn_steps=2", "--audit.quantization=[int4]", "--audit.plots=false",
                       "--tolerances.mia_auc_gap=1.0"])
    saved = json.loads((out / "audit.json").read_text())
    assert saved["schema_version"] == 2
    run = saved["runs"][0]
    assert set(run["models"]) == {"original", "unlearned", "retrained"}
    assert run["models"]["unlearned"]["provenance"]["method"] == "FineTune"
    assert run["models"]["retrained"]["provenance"]["kind"] == "retrained"
    gap = run["gaps_to_retrained"]["original"]["mia"]["LossAttack"]["auc"]
    expected = run["models"]["original"]["mia"]["LossAttack"]["auc"] - run["models"]["retrained"]["mia"][
        "LossAttack"]["auc"]
    assert gap == pytest.approx(expected)
    # the forget patients that checkpoint selection saw (recorded in the unlearned checkpoint) are not audited
    parts = report["data"]["parts"]
    assert parts["forget"]["patients"] + parts["forget_selection"]["patients"] == len(forget_file.read_text().split())
    assert run["models"]["unlearned"]["provenance"]["selection_split"]["patients"] == parts["forget_selection"][
        "patients"] >= 1
    assert saved["config"]["tolerances"]["mia_auc_gap"] == 1.0
    mia_checks = [c for c in saved["criteria"] if c["criterion"].startswith("mia/")]
    # at tolerance 1.0 every AUC gap is inside (PASS), and for the same reason the original cannot fail: no power,
    # so these criteria do not count
    assert mia_checks and all(c["verdict"] == "pass" and c["tolerance"] == 1.0 for c in mia_checks)
    assert all(c["has_power"] is False and not c["counted"] for c in mia_checks)
    assert [c["criterion"] for c in saved["criteria"] if c["criterion"].startswith("quantization/")] == [
        "quantization/int4"]
    assert saved["config"]["cli"]["audit"]["relearn_steps"] == 2
    assert (out / "audit.md").is_file() and (out / "audit.html").is_file() and not (out / "plots").exists()
    table = (out / "table.txt").read_text()
    assert "MIA AUC" in table and "verdict:" in table


def test_evaluate_rejects_bad_audit_options(tiny_hospital, forget_file, trained_ckpt, tmp_path, capsys):
    base = [f"--original={trained_ckpt}", f"--forget={forget_file}", f"--data.manifest={tiny_hospital}",
            f"--out={tmp_path}"]
    with pytest.raises(ValueError, match="did you mean 'LossAttack'"):
        evaluate([*base, "--audit.attacks=[LosAttack]"])
    with pytest.raises(ValueError, match="reference_models"):
        evaluate([*base, "--audit.attacks=[LiRAAttack]"])
    with pytest.raises(ValueError, match="unknown scheme"):
        evaluate([*base, "--audit.quantization=[int3]"])
    with pytest.raises(SystemExit):
        evaluate([*base, "--tolerances.mia_auc_gapp=0.1"])
    assert "mia_auc_gapp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate([*base, "--unlearned", str(trained_ckpt), str(trained_ckpt)])  # 2 unlearned for 1 original
    assert "same number of checkpoints" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one unlearned against the same retrained model twice: no noise floor
        evaluate([*base, "--retrained", str(trained_ckpt), str(trained_ckpt)])
    assert "same checkpoint twice" in capsys.readouterr().err


def test_audit_runs_broadcast_one_unlearned_over_several_retrained():
    from medforget.commands.classifier import audit_runs

    runs = audit_runs({"original": ["o"], "unlearned": ["u"], "retrained": ["r0", "r1", "r2"]})
    assert runs == [{"original": "o", "unlearned": "u", "retrained": r} for r in ("r0", "r1", "r2")]
    assert audit_runs({"original": ["o0", "o1"], "retrained": ["r0", "r1"]}) == [
        {"original": "o0", "retrained": "r0"}, {"original": "o1", "retrained": "r1"}]
    with pytest.raises(ValueError, match="same number"):  # several unlearned: runs must pair up one to one
        audit_runs({"original": ["o"], "unlearned": ["u0", "u1"], "retrained": ["r0", "r1", "r2"]})


def test_unlearn_from_yaml_config(tiny_hospital, forget_file, trained_ckpt, tmp_path):
    out = unlearn([f"--config={CONF / 'unlearn_tiny.yaml'}", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                   f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, f"--out={tmp_path / 'u'}"])
    assert out.is_file()


def test_unlearn_seconds_include_the_data_setup(tiny_hospital, forget_file, trained_ckpt, tmp_path, monkeypatch):
    # train's fit_seconds include decoding its studies (the datamodule is set up inside fit), so unlearn_seconds
    # must include the unlearning run's own decoding, or the time ratio to retraining compares unlike work
    import medforget.commands.classifier as commands
    from medforget.datamodules.dicom_report import DicomReportDataModule

    clock = {"now": 0.0}
    monkeypatch.setattr(commands.time, "perf_counter", lambda: clock["now"])
    setup = DicomReportDataModule.setup

    def slow_setup(self, stage=None):
        if self.df is None:
            clock["now"] += 100.0  # decoding, on the fake clock
        return setup(self, stage)

    monkeypatch.setattr(DicomReportDataModule, "setup", slow_setup)
    out = unlearn(["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                   f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_steps=1", *QUIET,
                   f"--out={tmp_path / 'u'}"])
    assert read_checkpoint(out)["medforget"]["provenance"]["unlearn_seconds"] == 100.0


def test_unlearn_refuses_to_overwrite_its_input(tiny_hospital, forget_file, trained_ckpt):
    digest = hashlib.sha256(trained_ckpt.read_bytes()).hexdigest()
    with pytest.raises(FileExistsError):
        unlearn(["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_steps=1", *QUIET,
                 f"--out={trained_ckpt.parent}"])
    with pytest.raises(FileExistsError, match="input checkpoint"):
        unlearn(["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_steps=1", *QUIET,
                 f"--out={trained_ckpt.parent}", "--overwrite=true"])
    assert hashlib.sha256(trained_ckpt.read_bytes()).hexdigest() == digest


def test_unknown_forget_patient_is_a_clear_error(tiny_hospital, trained_ckpt, tmp_path, capsys):
    request = tmp_path / "forget.txt"
    request.write_text("NOT-A-PATIENT-42\n")
    with pytest.raises(SystemExit) as exc:
        main(["unlearn", "--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={request}",
              f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, f"--out={tmp_path / 'u'}"])
    message = str(exc.value.code)
    assert "not patients of this manifest" in message and str(request) in message
    assert "NOT-A-PATIENT-42" not in message  # the error names the entry, not the identifier


def test_split_mismatch_is_a_clear_error(tiny_hospital, forget_file, trained_ckpt, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", f"--original={trained_ckpt}", f"--forget={forget_file}",
              f"--data.manifest={tiny_hospital}", "--data.seed=123", f"--out={tmp_path}"])
    assert "split differs" in str(exc.value.code) or "not in the training split" in str(exc.value.code)


def test_config_typo_is_reported_by_name(tiny_hospital, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medforget", "train", f"--data.manifest={tiny_hospital}", "--model.learning_rat=0.1",
         f"--out={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_verb_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert "did you mean 'train'" in str(exc.value.code)
    main(["--help"])
    assert "unlearn" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["SSD", "SCRUB", "SalUn"])  # training-free, manual optimization, hard mask
def test_unlearn_cli_runs_each_kind_of_method(method, tiny_hospital, forget_file, trained_ckpt, tmp_path):
    out = unlearn([f"--method={method}", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                   f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_epochs=1", *QUIET,
                   f"--out={tmp_path / 'u'}"])
    provenance = read_checkpoint(out)["medforget"]["provenance"]
    assert provenance["method"] == method
