"""Helpers shared by the teacher/student unlearning methods (ForgetMI, MultiDelete, ...)."""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medforget.datamodules import keys
from medforget.methods.classifier.base import UnlearningMethod


class Frozen(nn.Module):
    """A module that is always in ``eval()`` mode and never receives gradients.

    ``.train()`` is a no-op (Lightning calls it on the whole system at the start of fitting and after every
    validation loop), so BatchNorm statistics and dropout of the wrapped module stay frozen. The wrapped module is
    still a registered submodule: it follows the system across devices and is saved in Lightning checkpoints.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


def frozen_copy(module: nn.Module) -> Frozen:
    """A deep copy of ``module`` (e.g. the original network as a teacher), frozen: eval mode, no gradients."""
    return Frozen(copy.deepcopy(module))


def l2_distance(x: torch.Tensor, reference: torch.Tensor, relative: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample L2 distance ``||x - reference||`` of ``(B, D)`` embeddings: ``(B,)``.

    With ``relative=True`` it is divided by ``||reference||`` (no gradient through the scale), which makes the
    distance dimensionless, so margins and loss weights mean the same for any encoder width or feature scale.
    """
    d = (x - reference).flatten(1).norm(dim=-1)  # (B,)
    if relative:
        d = d / reference.detach().flatten(1).norm(dim=-1).clamp_min(eps)
    return d


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_batchnorm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode: running statistics are used and not updated (their
    affine weights still train). A student then computes features exactly like its frozen teacher, so teacher/student
    distances measure weight changes, not train/eval-mode differences or the statistics of a tiny forget batch."""
    for m in module.modules():
        if isinstance(m, BATCH_NORMS):
            m.eval()


class TeacherStudent(UnlearningMethod, register=False):
    """Base of methods that distil from a frozen copy of the original network (``self.teacher``).

    ``on_attach`` makes the teacher; the student (``self.net``) trains with its BatchNorm statistics frozen when the
    subclass sets ``self.freeze_bn_stats``. Lightning does not call ``.train()`` itself (it restores the modes it
    found around validation), so the modes are set when the classifier is attached and again at ``on_train_start``;
    Lightning's "Found N module(s) in eval mode at the start of training" warning is therefore expected.
    Not registered (the name starts with ``_``).
    """

    freeze_bn_stats: bool = False

    def on_attach(self) -> None:
        self.teacher = frozen_copy(self.net)
        self.train(self.training)

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)  # the teacher stays in eval mode (Frozen)
        if mode and self.freeze_bn_stats and self.classifier is not None:
            freeze_batchnorm_statistics(self.net)
        return self

    def on_train_start(self) -> None:
        super().on_train_start()
        self.train()


# --- relabelling, distillation, random networks ------------------------------------------------------------------
def random_wrong_labels(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniformly random labels ``y' != y`` (RandomLabel, SalUn); ``labels`` unchanged, same device."""
    if num_classes < 2:
        raise ValueError("random wrong labels need at least 2 classes")
    offset = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + offset) % num_classes


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``KL(teacher || student)`` of the softened predictions, batch mean, scaled by ``T^2`` (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits.detach() / t, -1),
                    log_target=True, reduction="batchmean") * t**2


def borrow_reports(batch: dict, reports: dict) -> dict:
    """``batch`` with the tokenized reports of another batch: row ``k`` gets row ``k mod len(reports)`` of
    ``reports``. Pairs images with text from other patients: MultiDelete's mismatched pairs, and the synthetic or
    noise images of MultiGAN and UNSIR in a fusion model."""
    ids = reports[keys.INPUT_IDS]
    idx = torch.arange(len(batch[keys.IMAGE]), device=ids.device) % len(ids)
    return {**batch, keys.INPUT_IDS: ids[idx], keys.ATTENTION_MASK: reports[keys.ATTENTION_MASK][idx]}


