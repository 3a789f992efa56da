"""RefDistill: its references never saw a forget patient, are not the retrained model, and teach the student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medforget.audit.classifier.reference_models import train_reference_models
from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.classifier import RefDistill
from medforget.systems.classifier import load_classifier


def _dm(forget_file, tiny_datamodule_kwargs) -> DicomReportDataModule:
    return DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)


def _fit(method, dm, tmp_path, steps: int = 3) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        limit_val_batches=0)
    trainer.fit(method, datamodule=dm)


def _forget_rows(dm) -> set[int]:
    return {int(r) for part in ("forget", keys.FORGET_SELECTION) for r in dm.indices.get(part, [])}


@pytest.fixture(scope="module")
def reference_set(trained_ckpt, forget_file, tiny_datamodule_kwargs, tmp_path_factory):
    """Two tiny one-epoch reference models trained by the audit's own routine (seed 7), and their folder."""
    dm = _dm(forget_file, tiny_datamodule_kwargs)
    dm.setup("fit")
    paths, _ = train_reference_models(trained_ckpt, dm, dict(tiny_datamodule_kwargs), 2,
                                      tmp_path_factory.mktemp("refs"), epochs=1, seed=7, accelerator="cpu")
    return paths


def test_explicit_references_teach_the_forget_patients(trained_ckpt, forget_file, tiny_datamodule_kwargs,
                                                       reference_set, tmp_path):
    method = RefDistill(ckpt=str(trained_ckpt), lr=1e-2, reference_checkpoints=[str(p) for p in reference_set],
                        temperature=2.0, retain_kl_weight=0.0)
    dm = _dm(forget_file, tiny_datamodule_kwargs)
    _fit(method, dm, tmp_path, steps=1)
    assert method.reference_paths == list(reference_set)
    batch = next(method.part_batches("forget"))
    # reference_probs is the mean of the references' softened predictions (hand computation)
    refs = [load_classifier(p).net.eval() for p in reference_set]
    with torch.no_grad():
        expected = torch.stack([F.softmax(r(batch)["fused"] / 2.0, -1) for r in refs]).mean(0)
        assert torch.allclose(method.reference_probs(batch), expected, atol=1e-5)

    def forget_kl() -> float:
        method.eval()
        with torch.no_grad():
            student = F.log_softmax(method(batch)["fused"] / 2.0, -1)
            return float(F.kl_div(student, expected, reduction="batchmean"))

    before = forget_kl()
    _fit(method, dm, tmp_path, steps=15)
    assert forget_kl() < before, "distillation did not move the forget outputs towards the references"


@pytest.mark.parametrize("heads", ["all", "fused"])
def test_the_loss_distils_every_head(trained_ckpt, forget_file, tiny_datamodule_kwargs, reference_set, tmp_path,
                                     heads):
    method = RefDistill(ckpt=str(trained_ckpt), reference_checkpoints=[str(p) for p in reference_set],
                        temperature=2.0, forget_weight=1.5, retain_kl_weight=0.7, retain_ce_weight=0.3, heads=heads)
    dm = _dm(forget_file, tiny_datamodule_kwargs)
    _fit(method, dm, tmp_path, steps=1)
    method.eval()
    forget, retain = next(method.part_batches(keys.FORGET)), next(method.part_batches(keys.RETAIN))
    refs = [load_classifier(p).net.eval() for p in reference_set]
    with torch.no_grad():
        student_f, student_r, teacher_r = method(forget), method(retain), method.teacher(retain)
        names = list(student_f) if heads == "all" else ["fused"]
        assert heads == "fused" or set(names) == {"fused", "image", "text"}
        terms = {"forget_kl": [], "retain_kl": [], "retain_ce": []}
        for h in names:  # hand computation, head by head
            target = torch.stack([F.softmax(r(forget)[h] / 2.0, -1) for r in refs]).mean(0)
            terms["forget_kl"].append(4.0 * F.kl_div(F.log_softmax(student_f[h] / 2.0, -1), target,
                                                     reduction="batchmean"))
            terms["retain_kl"].append(4.0 * F.kl_div(F.log_softmax(student_r[h] / 2.0, -1),
                                                     F.softmax(teacher_r[h] / 2.0, -1), reduction="batchmean"))
            terms["retain_ce"].append(F.cross_entropy(student_r[h], retain[keys.LABEL]))
        expected = {k: torch.stack(v).mean() for k, v in terms.items()}
        losses = method.unlearning_loss(forget, retain)
    for k, v in expected.items():
        assert float(losses[k]) == pytest.approx(float(v), rel=1e-4, abs=1e-6), k
    total = 1.5 * expected["forget_kl"] + 0.7 * expected["retain_kl"] + 0.3 * expected["retain_ce"]
    assert float(losses["loss"]) == pytest.approx(float(total), rel=1e-4)
    with pytest.raises(ValueError, match="heads"):
        RefDistill(heads="image")


def test_references_that_saw_a_forget_patient_are_refused(trained_ckpt, forget_file, tiny_datamodule_kwargs,
                                                          reference_set, tmp_path):
    folder = tmp_path / "leaky"
    folder.mkdir()
    shutil.copy(reference_set[0], folder / "model_0.ckpt")
    design = json.loads((reference_set[0].parent / "design.json").read_text())
    design["excluded_rows"] = design["excluded_rows"][1:]  # one forget row was IN
    (folder / "design.json").write_text(json.dumps(design))
    method = RefDistill(ckpt=str(trained_ckpt), reference_checkpoints=[str(folder / "model_0.ckpt")])
    with pytest.raises(ValueError, match="exclude every forget patient"):
        _fit(method, _dm(forget_file, tiny_datamodule_kwargs), tmp_path)
    (folder / "design.json").unlink()
    method = RefDistill(ckpt=str(trained_ckpt), reference_checkpoints=[str(folder / "model_0.ckpt")])
    with pytest.raises(ValueError, match="design.json"):
        _fit(method, _dm(forget_file, tiny_datamodule_kwargs), tmp_path)


