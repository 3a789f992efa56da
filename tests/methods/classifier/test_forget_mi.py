"""ForgetMI (and MultiDelete, which shares its frozen-teacher machinery): weights, loss terms, teacher, fusion."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.classifier import ForgetMI, MultiDelete
from medforget.methods.classifier._common import l2_distance
from medforget.methods.classifier.forget_mi import PERTURBED, PRESETS
from medforget.models.text import train_wordpiece_tokenizer
from medforget.systems.classifier import FusionClassifier

TERMS = ("loss", "uu", "ur", "mu", "mr")


def _trainer() -> L.Trainer:
    return L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)


def _datamodule(forget_file, kwargs) -> DicomReportDataModule:
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **kwargs)
    dm.setup()
    return dm


def _raw_batch(dm: DicomReportDataModule) -> dict:
    """One untokenized ``{"forget", "retain"}`` training batch, as the dataloader yields it."""
    return {name: next(iter(loader)) for name, loader in dm.train_dataloader().iterables.items()}


def _retain_distance(method, dm) -> float:
    """Mean relative distance of student and teacher unimodal + joint embeddings on a retain batch (eval mode)."""
    batch = method.classifier.prepare_batch(next(iter(dm._loader("retain", False))))
    was_training = method.training
    method.eval()
    with torch.no_grad():
        s, t = method.net.forward_features(batch), method.teacher.module.forward_features(batch)
    method.train(was_training)
    uni = l2_distance(method.net.unimodal_features(s), method.teacher.module.unimodal_features(t), relative=True)
    return float(uni.mean() + l2_distance(s["joint"], t["joint"], relative=True).mean())


def _clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def fitted(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    """ForgetMI (equal preset) after 3 training steps, with snapshots taken before."""
    method = ForgetMI(ckpt=str(trained_ckpt), lr=1e-3)
    before = SimpleNamespace(teacher=_clone(method.teacher), fusion=method.net.fusion,
                             fusion_state=_clone(method.net.fusion), net=_clone(method.net))
    dm = _datamodule(forget_file, tiny_datamodule_kwargs)
    trainer = _trainer()
    trainer.fit(method, datamodule=dm)
    return SimpleNamespace(method=method, trainer=trainer, dm=dm, before=before)


# --- weights ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_weights_are_normalised(preset):
    weights = ForgetMI(preset=preset).weights
    assert sum(weights) == pytest.approx(1.0)
    assert weights == pytest.approx(PRESETS[preset])


def test_explicit_weights_override_the_preset():
    assert ForgetMI(preset="unimodal", weights=(1, 1, 0, 2)).weights == pytest.approx((0.25, 0.25, 0.0, 0.5))
    assert ForgetMI(weights=(0, 3, 0, 3)).weights == pytest.approx((0.0, 0.5, 0.0, 0.5))


@pytest.mark.parametrize("kwargs", [{"weights": (0, 0, 0, 0)}, {"weights": (1, -1, 1, 1)}, {"weights": (1, 1, 1)},
                                    {"preset": "nope"}, {"margin": 0.0}])
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ForgetMI(**kwargs)


# --- loss -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("margin", [1.0, 0.02])
def test_loss_terms_are_finite_and_hinges_bounded(margin, trained_ckpt, forget_file, tiny_datamodule_kwargs):
    method = ForgetMI(ckpt=str(trained_ckpt), margin=margin)
    dm = _datamodule(forget_file, tiny_datamodule_kwargs)
    raw = _raw_batch(dm)
    reports = list(raw[keys.FORGET][keys.REPORT])
    batch = method.on_before_batch_transfer(raw, 0)
    forget = batch[keys.FORGET]
    perturbed = forget[PERTURBED]
    # the perturbed copy is re-tokenized from corrupted reports and carries noisy images; the raw batch is untouched
    assert perturbed[keys.REPORT] != forget[keys.REPORT]
    assert keys.INPUT_IDS in perturbed and len(perturbed[keys.INPUT_IDS]) == len(reports)
    assert not torch.equal(perturbed[keys.IMAGE], forget[keys.IMAGE])
    assert 0.0 <= float(perturbed[keys.IMAGE].min()) and float(perturbed[keys.IMAGE].max()) <= 1.0
    assert list(raw[keys.FORGET][keys.REPORT]) == reports and keys.INPUT_IDS not in raw[keys.FORGET]
    # validation batches are plain (not combined) and pass through without a perturbed copy
    val = method.on_before_batch_transfer(raw[keys.RETAIN], 0)
    assert PERTURBED not in val and keys.INPUT_IDS in val

    losses = method.unlearning_loss(forget, batch[keys.RETAIN])
    assert set(TERMS) <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    for hinge in ("uu", "mu"):
        assert 0.0 <= float(losses[hinge]) <= margin
    # student == teacher before any step (BatchNorm statistics frozen): retention terms start at 0
    assert float(losses["ur"]) == pytest.approx(0.0, abs=1e-6) and float(losses["mr"]) == pytest.approx(0.0, abs=1e-6)
    # without the hook's copy, the forget batch is perturbed on the fly
    plain_forget = {k: v for k, v in forget.items() if k != PERTURBED}
    assert torch.isfinite(method.unlearning_loss(plain_forget, batch[keys.RETAIN])["loss"])


def test_perturbation_state_is_checkpointed():
    a, b = ForgetMI(perturbation_seed=0), ForgetMI(perturbation_seed=1)
    a.text_perturbation(["pulmonary edema with effusion"])
    checkpoint: dict = {}
    a.on_save_checkpoint(checkpoint)
    b.on_load_checkpoint(checkpoint)
    images = torch.rand(2, 1, 8, 8)
    assert torch.equal(a.image_perturbation(images), b.image_perturbation(images))
    texts = ["mild interstitial edema and small bilateral effusions"] * 4
    assert a.text_perturbation(texts) == b.text_perturbation(texts)


# --- training ---------------------------------------------------------------------------------------------------
def test_each_term_is_logged(fitted):
    metrics = fitted.trainer.callback_metrics
    for term in TERMS:
        assert f"unlearn/{term}" in metrics and torch.isfinite(metrics[f"unlearn/{term}"])


def test_teacher_stays_frozen(fitted):
    method = fitted.method
    method.train()  # what a caller (or an older Lightning) may do: the teacher must stay in eval mode
    assert not any(m.training for m in method.teacher.modules())
    assert not any(p.requires_grad for p in method.teacher.parameters())
    after = method.teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in fitted.before.teacher.items()), "teacher weights changed"
    optimised = {id(p) for group in fitted.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in method.teacher.parameters()}


def test_student_moved_and_batchnorm_statistics_frozen(fitted):
    net = fitted.method.net
    after = net.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in fitted.before.net.items() if v.is_floating_point())
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    stats = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(fitted.before.net[k], after[k]) for k in stats)


def test_joint_fusion_is_the_models_own_persistent_module(fitted):
    net = fitted.method.net
    assert net.fusion is fitted.before.fusion, "the joint fusion module was re-created"
    assert any(k.startswith("fusion.") for k in net.state_dict())
    optimised = {id(p) for group in fitted.trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in net.fusion.parameters()} <= optimised
    after = net.fusion.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in fitted.before.fusion_state.items()), "fusion never trained"


def test_retention_only_keeps_the_student_on_the_teacher(fitted, trained_ckpt, forget_file, tiny_datamodule_kwargs):
    method = ForgetMI(ckpt=str(trained_ckpt), lr=1e-3, weights=(0, 1, 0, 1))
    dm = _datamodule(forget_file, tiny_datamodule_kwargs)
    _trainer().fit(method, datamodule=dm)
    assert _retain_distance(method, dm) < 1e-3
    # the forgetting terms are what moves the student (the equal preset at the same lr)
    assert _retain_distance(fitted.method, fitted.dm) > 10 * max(_retain_distance(method, dm), 1e-4)


# --- MultiDelete ------------------------------------------------------------------------------------------------
def test_multidelete_terms(trained_ckpt, forget_file, tiny_datamodule_kwargs):
    method = MultiDelete(ckpt=str(trained_ckpt))
    batch = method.on_before_batch_transfer(_raw_batch(_datamodule(forget_file, tiny_datamodule_kwargs)), 0)
    forget, retain = batch[keys.FORGET], batch[keys.RETAIN]
    pairs = MultiDelete.mismatched_pairs(forget, retain)
    assert len(pairs[keys.INPUT_IDS]) == len(forget[keys.IMAGE])
    assert pairs[keys.INPUT_IDS].shape[1] == retain[keys.INPUT_IDS].shape[1]
    losses = method.unlearning_loss(forget, retain)
    assert set(losses) == {"loss", "decoupling", "mm_retention", "uni_retention"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["decoupling"]) > 0
    assert float(losses["mm_retention"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["uni_retention"]) == pytest.approx(0.0, abs=1e-6)
    method.train()
    assert not any(m.training for m in method.teacher.modules())


# --- one-modality models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("modalities", ["image", "text"])
@pytest.mark.parametrize("cls", [ForgetMI, MultiDelete])
def test_single_modality_models(cls, modalities, forget_file, tiny_datamodule_kwargs):
    dm = _datamodule(forget_file, tiny_datamodule_kwargs)
    classifier = FusionClassifier(modalities=modalities, image_width=8, text_hidden=32, vocab_size=256, joint_dim=32,
                                  max_length=48)
    if modalities == "text":
        classifier.tokenizer = train_wordpiece_tokenizer(dm.train_reports(), 256)
    method = cls().attach(classifier)
    batch = method.on_before_batch_transfer(_raw_batch(dm), 0)
    losses = method.unlearning_loss(batch[keys.FORGET], batch[keys.RETAIN])
    assert all(torch.isfinite(v) for v in losses.values())
    if cls is MultiDelete:
        assert float(losses["decoupling"]) == 0.0, "nothing to decouple with one modality"
    else:
        losses["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.net.parameters())
