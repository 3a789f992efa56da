"""Method-specific guarantees of the vision suite: SalUn's hard mask, relabelling, SSD selection, BoundaryShrink."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.classifier import SSD, BadTeacher, BoundaryShrink, SalUn
from medforget.methods.classifier._common import random_wrong_labels, randomly_initialised_copy, split_batch


def _fit(method, forget_file, kwargs, steps=4, **trainer_kwargs):
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **kwargs)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        **trainer_kwargs)
    trainer.fit(method, datamodule=dm)
    return method


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_salun_mask_is_a_hard_constraint(optimizer, trained_ckpt, forget_file, tiny_datamodule_kwargs):
    # weight decay and momentum on: neither may move a masked-out weight, after any number of steps
    method = SalUn(ckpt=str(trained_ckpt), lr=5e-2, mask_ratio=0.3, optimizer=optimizer, weight_decay=0.1,
                   momentum=0.9)
    before = {n: p.detach().clone() for n, p in method.net.named_parameters()}
    _fit(method, forget_file, tiny_datamodule_kwargs, steps=6)
    masks = method.masks
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) / total == pytest.approx(0.3, abs=0.02)
    moved = 0
    for name, p in method.net.named_parameters():
        frozen = ~masks[name]
        assert torch.equal(p.detach()[frozen], before[name][frozen]), f"masked weights of {name} changed"
        moved += int((p.detach()[masks[name]] != before[name][masks[name]]).sum())
    assert moved > 0, "no salient weight was trained"


def test_salun_mask_ranks_saliency_globally():
    method = SalUn(mask_ratio=0.25)
    saliency = {"a": torch.tensor([0.1, 0.9, 0.5, 0.2]), "b": torch.tensor([[0.8, 0.05], [0.3, 0.0]])}
    masks = method.compute_masks(saliency)  # top 2 of 8 values: 0.9 (a) and 0.8 (b)
    assert masks["a"].tolist() == [False, True, False, False]
    assert masks["b"].tolist() == [[True, False], [False, False]]


def test_salun_mask_never_selects_everything_through_ties_at_zero():
    # most weights have no gradient on the forget loss (saliency 0): a ">= k-th value" threshold would be 0 and
    # select all of them; the mask takes the k most salient by index and never a zero-saliency weight
    method = SalUn(mask_ratio=0.5)
    saliency = {"a": torch.tensor([0.0, 0.7, 0.0, 0.0]), "b": torch.tensor([[0.0, 0.2], [0.0, 0.0]])}
    masks = method.compute_masks(saliency)
    assert masks["a"].tolist() == [False, True, False, False]
    assert masks["b"].tolist() == [[False, True], [False, False]]
    ties = {"w": torch.tensor([0.5, 0.5, 0.5, 0.5, 0.1, 0.1])}  # nonzero ties: exactly k = 3 of the top 4
    assert int(method.compute_masks(ties)["w"].sum()) == 3 and not method.compute_masks(ties)["w"][4:].any()
    assert int(method.compute_masks({"z": torch.zeros(4)})["z"].sum()) == 2  # no gradient anywhere: k weights


def test_random_wrong_labels_are_wrong_and_cover_every_other_class():
    labels = torch.arange(4).repeat(500)
    wrong = random_wrong_labels(labels, 4, torch.Generator().manual_seed(0))
    assert not (wrong == labels).any()
    for c in range(4):
        assert set(wrong[labels == c].tolist()) == set(range(4)) - {c}
    with pytest.raises(ValueError):
        random_wrong_labels(labels, 1)


def test_split_batch_slices_every_field():
    batch = {keys.LABEL: torch.arange(5), keys.REPORT: list("abcde"), "scalar": 3}
    parts = split_batch(batch, 2)
    assert [p[keys.LABEL].tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert [p[keys.REPORT] for p in parts] == [["a", "b"], ["c", "d"], ["e"]]


def test_ssd_dampens_only_forget_specific_weights(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    method = SSD(ckpt=str(trained_ckpt), alpha=1.5, dampening=1.0)  # tiny data: few batches in D
    before = {n: p.detach().clone() for n, p in method.net.named_parameters()}
    _fit(method, forget_file, tiny_datamodule_kwargs)
    assert 0 < method.edit_stats["dampened_fraction"] < 0.5
    for name, p in method.net.named_parameters():
        ratio = p.detach()[before[name] != 0] / before[name][before[name] != 0]
        assert bool(((ratio >= 0) & (ratio <= 1 + 1e-6)).all()), f"{name}: SSD may only shrink weights"


def test_boundary_shrink_labels_are_wrong_classes(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    method = BoundaryShrink(ckpt=str(trained_ckpt), epsilon=0.1)
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    batch = method.classifier.prepare_batch(next(iter(dm.part_dataloader("forget"))))
    labels = method.nearest_wrong_labels(batch)
    assert labels.shape == batch[keys.LABEL].shape and not (labels == batch[keys.LABEL]).any()


def test_bad_teacher_is_random_and_frozen(trained_ckpt):
    method = BadTeacher(ckpt=str(trained_ckpt), teacher_seed=3)
    good, bad = method.teacher.module.state_dict(), method.bad_teacher.module.state_dict()
    weights = [k for k in good if good[k].is_floating_point() and good[k].numel() > 1 and "weight" in k]
    assert all(not torch.equal(good[k], bad[k]) for k in weights)
    assert not any(p.requires_grad for p in method.bad_teacher.parameters())
    again = randomly_initialised_copy(method.net, seed=3).state_dict()
    assert all(torch.equal(again[k], bad[k]) for k in weights), "the incompetent teacher is seeded"


def test_unsir_noise_maximises_the_original_models_error(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    from medforget.methods.classifier import UNSIR

    method = UNSIR(ckpt=str(trained_ckpt), noise_steps=15)
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    dm.setup()
    retain = method.classifier.prepare_batch(next(iter(dm.part_dataloader("retain"))))
    classes = torch.arange(method.num_classes)
    torch.manual_seed(0)
    noise = method.learn_noise((1, 32, 32), classes, retain)
    start = torch.randn_like(noise)
    method.net.eval()
    with torch.no_grad():
        def ce(images):
            return torch.nn.functional.cross_entropy(method.net(method._noise_batch(images, classes, retain))["fused"],
                                                     classes)
        assert ce(noise) > ce(start)


def test_forgetting_rates_follow_each_scheme():
    import math

    from medforget.methods.classifier.forgetting_layers import forgetting_rates

    act = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    rank = forgetting_rates(act, "rank", 1.0, 5.0)
    assert rank.tolist() == [5.0, 1.0, 3.0, 4.0, 2.0]  # most activated on D_f decays fastest
    assert forgetting_rates(act, "position", 1.0, 5.0).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    top = forgetting_rates(act, "top", 1.0, 5.0, top_fraction=0.4)
    assert top[1] == 1.0 and top[4] == 1.0 and all(math.isinf(t) for t in top[[0, 2, 3]].tolist())
    rand = forgetting_rates(act, "random", 1.0, 5.0, generator=torch.Generator().manual_seed(0))
    assert sorted(rand.tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError):
        forgetting_rates(act, "nope", 1.0, 5.0)


def test_forgetting_layers_decay_is_exactly_exponential(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    from medforget.methods.classifier import ForgettingLayers

    # lr 0 and SGD: only the decay moves the weights; 3 decay steps in the first (unlearn) phase of the cycle
    method = ForgettingLayers(ckpt=str(trained_ckpt), lr=0.0, optimizer="sgd", momentum=0.0, scheme="rank",
                              tau_min=2.0, tau_max=8.0, unlearn_steps=3, relearn_steps=5)
    before = {h: method.net.heads[h].weight.detach().clone() for h in ("fused", "image", "text")}
    _fit(method, forget_file, tiny_datamodule_kwargs, steps=5)
    for head, tau in method.taus.items():
        expected = before[head] * torch.exp(-3.0 / tau).float()
        assert torch.allclose(method.net.heads[head].weight, expected, atol=1e-6), head
