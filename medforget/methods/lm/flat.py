"""FLAT (Wang et al., ICLR 2025, "LLM Unlearning via Loss Adjustment with only Forget data"): maximise an
f-divergence between a template refusal (the "good" answer, the forget batches' ``alt``) and the forget answer (the
"bad" one) through its variational form, ``L = -[g(P(good)) - f*(g(P(bad)))]``, where ``P`` is an answer's average
per-token probability, ``g`` the divergence's output activation and ``f*`` its convex conjugate. Forget data only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from medforget.methods.lm.base import LMUnlearningMethod, token_logprobs
from medforget.systems.lm import ClinicalLM

Fn = Callable[[torch.Tensor], torch.Tensor]
#: ``divergence -> (g, f*)``: the (activation, conjugate) pairs of the f-GAN table (Nowozin et al., 2016) that FLAT
#: uses; ``f*(g(v))`` of Jensen-Shannon simplifies to ``v + log(1 + e^-v) - log 2``.
DIVERGENCES: dict[str, tuple[Fn, Fn]] = {
    "kl": (lambda v: v, lambda t: torch.exp(t - 1.0)),
    "js": (lambda v: math.log(2.0) - F.softplus(-v), lambda t: -torch.log(2.0 - torch.exp(t))),
    "pearson": (lambda v: v, lambda t: t.square() / 4.0 + t),
    "tv": (lambda v: 0.5 * torch.tanh(v), lambda t: t),
}


def flat_loss(p_good: torch.Tensor, p_bad: torch.Tensor, divergence: str) -> torch.Tensor:
    """``-(mean g(p_good) - mean f*(g(p_bad)))`` for answer probabilities ``[B]`` of the good and bad answers."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; one of {sorted(DIVERGENCES)}")
    g, conjugate = DIVERGENCES[divergence]
    return -(g(p_good).mean() - conjugate(g(p_bad)).mean())


def answer_probability(model: ClinicalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The average per-token probability of each sequence's labelled tokens, ``(1/|y|) sum_i p(y_i | x, y_<i)``
    ``[B]``."""
    logp, mask = token_logprobs(model, batch)  # (B, T-1)
    return (logp.exp() * mask).sum(1) / mask.sum(1).clamp_min(1)


class FLAT(LMUnlearningMethod):
    """Loss adjustment with only forget data: raise the refusal's probability and lower the forget answer's, weighted
    by an f-divergence's variational form (no retain data, no reference model; ``alpha`` and ``retain_loss`` are
    ignored).

    Args:
        divergence: ``kl``, ``js`` (Jensen-Shannon), ``pearson`` (chi-squared) or ``tv`` (total variation).
        **kwargs: ``ckpt``, the optimizer settings (``lr``, ``weight_decay``, ``warmup``), the loss weights (``gamma``,
            ``alpha``, ``retain_loss``) and ``lora`` of :class:`~medforget.methods.lm.base.LMUnlearningMethod`.
    """

    uses_retain = False

    def __init__(
        self,
        divergence: Literal["kl", "js", "pearson", "tv"] = "kl",
        **kwargs: Any,
    ) -> None:
        if divergence not in DIVERGENCES:
            raise ValueError(f"model.divergence must be one of {sorted(DIVERGENCES)}, got {divergence!r}")
        super().__init__(**kwargs)
        self.divergence = divergence

    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "alt" not in forget:
            raise KeyError("FLAT needs refusals: forget batches with 'alt' (ClinicalNotesDataModule(mode='unlearn'))")
        loss = flat_loss(answer_probability(self.lm, forget["alt"]), answer_probability(self.lm, forget),
                         self.divergence)
        return self.combine(loss, retain)
