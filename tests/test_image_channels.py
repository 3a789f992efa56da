"""``--data.channels 1|3`` and pretrained image encoders end to end: the datamodule's batches, ``train`` with local
timm weights on 3-channel images, the channels and width recorded in the checkpoint, the checkpoint loading without
the weights file, and the clear error when unlearning or auditing with the other channel count."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from medforget.audit.classifier.measure import check_split
from medforget.commands import train, unlearn
from medforget.core.checkpoint import read_checkpoint
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.systems.classifier import FusionClassifier, load_classifier
from tests.conftest import TINY_DATA

QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
SMALL = ["--model.text_hidden=32", "--model.vocab_size=256", "--model.joint_dim=32", "--model.max_length=48"]


def test_datamodule_three_channels_repeat_the_grayscale(tiny_datamodule_kwargs):
    one = DicomReportDataModule(**tiny_datamodule_kwargs, cache_rate=0.0)
    three = DicomReportDataModule(**tiny_datamodule_kwargs, cache_rate=0.0, channels=3)
    one.setup()
    three.setup()
    a, b = next(iter(one.val_dataloader())), next(iter(three.val_dataloader()))
    assert a["image"].shape[1] == 1 and b["image"].shape == (a["image"].shape[0], 3, *a["image"].shape[2:])
    for c in range(3):
        torch.testing.assert_close(b["image"][:, c], a["image"][:, 0])
    with pytest.raises(ValueError, match="data.channels must be 1 or 3"):
        DicomReportDataModule(**tiny_datamodule_kwargs, channels=2)


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory):
    """ImageNet-style weights of a narrow resnet18 (3 input channels, 1000-class head), saved by the test."""
    torch.manual_seed(5)
    source = timm.create_model("resnet18", in_chans=3, num_classes=1000, channels=(8, 16, 32, 64))
    path = tmp_path_factory.mktemp("weights") / "resnet18_w8.pth"
    torch.save(source.state_dict(), path)
    return path, source


def test_classifier_starts_from_the_weights(rgb_weights):
    path, source = rgb_weights
    model = FusionClassifier(modalities="image", image_width=None, image_pretrained=str(path), image_channels=3)
    encoder = model.net.image_encoder
    torch.testing.assert_close(encoder.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    torch.testing.assert_close(encoder.conv1.weight, source.conv1.weight)
    assert model.hparams.image_width == 8  # read from the weights and recorded
    gray = FusionClassifier(modalities="image", image_width=None, image_pretrained=str(path))
    torch.testing.assert_close(gray.net.image_encoder.conv1.weight, source.conv1.weight.sum(1, keepdim=True))


def test_classifier_with_monai_densenet():
    model = FusionClassifier(modalities="image", image_encoder="monai:DenseNet121", image_width=8, image_channels=3)
    out = model({"image": torch.rand(2, 3, 32, 32)})
    assert out["fused"].shape == (2, 4) and model.hparams.image_width == 8


@pytest.fixture(scope="module")
def rgb_ckpt(tiny_hospital, rgb_weights, tmp_path_factory):
    path, _ = rgb_weights
    out = tmp_path_factory.mktemp("rgb")
    return train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *SMALL, "--data.channels=3",
                  f"--model.image_pretrained={path}", "--model.image_width=null", "--trainer.max_epochs=1", *QUIET,
                  f"--out={out}"])


def test_train_records_channels_and_width(rgb_ckpt, rgb_weights, tmp_path):
    ckpt = read_checkpoint(rgb_ckpt)
    hparams = ckpt["hyper_parameters"]
    assert hparams["image_channels"] == 3 and hparams["image_width"] == 8
    assert hparams["image_pretrained"] == str(rgb_weights[0])
    assert ckpt["medforget"]["provenance"]["data"]["channels"] == 3
    assert ckpt["state_dict"]["net.image_encoder.conv1.weight"].shape == (64, 3, 7, 7)


def test_checkpoint_loads_without_the_weights_file(rgb_ckpt, rgb_weights, tmp_path, monkeypatch):
    """The weights file is only read to start training: a deployed checkpoint does not need it."""
    import medforget.models.image as image

    def no_file(*args, **kwargs):
        raise AssertionError("the pretrained weights file was read again")

    monkeypatch.setattr(image, "load_weights", no_file)
    model = load_classifier(rgb_ckpt)
    assert model.hparams.image_channels == 3
    trained = read_checkpoint(rgb_ckpt)["state_dict"]["net.image_encoder.conv1.weight"]
    torch.testing.assert_close(model.net.image_encoder.conv1.weight, trained)


def test_other_channel_count_is_refused(rgb_ckpt, tiny_hospital, tiny_datamodule_kwargs, forget_file, tmp_path):
    model = load_classifier(rgb_ckpt)
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, cache_rate=0.0)
    dm.setup()
    with pytest.raises(ValueError, match=r"3-channel images .* read with --data.channels 1; pass --data.channels 3"):
        check_split(model, dm, rgb_ckpt)
    with pytest.raises(ValueError, match=str(rgb_ckpt)):
        unlearn(["--method=FineTune", f"--ckpt={rgb_ckpt}", f"--forget={forget_file}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_epochs=1", *QUIET,
                 f"--out={tmp_path / 'u'}"])
    assert not (tmp_path / "u" / "model.ckpt").exists()


def test_unlearn_with_matching_channels(rgb_ckpt, tiny_hospital, forget_file, tmp_path):
    out = unlearn(["--method=FineTune", f"--ckpt={rgb_ckpt}", f"--forget={forget_file}",
                   f"--data.manifest={tiny_hospital}", *TINY_DATA, "--data.channels=3", "--trainer.max_epochs=1",
                   *QUIET, f"--out={tmp_path / 'u'}"])
    model = load_classifier(out)
    assert model.hparams.image_channels == 3
    assert not np.allclose(model.net.image_encoder.conv1.weight.detach().numpy(),
                           load_classifier(rgb_ckpt).net.image_encoder.conv1.weight.detach().numpy())
