"""Helpers shared by the teacher/student unlearning methods (ForgetMI, MultiDelete, ...)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from medforget.unlearning.base import UnlearningMethod


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


class _TeacherStudent(UnlearningMethod):
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

    def train(self, mode: bool = True) -> _TeacherStudent:
        super().train(mode)  # the teacher stays in eval mode (Frozen)
        if mode and self.freeze_bn_stats and self.classifier is not None:
            freeze_batchnorm_statistics(self.net)
        return self

    def on_train_start(self) -> None:
        super().on_train_start()
        self.train()