def test_the_retrained_model_is_refused_as_a_reference(trained_ckpt, retrained_ckpt, forget_file,
                                                       tiny_datamodule_kwargs, reference_set, tmp_path):
    folder = tmp_path / "retrained"
    folder.mkdir()
    shutil.copy(retrained_ckpt, folder / "model_0.ckpt")
    shutil.copy(reference_set[0].parent / "design.json", folder / "design.json")  # even with a covering design
    method = RefDistill(ckpt=str(trained_ckpt), reference_checkpoints=[str(folder / "model_0.ckpt")])
    with pytest.raises(ValueError, match="retrained model"):
        _fit(method, _dm(forget_file, tiny_datamodule_kwargs), tmp_path)


def test_own_references_exclude_every_forget_patient_and_differ_from_the_audits(
        trained_ckpt, forget_file, tiny_datamodule_kwargs, reference_set, tmp_path):
    method = RefDistill(ckpt=str(trained_ckpt), num_references=2, reference_epochs=1)
    dm = _dm(forget_file, tiny_datamodule_kwargs)
    _fit(method, dm, tmp_path, steps=1)
    folder = method.reference_paths[0].parent
    assert folder.parent == tmp_path / "reference_models"  # under the unlearn run's folder
    design = json.loads((folder / "design.json").read_text())
    assert _forget_rows(dm) <= set(design["excluded_rows"])
    assert design["seed"] == 1000 and design["seed"] != 0  # not the audit's default seed: other subsets and inits
    assert folder != reference_set[0].parent
    # a second run reuses the cached set through reference_dir instead of training again
    again = RefDistill(ckpt=str(trained_ckpt), num_references=2, reference_dir=str(tmp_path / "reference_models"))
    _fit(again, _dm(forget_file, tiny_datamodule_kwargs), tmp_path / "second", steps=1)
    assert again.reference_paths == method.reference_paths


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="num_references"):
        RefDistill(num_references=1)
    with pytest.raises(ValueError, match="forget_weight"):
        RefDistill(forget_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        RefDistill(temperature=0.0)


def test_ref_distill_through_the_unlearn_verb(trained_ckpt, forget_file, tiny_hospital, tmp_path):
    from medforget.commands.classifier import unlearn
    from medforget.core.checkpoint import read_checkpoint

    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[3] / "configs" / "unlearn" / "ref_distill.yaml"
    path = unlearn([f"--config={config}", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                    f"--data.manifest={tiny_hospital}", "--data.image_size=32", "--data.batch_size=16",
                    "--model.init_args.num_references=2", "--model.init_args.reference_epochs=1",
                    "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                    f"--out={out}"])
    assert read_checkpoint(path)["medforget"]["provenance"]["method"] == "RefDistill"
    assert len(list((out / "reference_models").glob("*/model_*.ckpt"))) == 2  # its own, under the run folder


def test_search_space_covers_the_documented_weights():
    space = RefDistill.search_space({"lr": 1e-3})
    assert {"lr", "forget_weight", "retain_kl_weight", "retain_ce_weight", "temperature"} == set(space)
    assert space["lr"].low == pytest.approx(1e-4) and space["lr"].high == pytest.approx(3e-3) and space["lr"].log


@pytest.mark.parametrize("target", ["references", "val"])
def test_selection_aims_at_how_the_references_do_on_these_patients(trained_ckpt, forget_file, tiny_datamodule_kwargs,
                                                                   reference_set, tmp_path, target):
    from medforget.methods.classifier import selection

    method = RefDistill(ckpt=str(trained_ckpt), lr=1e-3, reference_checkpoints=[str(p) for p in reference_set],
                        selection_target=target)
    dm = _dm(forget_file, tiny_datamodule_kwargs)
    _fit(method, dm, tmp_path, steps=1)
    reference = method.selection_reference
    if target == "val":
        assert not {"forget_auc_target", "forget_f1_target", "mia_target"} & set(reference)
        return
    # hand computation: each reference model's metrics on the forget-selection and val parts
    refs = [load_classifier(p).net.eval() for p in reference_set]
    per_ref = []
    with torch.no_grad():
        for r in refs:
            outputs = {}
            for part in (keys.FORGET_SELECTION, keys.VAL):
                batches = list(method.part_batches(part))
                outputs[part] = (torch.cat([r(b)["fused"] for b in batches]),
                                 torch.cat([b[keys.LABEL] for b in batches]))
            per_ref.append(selection.part_metrics(outputs))
    shift = np.mean([m["forget_f1"] - m["val_f1"] for m in per_ref])
    assert reference["forget_f1_target"] == pytest.approx(reference["val_f1"] + shift, abs=1e-6)
    assert reference["mia_target"] == pytest.approx(np.mean([m["mia"] for m in per_ref]), abs=1e-6)
    # the proxy gap then measures the distance to that target, not to the val level
    metrics = {**reference, "forget_f1": reference["forget_f1_target"] + 0.1}
    assert selection.proxy_gaps(metrics, reference)["forget_f1"] == pytest.approx(0.1)
