"""Checkpoint selection: validation parts only (no test patients), proxy gaps, and the CLI exporting the best epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medforget.commands import unlearn
from medforget.core.checkpoint import read_checkpoint
from medforget.datamodules import keys
from medforget.datamodules.dicom_report import RETAIN_SAMPLE_MIN, DicomReportDataModule
from medforget.datamodules.splits import selection_patients
from medforget.methods.classifier import selection
from medforget.systems.classifier import load_classifier
from tests.conftest import TINY_DATA


def test_unlearn_validation_parts_hold_no_test_patients(forget_file, tiny_datamodule_kwargs):
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    loaders = dm.val_dataloader()
    assert len(loaders) == len(keys.UNLEARN_VALIDATION_PARTS)
    rows = {part: {int(i) for b in loader for i in b[keys.INDEX]}
            for part, loader in zip(keys.UNLEARN_VALIDATION_PARTS, loaders, strict=True)}
    # selection sees only its part of the forget patients; the rest are what the audit scores
    assert rows[keys.FORGET_SELECTION] == set(dm.indices[keys.FORGET_SELECTION].tolist())
    assert rows[keys.FORGET_SELECTION] < set(dm.indices["forget"].tolist())
    audit = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs)
    audit.setup()
    audited = set(audit.indices["forget"].tolist())
    assert audited and not audited & rows[keys.FORGET_SELECTION]
    assert audited | rows[keys.FORGET_SELECTION] == set(dm.indices["forget"].tolist())
    assert not set(audit.indices["retain"].tolist()) & rows[keys.FORGET_SELECTION]  # still not members
    assert rows[keys.VAL] == set(dm.indices["val"].tolist())
    assert rows[keys.RETAIN_SAMPLE] <= set(dm.indices["retain"].tolist())
    assert rows[keys.RETAIN_SAMPLE]
    test_rows = set(dm.indices["test"].tolist())
    assert not test_rows & set().union(*rows.values())
    # the retain sample holds whole patients, as many as the forget part (at least RETAIN_SAMPLE_MIN)
    df = dm.df
    sample_patients = set(df.loc[sorted(rows[keys.RETAIN_SAMPLE]), "patient_id"])
    assert set(df.loc[df["patient_id"].isin(sample_patients)].index) <= set(dm.indices["retain"].tolist())
    wanted = max(df.loc[dm.indices["forget"], "patient_id"].nunique(), RETAIN_SAMPLE_MIN)
    assert len(sample_patients) == min(wanted, df.loc[dm.indices["retain"], "patient_id"].nunique())


def test_part_metrics_and_proxy_gaps_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    outputs = {part: (torch.randn(40, 4, generator=g), torch.arange(40) % 4) for part in keys.UNLEARN_VALIDATION_PARTS}
    metrics = selection.part_metrics(outputs)
    for part, name in ((keys.FORGET_SELECTION, "forget"), (keys.RETAIN_SAMPLE, "retain"), (keys.VAL, "val")):
        logits, labels = outputs[part]
        ref = roc_auc_score(labels.numpy(), logits.softmax(-1).numpy(), multi_class="ovr")
        assert metrics[f"{name}_auc"] == pytest.approx(ref, abs=1e-6)
    loss = {p: torch.nn.functional.cross_entropy(*outputs[p], reduction="none").numpy()
            for p in (keys.FORGET_SELECTION, keys.VAL)}
    members = np.r_[np.ones(40), np.zeros(40)]
    assert metrics["mia"] == pytest.approx(
        roc_auc_score(members, -np.r_[loss[keys.FORGET_SELECTION], loss[keys.VAL]]), abs=1e-6)

    reference = {"val_auc": 0.8, "val_f1": 0.6, "retain_auc": 1.0, "retain_accuracy": 1.0}
    gaps = selection.proxy_gaps(metrics, reference)
    assert gaps["forget_auc"] == pytest.approx(abs(metrics["forget_auc"] - 0.8))
    assert gaps["forget_f1"] == pytest.approx(abs(metrics["forget_f1"] - 0.6))
    assert gaps["val_auc"] == pytest.approx(abs(metrics["val_auc"] - 0.8))
    assert gaps["retain_auc"] == pytest.approx(abs(metrics["retain_auc"] - 1.0))
    assert gaps["retain_acc"] == pytest.approx(abs(metrics["retain_accuracy"] - 1.0))
    assert gaps["mia"] == pytest.approx(abs(metrics["mia"] - 0.5))
    assert gaps["score"] == pytest.approx(np.mean([gaps[k] for k in selection.GAP_NAMES]))
    # an undefined metric (single-class forget set: AUC is NaN) is left out of the mean, not propagated
    gaps = selection.proxy_gaps({**metrics, "forget_auc": math.nan}, reference)
    assert gaps["score"] == pytest.approx(np.mean([gaps[k] for k in selection.GAP_NAMES if k != "forget_auc"]))
    # no forget patient set aside (selection_fraction 0): the score rests on the retain sample and val only
    without = {k: v for k, v in metrics.items() if not k.startswith("forget") and k != "mia"}
    gaps = selection.proxy_gaps(without, reference)
    assert gaps["score"] == pytest.approx(np.mean([gaps["val_auc"], gaps["retain_auc"], gaps["retain_acc"]]))


def test_selection_patients_are_seeded_and_leave_enough_to_audit():
    patients = [f"p{i}" for i in range(10)]
    chosen = selection_patients(patients, 0.25, seed=3)
    assert chosen == selection_patients(list(reversed(patients)), 0.25, seed=3)  # order-free
    assert len(chosen) == 2 and set(chosen) < set(patients)
    assert selection_patients(patients, 0.0) == []
    assert len(selection_patients(["a", "b", "c"], 0.1)) == 1  # at least one when the fraction is positive
    with pytest.raises(ValueError, match="--data.selection_fraction"):
        selection_patients(["a", "b"], 0.25)  # 1 to select on leaves 1 to audit
    with pytest.raises(ValueError, match="--data.selection_fraction"):
        selection_patients(patients, 1.0)


def test_unlearn_with_selection_fraction_zero_validates_without_forget(forget_file, tiny_datamodule_kwargs):
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), selection_fraction=0.0,
                               **tiny_datamodule_kwargs)
    dm.setup()
    assert dm.validation_parts == (keys.RETAIN_SAMPLE, keys.VAL)
    assert len(dm.val_dataloader()) == 2
    audit = DicomReportDataModule(mode="evaluate", forget=str(forget_file), selection_fraction=0.0,
                                  **tiny_datamodule_kwargs)
    audit.setup()
    assert set(audit.indices["forget"].tolist()) == set(dm.indices["forget"].tolist())


def test_unlearn_exports_the_best_validation_epoch(tiny_hospital, forget_file, trained_ckpt, tmp_path):
    out = tmp_path / "u"
    target = unlearn(["--method=GradientAscent", "--model.lr=3e-3", f"--ckpt={trained_ckpt}",
                      f"--forget={forget_file}", f"--data.manifest={tiny_hospital}", *TINY_DATA,
                      "--trainer.max_epochs=3", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                      f"--out={out}"])
    chosen = read_checkpoint(target)["medforget"]["provenance"]["selection"]
    assert chosen["monitor"] == selection.SCORE
    best = list((out / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and chosen["selected"] == best[0].name
    state = torch.load(best[0], map_location="cpu", weights_only=True)
    # the selection reference is the original model on the validation parts, measured before any update
    reference = state["medforget_selection_reference"]
    assert set(reference) >= {"forget_auc", "retain_auc", "val_auc", "val_f1", "mia"}
    original = load_classifier(trained_ckpt).eval()
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), manifest=str(tiny_hospital), image_size=32,
                               batch_size=16)
    dm.setup()
    outputs = {}
    with torch.no_grad():
        for part, loader in zip(dm.validation_parts, dm.val_dataloader(), strict=True):
            batches = [original.prepare_batch(b) for b in loader]
            outputs[part] = (torch.cat([original.net(b)["fused"] for b in batches]),
                             torch.cat([b[keys.LABEL] for b in batches]))
    for name, value in selection.part_metrics(outputs).items():
        assert reference[name] == pytest.approx(value, abs=1e-5, nan_ok=True), name
    assert chosen["score"] == pytest.approx(state["medforget_selection"]["gaps"]["score"], abs=1e-6)
    assert state["epoch"] == chosen["epoch"]
    # the exported weights are those of the selected epoch, whichever epoch that was
    exported = load_classifier(target).state_dict()
    for name, value in exported.items():
        assert torch.equal(value, state["state_dict"][f"classifier.{name}"]), name


def test_unlearn_with_selection_disabled_keeps_the_last_weights(tiny_hospital, forget_file, trained_ckpt, tmp_path):
    target = unlearn(["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                      f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_epochs=1",
                      "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", f"--out={tmp_path / 'u'}",
                      "--checkpoint.monitor=null", "--checkpoint.save_top_k=0"])
    chosen = read_checkpoint(target)["medforget"]["provenance"]["selection"]
    assert chosen["selected"] == "last"


def test_reference_targets_shift_the_val_level_by_the_references_own_difference():
    from medforget.methods.classifier.selection import proxy_gaps, reference_targets

    original = {"val_auc": 0.80, "val_f1": 0.70, "retain_auc": 0.99, "retain_accuracy": 1.0}
    refs = [{"forget_auc": 0.60, "val_auc": 0.70, "forget_f1": 0.50, "val_f1": 0.60, "mia": 0.60},
            {"forget_auc": 0.66, "val_auc": 0.72, "forget_f1": float("nan"), "val_f1": 0.62, "mia": 0.56}]
    targets = reference_targets(original, refs)
    # these patients are harder than val for never-seen models: -0.10 and -0.06 AUC -> aim 0.08 below val
    assert targets["forget_auc_target"] == pytest.approx(0.80 - 0.08)
    assert targets["forget_f1_target"] == pytest.approx(0.70 - 0.10)  # the NaN reference is left out
    assert targets["mia_target"] == pytest.approx(0.58)
    metrics = {"forget_auc": 0.72, "forget_f1": 0.70, "val_auc": 0.80, "retain_auc": 0.99, "retain_accuracy": 1.0,
               "mia": 0.58}
    gaps = proxy_gaps(metrics, {**original, **targets})
    assert gaps["forget_auc"] == pytest.approx(0.0) and gaps["mia"] == pytest.approx(0.0)
    assert gaps["forget_f1"] == pytest.approx(0.10)  # at the val level, 0.10 above the calibrated target
    plain = proxy_gaps(metrics, original)  # without targets: the val level and chance
    assert plain["forget_auc"] == pytest.approx(0.08) and plain["mia"] == pytest.approx(0.08)
    assert reference_targets(original, [{"forget_auc": float("nan"), "val_auc": 0.7, "mia": float("nan")}]) == {}
