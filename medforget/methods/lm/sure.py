"""SURE (Zhang et al., ICLR 2025, "Catastrophic Failure of LLM Unlearning via Quantization"): saliency-based
unlearning with a large learning rate. Only the most forget-salient neurons are updated, so a large learning rate
moves them far enough that 4-bit quantization cannot round them back to the original weights, while the rest of the
model (and its utility) stays exactly as it was."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch

from medforget.methods.lm._losses import SelectThenFineTune
from medforget.methods.lm._saliency import accumulate_gradients, top_fraction_mask
from medforget.methods.lm.base import mean_nll


class SURE(SelectThenFineTune):
    """GradDiff or NPO on the forget-salient output neurons of the linear layers only.

    The units are the output neurons (rows) of every ``nn.Linear`` of the model (attention and MLP projections, and
    the output head: with tied embeddings, the token embedding rows); a neuron's saliency is the L2 norm of the
    forget NLL's gradient over its row (and bias), accumulated over all forget examples at the original weights,
    before the first step (once per run; a resumed run keeps its masks). The top ``fraction`` of neurons (one global
    ranking) train; every other weight, norms included, stays exactly at its original value (a hard mask: AdamW's
    weight decay too). The row masks are ``self.update_masks``. With ``lora`` the units are the adapters' rows; as
    ``lora_B`` starts at zero, only its rows (output neurons of the adapted layers) have a non-zero saliency.

    Args:
        lr: AdamW learning rate (large: the point of SURE).
        then: Unlearning loss on the selected neurons: ``graddiff`` (``-NLL_f``) or ``npo``.
        beta: NPO's inverse temperature (``then=npo``).
        fraction: Share of the output neurons that train.
        **kwargs: ``ckpt``, the other optimizer settings (``weight_decay``, ``warmup``), the loss weights (``gamma``,
            ``alpha``, ``retain_loss``) and ``lora`` of :class:`~medforget.methods.lm.base.LMUnlearningMethod`.
    """

    restricts_updates = True

    def __init__(
        self,
        lr: float = 1e-3,
        then: Literal["graddiff", "npo"] = "graddiff",
        beta: float = 0.1,
        fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        self.check_selection_args(then, fraction)
        super().__init__(lr=lr, **kwargs)

    def neurons(self) -> dict[str, list[str]]:
        """``{linear weight name: [its parameter names (weight, bias)]}``: the parameters whose rows are units (the
        trainable linear layers: with LoRA, the adapters' ``lora_A`` and ``lora_B``)."""
        names = {id(p): n for n, p in self.lm.named_parameters()}
        out: dict[str, list[str]] = {}
        for module in self.lm.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
                params = [module.weight] + ([module.bias] if module.bias is not None else [])
                out.setdefault(names[id(module.weight)], [names[id(p)] for p in params])
        return out

    def on_attach(self) -> None:
        trainable = {n for group in self.neurons().values() for n in group}
        for name, p in self.lm.named_parameters():
            p.requires_grad_(name in trainable)

    def prepare(self) -> None:
        params = dict(self.lm.named_parameters())
        content = getattr(self.trainer.datamodule, "content", "both")
        grads = accumulate_gradients({n: p for n, p in params.items() if p.requires_grad},
                                     self.part_batches("forget", content), partial(mean_nll, self.lm))
        groups = self.neurons()
        saliency = {w: sum(grads[n].flatten(1).square().sum(1) if grads[n].ndim > 1 else grads[n].square()
                           for n in group).sqrt() for w, group in groups.items()}  # (out,) per linear layer
        rows = top_fraction_mask(saliency, self.hparams.fraction)
        self.update_masks = {n: rows[w].view(-1, *[1] * (params[n].ndim - 1))
                             for w, group in groups.items() for n in group}
