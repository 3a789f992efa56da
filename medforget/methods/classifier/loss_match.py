"""LossMatch (ours): move the forget patients' losses onto the distribution of losses on patients never trained on."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier.base import UnlearningMethod


class LossMatch(UnlearningMethod):
    """Match the per-sample loss of the forget patients to the original model's loss on held-out patients.

    A retrained model's losses on the forget patients are distributed like its losses on any patients it never saw,
    and that is what the membership attacks compare. The original model's per-sample loss on the held-out ``val``
    patients (fused head, eval mode, measured once before the first update and kept in Lightning checkpoints) is
    the target distribution. On each forget batch of ``B`` samples the sorted losses are matched to that
    distribution's quantiles (the 1-D optimal transport between the two samples, squared: ``W2^2``), on the scale
    of the true-class probability ``p = exp(-CE)``, which is bounded: a loss attack ranks samples by their loss, so
    any monotone scale matches the same thing, and on this one the heavy tail of confidently wrong val samples
    (losses of 3-5) does not dominate the term::

        q_i       = quantile of the original's val p at (i + 1/2) / B,   i = 0 .. B-1
        L_forget  = mean_i (sort(p_forget)_i - q_i)^2             (fused head, eval mode)
        L         = CE(retain) + forget_weight L_forget           (the classifier's own loss on retain batches)

    Unlike gradient ascent (NegGradPlus, GradientAscent) the forget term has a floor: a forget sample whose loss sits
    at its quantile is not pushed further, and one pushed beyond is pulled back, so the forget patients stop where
    never-seen patients are instead of being driven to be *worse* than them (which the attacks detect as well), and
    the result depends less on the number of epochs, which matters when the tuned epochs are applied blind.

    The forget losses are computed in eval mode (dropout off, BatchNorm running statistics), as the audit scores the
    model; the retain batches train in train mode. The val patients are the hospital's held-out validation data: the
    audit measures the forget patients against the *test* patients, which this method never sees.

    Args:
        forget_weight: Weight of the matching term against the retain CE.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    reads_val = True  # its target distribution: the original's losses on the val patients

    def __init__(self, forget_weight: float = 3.0, **kwargs: Any) -> None:
        if forget_weight <= 0:
            raise ValueError(f"forget_weight must be > 0, got {forget_weight}")
        super().__init__(**kwargs)
        self.forget_weight = float(forget_weight)
        self.val_losses: torch.Tensor | None = None  # the target distribution (CE), sorted (on_train_start)

    @classmethod
    def search_space(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        from medforget.methods.classifier.search_space import FloatKnob, default_space

        return {**default_space(cls, init_args), "forget_weight": FloatKnob(0.3, 30.0, log=True)}

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.val_losses is None:
            self.val_losses = self.heldout_losses(keys.VAL)

    def heldout_losses(self, part: str) -> torch.Tensor:
        """Sorted per-sample fused-head CE of the model as it is (eval mode) over one datamodule part."""
        was_training = self.training
        self.eval()
        try:
            logits, labels = self.part_logits(part)
        finally:
            self.train(was_training)
        if len(labels) == 0:
            raise ValueError(f"LossMatch needs held-out patients to match: the datamodule's {part!r} part is empty")
        return F.cross_entropy(logits, labels, reduction="none").sort().values

    def target_quantiles(self, n: int) -> torch.Tensor:
        """The quantiles of the val true-class probability ``exp(-CE)`` at ``(i + 1/2) / n``, ``i = 0 .. n-1``
        (linear interpolation), in increasing order."""
        if self.val_losses is None:
            raise RuntimeError("LossMatch has no target distribution: it is measured at the start of fitting "
                               "(on_train_start), from the datamodule's val part")
        levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        return torch.quantile(torch.exp(-self.val_losses.double()), levels).float()

    def forget_losses(self, forget: dict) -> torch.Tensor:
        """Per-sample fused-head CE on a forget batch, in eval mode (with gradients)."""
        modes = [(m, m.training) for m in self.net.modules()]
        self.net.eval()
        try:
            logits = self(forget)["fused"].float()
        finally:
            for m, mode in modes:
                m.training = mode
        return F.cross_entropy(logits, forget[keys.LABEL], reduction="none")

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        losses = self.forget_losses(forget)
        probs = torch.exp(-losses).sort().values
        match = (probs - self.target_quantiles(len(probs)).to(probs.device)).pow(2).mean()
        return {"loss": retain_ce + self.forget_weight * match, "retain_ce": retain_ce.detach(),
                "forget_match": match.detach(), "forget_ce": losses.detach().mean()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medforget_val_losses"] = self.val_losses

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.val_losses = checkpoint.get("medforget_val_losses")
