"""SalUn (Fan et al., ICLR 2024): weight saliency mask + random labelling, the mask a hard constraint."""

from __future__ import annotations

from typing import Any

import torch

from medforget.datamodules import keys
from medforget.methods.classifier._common import gradient_magnitudes
from medforget.methods.classifier.random_label import RandomLabel


class SalUn(RandomLabel):
    """RandomLabel (``CE(D_f, y') + CE(D_r)``) on the salient weights only.

    Saliency is ``|d CE(D_f) / d theta|`` at the original weights; the top ``mask_ratio`` fraction of all trainable
    weights (one global ranking) may change, every other weight stays exactly at its original value. The mask is
    enforced as a hard constraint: gradients of frozen weights are zeroed before each optimizer step (no momentum or
    Adam moment builds up for them) and, after each step, frozen weights are restored bit for bit (undoing weight
    decay, which acts on the weights directly). The mask is saved in Lightning checkpoints for exact resumption.

    Args:
        mask_ratio: Fraction of the weights (highest saliency) that are trained.
        **kwargs: The arguments of :class:`~medforget.methods.classifier.random_label.RandomLabel` (``retain_weight``,
            ``label_seed``), ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``,
            ``momentum``) of :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        mask_ratio: float = 0.5,
        **kwargs: Any,
    ) -> None:
        if not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
        super().__init__(**kwargs)
        self.mask_ratio = float(mask_ratio)
        self.masks: dict[str, torch.Tensor] = {}
        self._frozen_values: dict[str, torch.Tensor] = {}

    # --- the mask -----------------------------------------------------------------------------------------------
    def compute_masks(self, saliency: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Boolean masks (True = trainable) of the top ``mask_ratio`` weights by saliency, ranked globally: exactly
        ``k = round(mask_ratio * n)`` weights by index (ties broken by ``topk``), less those of zero saliency (no
        gradient on the forget loss at all, e.g. the embedding rows of tokens no forget report uses), which are never
        salient. A threshold ``saliency >= k-th value`` would select every weight once more than ``1 - mask_ratio``
        of them tie at zero, which made SalUn train all weights, i.e. RandomLabel (issue-14 leaderboard)."""
        names = list(saliency)
        flat = torch.cat([saliency[n].flatten() for n in names])
        k = max(1, int(round(self.mask_ratio * flat.numel())))
        chosen = torch.zeros_like(flat, dtype=torch.bool)
        chosen[torch.topk(flat, k, sorted=False).indices] = True
        if bool((flat[chosen] > 0).any()):  # without any gradient at all, keep the k weights rather than none
            chosen &= flat > 0
        pieces = chosen.split([saliency[n].numel() for n in names])
        return {n: piece.view_as(saliency[n]) for n, piece in zip(names, pieces, strict=True)}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        params = dict(self.net.named_parameters())
        self.masks = {n: m.to(params[n].device, torch.bool) for n, m in masks.items()}
        self._frozen_values = {n: params[n].detach().clone() for n in self.masks}

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self.masks:
            self.set_masks(self.compute_masks(gradient_magnitudes(self, (keys.FORGET,))))
        trainable = sum(int(m.sum()) for m in self.masks.values())
        self.log("unlearn/mask_fraction", trainable / max(1, sum(m.numel() for m in self.masks.values())))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for name, p in self.net.named_parameters():
            if p.grad is not None and name in self.masks:
                p.grad.mul_(self.masks[name])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.restore_frozen_weights()

    @torch.no_grad()
    def restore_frozen_weights(self) -> None:
        for name, p in self.net.named_parameters():
            if name in self.masks:
                p.copy_(torch.where(self.masks[name], p, self._frozen_values[name]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["salun_masks"] = {n: m.cpu() for n, m in self.masks.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._pending_masks = checkpoint.get("salun_masks")

    def on_fit_start(self) -> None:
        masks = getattr(self, "_pending_masks", None)
        if masks:  # resuming: the weights are restored by now; frozen entries still hold their original values
            self.set_masks(masks)
