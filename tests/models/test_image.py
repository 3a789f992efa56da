"""Pretrained image encoders from local weights files (timm and MONAI DenseNet): the tests save their own tiny
weights, load them back, and check the first convolution's channel adaptation, the width read from the weights and
the errors (contradicting width, hub names, missing or foreign files)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from medforget.models.image import ImageWeightsError, create_image_encoder, load_weights

X3 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _timm_rgb(width: int = 8) -> torch.nn.Module:
    """A 3-channel timm resnet18 of ``width`` with a 10-class head: what ImageNet-style weights look like."""
    torch.manual_seed(1)
    return timm.create_model("resnet18", in_chans=3, num_classes=10, channels=(width, 2 * width, 4 * width, 8 * width),
                             stem_width=width).eval()


def _save(state: dict, path, fmt: str):
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _features(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(x)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_weights_three_channels_reproduce_the_source(tmp_path, fmt):
    source = _timm_rgb(8)
    path = _save(source.state_dict(), tmp_path / f"rgb.{fmt}", fmt)
    enc = create_image_encoder("resnet18", width=None, pretrained=str(path), in_chans=3)
    assert enc.num_features == 64 and enc.conv1.weight.shape == (64, 3, 7, 7) and enc.layer1[0].conv2.out_channels == 8
    source.reset_classifier(0)
    torch.testing.assert_close(_features(enc, X3), _features(source, X3))


def test_timm_weights_one_channel_sum_the_rgb_filters(tmp_path):
    """adapt_input_conv: a grayscale image x through the summed filters equals the RGB net on (x, x, x)."""
    source = _timm_rgb(8)
    path = _save(source.state_dict(), tmp_path / "rgb.safetensors", "safetensors")
    enc = create_image_encoder("resnet18", width=None, pretrained=str(path), in_chans=1)
    torch.testing.assert_close(enc.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    gray = X3[:, :1]
    source.reset_classifier(0)
    torch.testing.assert_close(_features(enc, gray), _features(source, gray.repeat(1, 3, 1, 1)), rtol=1e-4,
                               atol=1e-5)


def test_width_is_read_from_the_weights_and_a_contradiction_is_named(tmp_path):
    path = _save(_timm_rgb(8).state_dict(), tmp_path / "w8.pth", "pth")
    assert create_image_encoder("resnet18", width=8, pretrained=str(path)).layer1[0].conv2.out_channels == 8
    with pytest.raises(ImageWeightsError) as info:
        create_image_encoder("resnet18", width=16, pretrained=str(path))
    message = str(info.value)
    assert "--model.image_width 16 contradicts the weights in" in message and str(path) in message
    assert "first-stage width 8" in message and "--model.image_width 8" in message


def test_weights_of_another_architecture_are_named(tmp_path):
    path = _save(_timm_rgb(8).state_dict(), tmp_path / "resnet.pth", "pth")
    with pytest.raises(ImageWeightsError, match="the weights do not fit the encoder") as info:
        create_image_encoder("resnet34", width=None, pretrained=str(path))
    assert str(path) in str(info.value) and "missing" in str(info.value)


def test_other_timm_models_load_too(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("mobilenetv3_small_050", in_chans=3, num_classes=5).eval()
    path = _save(source.state_dict(), tmp_path / "mnv3.safetensors", "safetensors")
    enc = create_image_encoder("mobilenetv3_small_050", width=None, pretrained=str(path), in_chans=3)
    source.reset_classifier(0)
    torch.testing.assert_close(_features(enc, X3), _features(source, X3))
    with pytest.raises(ValueError, match="image_width applies to ResNet-family and MONAI DenseNet"):
        create_image_encoder("mobilenetv3_small_050", width=16, pretrained=str(path))


def _monai_rgb(init: int = 8, growth: int = 4) -> torch.nn.Module:
    from monai.networks.nets import DenseNet121

    torch.manual_seed(3)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=14, init_features=init, growth_rate=growth).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_monai_densenet121_weights(tmp_path, fmt):
    """A small DenseNet-121 (init_features 8, growth 4; 14 outputs as for chest X-ray findings) saved by the test."""
    source = _monai_rgb()
    path = _save(source.state_dict(), tmp_path / f"densenet.{fmt}", fmt)
    enc = create_image_encoder("monai:DenseNet121", width=None, pretrained=str(path), in_chans=3)
    assert enc.features.conv0.out_channels == 8
    expected_features = source.class_layers.out.in_features
    assert enc.num_features == expected_features
    source.class_layers.out = torch.nn.Identity()
    torch.testing.assert_close(_features(enc, X3), _features(source, X3))
    gray = create_image_encoder("monai:DenseNet121", width=None, pretrained=str(path), in_chans=1)
    torch.testing.assert_close(gray.features.conv0.weight, source.features.conv0.weight.sum(1, keepdim=True))
    assert _features(gray, X3[:, :1]).shape == (2, expected_features)
    with pytest.raises(ImageWeightsError, match=r"--model.image_width 16 contradicts .* \(init_features 8\)"):
        create_image_encoder("monai:DenseNet121", width=16, pretrained=str(path))


@pytest.mark.parametrize(("replacement", "example"), [(r"\1.\2\3", ".denselayer1.norm1."),
                                                      (r"\1.\2.\3", ".denselayer1.norm.1.")])
def test_monai_densenet_accepts_torchvision_key_names(tmp_path, replacement, example):
    """torchvision's names: norm1 in its modules' state dicts, norm.1 in its published files."""
    import re

    source = _monai_rgb()
    state = {re.sub(r"(denselayer\d+)\.layers\.(norm|conv|relu)([12])", replacement, k): v
             for k, v in source.state_dict().items()}
    assert any(example in k for k in state) and not any(".layers." in k for k in state)
    path = _save(state, tmp_path / "tv.pth", "pth")
    enc = create_image_encoder("monai:DenseNet121", width=None, pretrained=str(path), in_chans=3)
    source.class_layers.out = torch.nn.Identity()
    torch.testing.assert_close(_features(enc, X3), _features(source, X3))


def test_monai_from_scratch_width():
    enc = create_image_encoder("monai:DenseNet121", width=8, in_chans=1)
    assert enc.features.conv0.out_channels == 8 and enc.features.conv0.in_channels == 1
    assert _features(enc, torch.rand(1, 1, 32, 32)).shape == (1, enc.num_features)
    with pytest.raises(ValueError, match="unknown MONAI image encoder 'monai:UNet'"):
        create_image_encoder("monai:UNet")


@pytest.mark.parametrize("name", ["hf-hub:timm/resnet18.a1_in1k", "timm/resnet18.a1_in1k"])
def test_hub_encoder_names_are_refused(name):
    with pytest.raises(ValueError, match="hub name: medforget never downloads weights"):
        create_image_encoder(name, width=None)


def test_hub_weights_name_is_refused():
    with pytest.raises(ImageWeightsError, match="is not a local file: medforget never downloads"):
        create_image_encoder("resnet18", width=None, pretrained="hf-hub:timm/resnet18.a1_in1k")


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not weights")
    with pytest.raises(ImageWeightsError, match="not a loadable weights file") as info:
        load_weights(bad)
    assert str(bad) in str(info.value)
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(ImageWeightsError, match="holds no state dict of tensors"):
        load_weights(tmp_path / "meta.pth")


def test_nested_and_data_parallel_state_dicts(tmp_path):
    state = {"module.conv.weight": torch.ones(2, 1, 3, 3)}
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "ckpt.pth")
    assert list(load_weights(tmp_path / "ckpt.pth")) == ["conv.weight"]
