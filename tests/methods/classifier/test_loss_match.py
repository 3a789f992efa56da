"""LossMatch: the target quantiles, the matching term and its floor, the target measured on the original."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.classifier import LossMatch


def test_target_quantiles_match_numpy():
    method = LossMatch()
    values = torch.tensor([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    method.val_losses = values.sort().values
    for n in (1, 4, 9):
        levels = (np.arange(n) + 0.5) / n
        expected = np.quantile(np.exp(-values.numpy().astype(np.float64)), levels)  # p = exp(-CE); linear
        assert method.target_quantiles(n).numpy() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(RuntimeError, match="on_train_start"):
        LossMatch().target_quantiles(3)


def test_matching_term_is_the_sorted_squared_distance_with_a_floor(trained_ckpt):
    method = LossMatch(ckpt=str(trained_ckpt), forget_weight=2.0)
    # forget losses already at the target quantiles (in any order): the term is 0 and gives no gradient
    method.val_losses = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    q = np.quantile(np.exp(-np.array([0.1, 0.3, 0.5, 0.7, 0.9])), (np.arange(5) + 0.5) / 5)  # true-class p
    losses = torch.tensor(-np.log(q[[3, 0, 4, 2, 1]]), dtype=torch.float32, requires_grad=True)
    method.forget_losses = lambda forget: losses  # noqa: E731 (the CE of a batch, stubbed to known values)
    method.classification_loss = lambda batch: torch.tensor(0.25)  # noqa: E731
    out = method.unlearning_loss({}, {})
    assert out["forget_match"].item() == pytest.approx(0.0, abs=1e-10)
    out["loss"].backward()
    assert torch.allclose(losses.grad, torch.zeros(5), atol=1e-6)
    # too low (memorised) is pushed up, too high is pulled down: hand computation of the sorted W2^2
    losses2 = torch.tensor([0.0, 0.0, 2.0, 0.5, 0.3], requires_grad=True)
    method.forget_losses = lambda forget: losses2  # noqa: E731
    out = method.unlearning_loss({}, {})
    # p = exp(-CE) sorted (the losses 2.0, 0.5, 0.3, 0, 0) against the quantiles
    expected = np.mean(np.square(np.exp(-np.array([2.0, 0.5, 0.3, 0.0, 0.0])) - q))
    assert out["forget_match"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.25 + 2.0 * expected, rel=1e-5)
    out["loss"].backward()
    assert losses2.grad[0] < 0 and losses2.grad[1] < 0  # gradient descent raises the memorised losses
    assert losses2.grad[2] > 0  # and lowers the one beyond its quantile (p = 0.14 against 0.44)


def test_target_is_the_originals_val_loss_and_survives_training(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    method = LossMatch(ckpt=str(trained_ckpt), lr=5e-2)
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    original = LossMatch(ckpt=str(trained_ckpt)).eval()
    with torch.no_grad():
        logits, labels = [], []
        for batch in dm.part_dataloader(keys.VAL):
            batch = original.classifier.prepare_batch(batch)
            logits.append(original(batch)["fused"])
            labels.append(batch[keys.LABEL])
    expected = F.cross_entropy(torch.cat(logits), torch.cat(labels), reduction="none").sort().values
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(method, datamodule=dm)
    assert torch.allclose(method.val_losses, expected, atol=1e-5)  # measured before the first update, kept after
    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    restored = LossMatch()
    restored.on_load_checkpoint(checkpoint)
    assert torch.equal(restored.val_losses, method.val_losses)


def test_forget_losses_are_computed_in_eval_mode_and_keep_the_modes(trained_ckpt, forget_file,
                                                                   tiny_datamodule_kwargs):
    method = LossMatch(ckpt=str(trained_ckpt)).train()
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    batch = method.classifier.prepare_batch(next(iter(dm.part_dataloader(keys.FORGET))))
    seen = []
    method.net.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    losses = method.forget_losses(batch)
    assert seen == [False]  # dropout off, BatchNorm running statistics: as the audit scores the model
    assert all(m.training for m in method.net.modules())  # train mode restored for the retain batches
    assert losses.shape == (len(batch[keys.LABEL]),) and losses.requires_grad
    method.eval()
    expected = F.cross_entropy(method(batch)["fused"], batch[keys.LABEL], reduction="none")
    assert torch.allclose(losses, expected, atol=1e-6)


def test_forget_weight_must_be_positive():
    with pytest.raises(ValueError, match="forget_weight"):
        LossMatch(forget_weight=0.0)
