"""Classifier checkpoints (safe load, atomic export, protection) and the evaluation audit on it."""

from __future__ import annotations

import hashlib
import inspect
import shutil

import lightning as L
import pytest
import torch

from medforget.audit.classifier.measure import check_split
from medforget.core.checkpoint import CheckpointError, read_checkpoint
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.systems.classifier import CHECKPOINT_FORMAT, FusionClassifier, export_classifier, load_classifier


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(trained_ckpt) -> FusionClassifier:
    return load_classifier(trained_ckpt)


@pytest.fixture(scope="module")
def batch(tiny_datamodule_kwargs) -> dict:
    dm = DicomReportDataModule(**tiny_datamodule_kwargs)
    dm.setup()
    return next(iter(dm.val_dataloader()))


@pytest.fixture
def ckpt_copy(trained_ckpt, tmp_path):
    """A private copy of the trained checkpoint (the session fixture itself is never modified)."""
    return shutil.copy(trained_ckpt, tmp_path / "copy.ckpt")


def predict(model: FusionClassifier, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(model.prepare_batch(batch))


def test_load_classifier(model, trained_ckpt):
    assert isinstance(model, FusionClassifier)
    assert not model.training
    assert not any(m.training for m in model.modules())
    assert model.tokenizer is not None
    assert (model.hparams.image_width, model.hparams.text_hidden, model.hparams.joint_dim) == (8, 32, 32)
    assert model.heads == ("fused", "image", "text")
    assert model.provenance["kind"] == "original"
    fingerprint = model.provenance["split_fingerprint"]
    assert isinstance(fingerprint, str) and len(fingerprint) == 16
    assert model.provenance["epochs"] == 2
    assert all(p.device.type == "cpu" for p in model.parameters())
    ckpt = read_checkpoint(trained_ckpt)
    assert ckpt["medforget"]["format"] == CHECKPOINT_FORMAT
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_loaded_model_predictions_are_deterministic(model, trained_ckpt, batch):
    out1 = predict(model, batch)
    out2 = predict(load_classifier(trained_ckpt), batch)
    assert set(out1) == {"fused", "image", "text"}
    n = len(batch["label"])
    for head in out1:
        assert out1[head].shape == (n, 4)
        assert torch.equal(out1[head], out2[head]), head


def test_checkpoint_is_weights_only_loadable(trained_ckpt):
    ckpt = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    assert {"state_dict", "hyper_parameters", "medforget", "pytorch-lightning_version"} <= set(ckpt)
    tok = ckpt["medforget"]["tokenizer"]
    assert isinstance(tok, dict) and all(isinstance(v, str) for v in tok.values())
    assert not any(k.startswith("_") for k in ckpt["hyper_parameters"])


def test_export_round_trip(model, tmp_path, batch):
    path = export_classifier(model, tmp_path / "sub" / "exported.ckpt", provenance={"kind": "test", "n": 3})
    assert path == tmp_path / "sub" / "exported.ckpt" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed away
    again = load_classifier(path)
    sd_a, sd_b = model.state_dict(), again.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    assert again.provenance == {"kind": "test", "n": 3}
    assert dict(again.hparams) == dict(model.hparams)
    assert again.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    a, b = predict(model, batch), predict(again, batch)
    for head in a:
        assert torch.equal(a[head], b[head])


def test_export_refuses_to_overwrite(model, tmp_path):
    path = tmp_path / "model.ckpt"
    export_classifier(model, path, provenance={"v": 1})
    digest = sha256(path)
    with pytest.raises(FileExistsError, match="exists"):
        export_classifier(model, path, provenance={"v": 2})
    assert sha256(path) == digest
    export_classifier(model, path, provenance={"v": 2}, overwrite=True)
    assert load_classifier(path).provenance == {"v": 2}


def test_export_refuses_to_overwrite_protected_input(model, ckpt_copy, tmp_path):
    digest = sha256(ckpt_copy)
    with pytest.raises(FileExistsError, match="input checkpoint"):
        export_classifier(model, ckpt_copy, protect=(ckpt_copy,), overwrite=True)
    # the same file through another spelling of its path
    other_spelling = tmp_path / "." / "sub" / ".." / ckpt_copy.name
    (tmp_path / "sub").mkdir()
    with pytest.raises(FileExistsError, match="input checkpoint"):
        export_classifier(model, other_spelling, protect=(str(ckpt_copy),), overwrite=True)
    assert sha256(ckpt_copy) == digest
    # another output path is fine while protecting the input
    out = export_classifier(model, tmp_path / "out.ckpt", protect=(ckpt_copy,))
    assert out.is_file() and sha256(ckpt_copy) == digest


def test_corrupt_and_missing_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a loadable checkpoint") as exc:
        load_classifier(corrupt)
    assert str(corrupt) in str(exc.value)
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(CheckpointError, match="not found") as exc:
        load_classifier(missing)
    assert str(missing) in str(exc.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path)  # a directory is not a checkpoint
    assert isinstance(exc.value, ValueError)


def test_not_a_classifier_checkpoint(tmp_path, trained_ckpt):
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="no state_dict") as exc:
        load_classifier(other)
    assert str(other) in str(exc.value)

    ckpt = read_checkpoint(trained_ckpt)
    newer = tmp_path / "newer.ckpt"
    torch.save({**ckpt, "medforget": {**ckpt["medforget"], "format": CHECKPOINT_FORMAT + 1}}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_classifier(newer)

    bad_hparams = tmp_path / "bad_hparams.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "no_such_option": 1}}, bad_hparams)
    with pytest.raises(CheckpointError, match="hyper_parameters"):
        load_classifier(bad_hparams)

    wrong_arch = tmp_path / "wrong_arch.ckpt"
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "modalities": "image"}}, wrong_arch)
    with pytest.raises(CheckpointError, match="do not match"):
        load_classifier(wrong_arch)


def test_lightning_load_from_checkpoint(trained_ckpt, model, batch):
    if "weights_only" not in inspect.signature(FusionClassifier.load_from_checkpoint).parameters:
        pytest.skip("this Lightning's load_from_checkpoint has no weights_only argument")
    loaded = FusionClassifier.load_from_checkpoint(trained_ckpt, map_location="cpu", weights_only=True).eval()
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    a, b = predict(model, batch), predict(loaded, batch)
    for head in a:
        assert torch.equal(a[head], b[head]), head


def test_trainer_predict_matches_forward(model, tiny_datamodule_kwargs, batch):
    """Lightning's predict loop tokenizes through on_before_batch_transfer exactly like prepare_batch."""
    dm = DicomReportDataModule(**tiny_datamodule_kwargs)
    dm.setup()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    out = trainer.predict(model, dm.val_dataloader())[0]
    ref = predict(model, batch)
    assert torch.equal(out["index"], batch["index"])
    torch.testing.assert_close(out["logits"]["fused"], ref["fused"])


def test_check_split_rejects_a_different_split(model, trained_ckpt, tiny_datamodule_kwargs):
    same = DicomReportDataModule(**tiny_datamodule_kwargs)
    same.setup()
    assert same.split_fingerprint == model.provenance["split_fingerprint"]
    check_split(model, same, trained_ckpt)  # no error
    other = DicomReportDataModule(**{**tiny_datamodule_kwargs, "seed": 7})
    other.setup()
    assert other.split_fingerprint != model.provenance["split_fingerprint"]
    with pytest.raises(CheckpointError, match="split differs") as exc:
        check_split(model, other, trained_ckpt)
    assert str(trained_ckpt) in str(exc.value)
