"""FusionNet: features / head split, shapes, determinism and persistence of the joint fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medforget.models.fusion import FusionNet, JointFusion, build_fusion_net
from medforget.models.image import create_image_encoder
from medforget.models.text import TextEncoder

B, L, C = 3, 16, 4
TINY = {"image_width": 8, "text_hidden": 32, "vocab_size": 64, "joint_dim": 16, "max_length": 16}
PRESENT = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}


def fake_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 10:] = 0  # some padding
    return {
        "image": torch.rand(B, 1, 32, 32, generator=g),
        "input_ids": torch.randint(5, 64, (B, L), generator=g),
        "attention_mask": mask,
    }


@pytest.mark.parametrize("modalities", ["both", "image", "text"])
@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_fusion_net_shapes_and_keys(fusion, modalities):
    torch.manual_seed(0)
    net = build_fusion_net(modalities, num_classes=C, fusion=fusion, **TINY).eval()
    present = PRESENT[modalities]
    assert net.modalities == present
    assert set(net.num_features) == {*present, "joint"}
    assert net.num_features["joint"] == 16
    if "image" in present:
        assert net.num_features["image"] == 64  # resnet18 at width 8: last stage 8 * 8
    if "text" in present:
        assert net.num_features["text"] == 32

    batch = fake_batch()
    with torch.no_grad():
        feats = net.forward_features(batch)
        assert set(feats) == {*present, "joint"}
        for name, z in feats.items():
            assert z.shape == (B, net.num_features[name]), name
            assert torch.isfinite(z).all()
        logits = net.forward_head(feats)
        assert set(logits) == {"fused", *present}
        for z in logits.values():
            assert z.shape == (B, C)
        assert net.forward_head(feats, pre_logits=True) is feats
        uni = net.unimodal_features(feats)
        assert uni.shape == (B, sum(net.num_features[m] for m in present))

        out1 = net(batch)
        out2 = net(batch)
    for key in out1:  # eval mode: deterministic, the joint fusion is not re-created per call
        assert torch.equal(out1[key], out2[key]), key
        assert torch.equal(out1[key], logits[key]), key

    state = net.state_dict()
    if modalities == "both":
        assert isinstance(net.fusion, JointFusion) and net.fusion.kind == fusion
        fusion_params = [n for n, _ in net.fusion.named_parameters()]
        assert fusion_params
        for name in fusion_params:
            assert f"fusion.{name}" in state
        # the fusion's parameters are registered with (and optimised by) the network
        net_param_ids = {id(p) for p in net.parameters()}
        assert all(id(p) in net_param_ids for p in net.fusion.parameters())
    else:
        assert net.fusion is None
        assert not any(k.startswith("fusion.") for k in state)


def test_fusion_is_persistent_in_train_mode():
    """The same fusion module (and weights) is used on every call, also in training mode."""
    torch.manual_seed(0)
    net = build_fusion_net("both", fusion="gated", **TINY).train()
    fusion_before = net.fusion
    weights_before = {k: v.clone() for k, v in net.fusion.state_dict().items()}
    batch = fake_batch()
    out1 = net(batch)["fused"]
    out2 = net(batch)["fused"]
    assert net.fusion is fusion_before
    for k, v in net.fusion.state_dict().items():
        assert torch.equal(v, weights_before[k])
    # dropout=0 and BatchNorm in train mode on the same batch: identical outputs
    assert torch.allclose(out1, out2)


def test_state_dict_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    net_a = build_fusion_net("both", fusion="attention", **TINY).eval()
    torch.manual_seed(1)
    net_b = build_fusion_net("both", fusion="attention", **TINY).eval()
    batch = fake_batch()
    with torch.no_grad():
        assert not torch.allclose(net_a(batch)["fused"], net_b(batch)["fused"])
        net_b.load_state_dict(net_a.state_dict())
        a, b = net_a(batch), net_b(batch)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_heads_use_their_modality_features():
    """The image head only depends on the image, the text head only on the text."""
    torch.manual_seed(0)
    net = build_fusion_net("both", fusion="concat", **TINY).eval()
    batch = fake_batch(0)
    other = fake_batch(1)
    image_changed = {**batch, "image": other["image"]}
    with torch.no_grad():
        base, changed = net(batch), net(image_changed)
    assert torch.equal(base["text"], changed["text"])
    assert not torch.allclose(base["image"], changed["image"])
    assert not torch.allclose(base["fused"], changed["fused"])


def test_unknown_fusion_raises():
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion_net("both", fusion="bilinear", **TINY)
    with pytest.raises(ValueError, match="unknown fusion"):
        JointFusion(16, "sum")


@pytest.mark.parametrize("modalities", ["audio", "", "Both"])
def test_unknown_modalities_raise(modalities):
    with pytest.raises(ValueError, match="modalities"):
        build_fusion_net(modalities, **TINY)


def test_fusion_net_needs_an_encoder():
    with pytest.raises(ValueError, match="at least one"):
        FusionNet(None, None)


def test_fusion_net_with_sequential_like_encoders():
    """Encoders that define __len__ (e.g. containers) still get a joint fusion when both are present."""

    class Enc(nn.Sequential):
        num_features = 8

    image = Enc(nn.Flatten(), nn.LazyLinear(8))
    text = TextEncoder(vocab_size=64, hidden_size=32, max_length=16)
    net = FusionNet(image, text, num_classes=C, joint_dim=16, fusion="gated")
    assert isinstance(net.fusion, JointFusion)


def test_create_image_encoder_unknown_name():
    with pytest.raises(ValueError, match="unknown timm model"):
        create_image_encoder("not_a_real_model_xyz")


@pytest.mark.parametrize(("width", "features"), [(8, 64), (4, 32)])
def test_create_image_encoder_width(width, features):
    enc = create_image_encoder("resnet18", width=width).eval()
    assert enc.num_features == features
    with torch.no_grad():
        out = enc(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, features)
    assert enc.conv1.in_channels == 1


def test_create_image_encoder_default_width():
    enc = create_image_encoder("resnet18", width=None)
    assert enc.num_features == 512


def test_create_image_encoder_missing_pretrained_file(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match="weights file not found") as info:  # nothing is downloaded
        create_image_encoder("resnet18", width=8, pretrained=str(missing))
    assert str(missing) in str(info.value)
