"""GRIN: find the weights that matter to the forget set but not to the retain set (score
``|grad L_f| / (|grad L_r| + eps)``), add Gaussian noise to the top-scored fraction, then fine-tune with GradDiff or
NPO (optionally on the selected weights only)."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch

from medforget.methods.lm._losses import SelectThenFineTune
from medforget.methods.lm._saliency import accumulate_gradients, top_fraction_mask
from medforget.methods.lm.base import mean_nll


class GRIN(SelectThenFineTune):
    """Gradient-ratio weight selection, noise injection, then GradDiff or NPO fine-tuning.

    Before the first step (once per run; a resumed run does not add noise again) the gradients of the forget NLL
    (all forget examples) and of the retain NLL (the first ``retain_batches`` retain batches) are accumulated at the
    original weights; every weight matrix entry (parameters with two or more dimensions: embeddings, attention and
    MLP weights, not the norms) is scored ``|grad L_f| / (|grad L_r| + eps)``, the top ``fraction`` of all of them
    (one global ranking) is selected, and each selected entry gets Gaussian noise of standard deviation
    ``noise_std * std(its tensor)``. The selection is kept in ``self.selection``. With ``lora`` the scored weights are
    the adapters': their ``lora_B`` starts at zero (so the forget gradient of ``lora_A`` is zero too), the selection
    falls on ``lora_B`` entries and the noise, relative to a zero tensor's spread, is zero: GRIN then amounts to its
    fine-tuning step on the adapters.

    Args:
        then: Fine-tuning loss after the noise: ``graddiff`` (``-NLL_f``) or ``npo``.
        beta: NPO's inverse temperature (``then=npo``).
        fraction: Share of the weight entries that are selected.
        noise_std: Standard deviation of the noise, relative to the standard deviation of each weight tensor.
        eps: The score's ``eps``.
        retain_batches: Retain batches the retain gradient is accumulated over.
        mask_updates: Fine-tune the selected weights only (the others, norms included, stay exactly as they were;
            ``weight_decay`` is applied to the selected weights only).
        seed: Seed of the noise.
        **kwargs: ``ckpt``, the optimizer settings (``lr``, ``weight_decay``, ``warmup``), the loss weights (``gamma``,
            ``alpha``, ``retain_loss``) and ``lora`` of :class:`~medforget.methods.lm.base.LMUnlearningMethod`.
    """

    def __init__(
        self,
        then: Literal["graddiff", "npo"] = "npo",
        beta: float = 0.1,
        fraction: float = 0.01,
        noise_std: float = 1.0,
        eps: float = 1e-8,
        retain_batches: int = 8,
        mask_updates: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.check_selection_args(then, fraction)
        super().__init__(**kwargs)
        self.selection: dict[str, torch.Tensor] = {}

    @property
    def restricts_updates(self) -> bool:
        return bool(self.hparams.mask_updates)

    def on_attach(self) -> None:
        if self.hparams.mask_updates:  # only weight matrices are scored: the rest never changes
            for p in self.lm.parameters():
                p.requires_grad_(p.requires_grad and p.ndim >= 2)

    def scored_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.lm.named_parameters() if p.requires_grad and p.ndim >= 2}

    def scores(self) -> dict[str, torch.Tensor]:
        """``|grad L_f| / (|grad L_r| + eps)`` of every scored weight at the current weights."""
        params = self.scored_parameters()
        content = getattr(self.trainer.datamodule, "content", "both")
        nll = partial(mean_nll, self.lm)
        forget = accumulate_gradients(params, self.part_batches("forget", content), nll)
        retain = accumulate_gradients(params, self.part_batches("retain", content), nll,
                                      max_batches=self.hparams.retain_batches)
        return {n: forget[n].abs() / (retain[n].abs() + self.hparams.eps) for n in params}

    def prepare(self) -> None:
        self.selection = top_fraction_mask(self.scores(), self.hparams.fraction)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        params = self.scored_parameters()
        with torch.no_grad():
            for name, mask in self.selection.items():
                p = params[name]
                noise = torch.randn(p.shape, generator=generator).to(p) * (self.hparams.noise_std * p.float().std())
                p.add_(noise * mask)
        if self.hparams.mask_updates:
            self.update_masks = dict(self.selection)
