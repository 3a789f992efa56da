"""Quantization (round-to-nearest against a hand computation, int8 via torchao), recovery fractions and the
relearning attack."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from medforget.audit.robustness import (
    predict_plain,
    quantize_model,
    record_steps,
    recovered_fraction,
    relearning_attack,
    round_to_nearest,
)
from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.systems.classifier import load_classifier


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [None, 4])
def test_round_to_nearest_matches_a_hand_computation(bits, group_size):
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(bits))
    got = round_to_nearest(w, bits, group_size)
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    g = group_size or 8
    groups = w.reshape(6, 8 // g, g)
    scale = groups.abs().amax(-1, keepdim=True) / ((qmax - qmin) / 2)
    # torchao multiplies by 1/scale (not divides): same rounding on ties
    expected = (torch.clamp(torch.round(groups * (1.0 / scale)), qmin, qmax) * scale).reshape(6, 8)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for row in got.reshape(6, 8 // g, g).reshape(-1, g):
        assert len(torch.unique(row)) <= 2**bits
    assert (got - w).abs().max() <= scale.max() / 2 + 1e-6


def test_round_to_nearest_of_a_convolution_keeps_its_shape():
    w = torch.randn(4, 3, 3, 3)
    q = round_to_nearest(w, 4, 32)  # 27 inputs per channel: not divisible by 32 -> one group per channel
    assert q.shape == w.shape and not torch.equal(q, w)
    per_channel = q.reshape(4, -1)
    assert all(len(torch.unique(r)) <= 16 for r in per_channel)


@pytest.fixture(scope="module")
def loaders(forget_file, tiny_datamodule_kwargs):
    dm = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    return dm.evaluation_dataloaders()


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantize_model_changes_a_copy_only(trained_ckpt, loaders, scheme):
    model = load_classifier(trained_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_model(model, scheme)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the input model is untouched
    a = predict_plain(model, loaders["test"])
    b = predict_plain(quantized, loaders["test"])
    assert torch.equal(a[keys.LABEL], b[keys.LABEL])
    diff = (a["logits"]["fused"] - b["logits"]["fused"]).abs()
    assert diff.max() > 0  # really quantized
    assert diff.mean() < 0.5 * a["logits"]["fused"].abs().mean()  # and still the same model
    levels = 2 ** (8 if scheme == "int8" else 4)

    def groups(weight: torch.Tensor, size: int | None) -> list[torch.Tensor]:
        row = weight[0].flatten()
        return list(row.split(size)) if size and len(row) % size == 0 else [row]

    convs = [m for m in quantized.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for conv in convs:  # int8: one scale per output channel; int4: groups of 32 inputs when they divide the row
        assert all(len(torch.unique(g)) <= levels for g in groups(conv.weight, 32 if scheme == "int4" else None))
    if scheme == "int4":
        linears = [m for m in quantized.modules() if isinstance(m, nn.Linear)]
        assert linears and all(len(torch.unique(g)) <= 16 for m in linears for g in groups(m.weight, 32))


def test_quantize_model_rejects_unknown_schemes(trained_ckpt):
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        quantize_model(load_classifier(trained_ckpt), "int3")


def test_recovered_fraction():
    assert recovered_fraction(1.0, 0.6, 0.6) == 0.0
    assert recovered_fraction(1.0, 0.6, 1.0) == pytest.approx(1.0)
    assert recovered_fraction(1.0, 0.6, 0.7) == pytest.approx(0.25)
    assert recovered_fraction(1.0, 0.6, 0.5) == pytest.approx(-0.25)  # moved further away
    assert math.isnan(recovered_fraction(0.9, 0.89, 1.0))  # nothing was forgotten
    assert math.isnan(recovered_fraction(float("nan"), 0.5, 0.6))


def test_record_steps():
    assert record_steps(10) == [0, 1, 2, 5, 10]
    assert record_steps(3) == [0, 1, 2, 3]
    assert record_steps(1) == [0, 1]
    assert record_steps(120) == [0, 1, 2, 5, 10, 20, 50, 100, 120]


def test_relearning_attack(trained_ckpt, loaders):
    model = load_classifier(trained_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget = loaders["forget"].dataset
    loader = DataLoader(forget, batch_size=len(forget))
    frozen = relearning_attack(model, loader, loader, steps=3, lr=0.0)
    assert frozen["step"] == [0, 1, 2, 3]
    assert len(set(frozen["accuracy"])) == 1  # lr 0: nothing changes
    # fine-tuning on the very samples it is measured on: their accuracy reaches 1
    test = DataLoader(loaders["test"].dataset, batch_size=64)
    curve = relearning_attack(model, test, test, steps=40, lr=3e-3)
    assert curve["accuracy"][-1] > curve["accuracy"][0]
    assert curve["accuracy"][-1] >= 0.95
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the attacked model is a copy
