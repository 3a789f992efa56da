"""ForgetMI's optional retain distillation term (retain fidelity)."""

from __future__ import annotations

import pytest
import torch

from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.classifier import ForgetMI
from medforget.methods.classifier._common import distillation_kl


def test_forget_mi_retain_kl_adds_the_weighted_output_distillation(trained_ckpt, forget_file,
                                                                    tiny_datamodule_kwargs):
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup("fit")
    plain = ForgetMI(ckpt=str(trained_ckpt), retain_kl=0.0)
    with_kl = ForgetMI(ckpt=str(trained_ckpt), retain_kl=2.0, retain_temperature=2.0)
    forget = plain.classifier.prepare_batch(next(iter(dm.part_dataloader("forget"))))
    retain = plain.classifier.prepare_batch(next(iter(dm.part_dataloader("retain"))))
    with torch.no_grad():  # the same student in both systems, moved away from its teacher
        for p in plain.net.heads.parameters():
            p.add_(0.3)
        with_kl.net.load_state_dict(plain.net.state_dict())
    for m in (plain, with_kl):
        m.eval()  # no dropout: both losses see the same forward passes
    torch.manual_seed(0)
    base = plain.unlearning_loss(forget, retain)
    torch.manual_seed(0)
    extended = with_kl.unlearning_loss(forget, retain)
    expected_kl = distillation_kl(with_kl(retain)["fused"], with_kl.teacher(retain)["fused"], 2.0)
    assert "retain_kl" not in base
    assert float(extended["retain_kl"]) == pytest.approx(float(expected_kl), rel=1e-5)
    assert float(expected_kl) > 0
    assert float(extended["loss"]) == pytest.approx(float(base["loss"]) + 2.0 * float(expected_kl), rel=1e-5)
    assert keys.LABEL in retain


def test_forget_mi_retain_kl_must_be_non_negative():
    with pytest.raises(ValueError, match="retain_kl"):
        ForgetMI(retain_kl=-1.0)