def randomly_initialised_copy(module: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``module`` with every layer re-initialised (its own ``reset_parameters``) from ``seed``: the same
    architecture, no knowledge (BadTeacher's incompetent teacher)."""
    copy_ = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in copy_.modules():
            if hasattr(m, "reset_parameters") and m is not copy_:
                m.reset_parameters()
    return copy_


# --- importance estimates ----------------------------------------------------------------------------------------
def squared_gradients(
    method: UnlearningMethod, parts: Sequence[str], labels: str = "true", micro_batch: int | None = None
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher information ``E[(d CE / d theta)^2]`` of the trainable weights over the batches of
    datamodule ``parts`` (mean of squared gradients of batch-mean losses), with the network in eval mode.

    Args:
        method: The unlearning system (its ``net`` and ``part_batches``).
        parts: Datamodule parts to average over, e.g. ``("forget",)`` or ``("forget", "retain")``.
        labels: ``true`` (empirical Fisher) or ``predicted`` (the model's own argmax labels).
        micro_batch: Split each batch into chunks of this many samples, one gradient each (1: per-sample squared
            gradients, the exact empirical Fisher; ``None``: one gradient per loader batch).
    """
    return _gradient_statistic(method, parts, labels, square=True, micro_batch=micro_batch)


def gradient_magnitudes(method: UnlearningMethod, parts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``|d CE / d theta|`` of the mean loss over ``parts`` (SalUn's weight saliency)."""
    return _gradient_statistic(method, parts, "true", square=False)


def split_batch(batch: dict, size: int) -> list[dict]:
    """Chunks of ``size`` samples of a batch dict (tensors and lists are sliced along the batch dimension)."""
    n = len(batch[keys.LABEL])
    return [{k: v[i:i + size] if isinstance(v, (torch.Tensor, list, tuple)) else v for k, v in batch.items()}
            for i in range(0, n, size)]


def _gradient_statistic(method: UnlearningMethod, parts: Sequence[str], labels: str, square: bool,
                        micro_batch: int | None = None) -> dict[str, torch.Tensor]:
    net = method.net
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = net.training
    net.eval()
    chunks = (c for part in parts for b in method.part_batches(part)
              for c in (split_batch(b, micro_batch) if micro_batch else [b]))
    count = 0
    with torch.enable_grad():
        for batch in chunks:
            net.zero_grad(set_to_none=True)
            logits = net(batch)["fused"]
            target = logits.argmax(-1).detach() if labels == "predicted" else batch[keys.LABEL]
            F.cross_entropy(logits, target).backward()
            for n, p in params.items():
                if p.grad is not None:
                    total[n] += p.grad.detach() ** 2 if square else p.grad.detach()
            count += 1
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    if count == 0:
        raise ValueError(f"no batches in parts {tuple(parts)}")
    return {n: v / count if square else (v / count).abs() for n, v in total.items()}


# --- one-shot (training-free) methods ----------------------------------------------------------------------------
class OneShot(UnlearningMethod, register=False):
    """Base of methods that edit the weights once (SSD, FisherForgetting) instead of training: :meth:`edit` runs at
    the start of fitting, then the fit stops before the first step. Not registered (``register=False``).

    Nothing is optimized, so a subclass takes no optimizer settings: its ``__init__`` narrows the base's arguments
    to ``ckpt`` (declared, no ``**kwargs``) and passes ``ckpt`` alone to ``super().__init__``, so that
    ``--print_config`` offers no learning rate that would be ignored (see
    :class:`~medforget.methods.base.UnlearningBase`)."""

    one_shot: ClassVar[bool] = True

    @abstractmethod
    def edit(self) -> dict[str, float]:
        """Change the weights of ``self.net`` in place; return figures to log (e.g. the fraction of weights hit)."""

    def on_train_start(self) -> None:
        super().on_train_start()
        with torch.no_grad():
            stats = self.edit()
        for k, v in stats.items():
            self.log(f"unlearn/{k}", float(v))
        self.edit_stats = stats
        self.trainer.should_stop = True

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        raise RuntimeError(f"{type(self).__name__} is training-free: the fit stops after edit()")
