"""Weight scores and masks shared by the language-model methods that select weights (GRIN, SURE): gradients
accumulated over a datamodule part, and the global top-fraction selection."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch


def accumulate_gradients(params: dict[str, torch.nn.Parameter], batches: Iterable[dict[str, torch.Tensor]],
                         loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                         max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """The gradient of the mean batch loss over ``batches`` (at most ``max_batches``) for each named parameter
    (float32; zero for a parameter the loss does not reach). ``.grad`` is left untouched."""
    names = list(params)
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    count = 0
    for batch in itertools.islice(batches, max_batches):
        grads = torch.autograd.grad(loss_fn(batch), [params[n] for n in names], allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:
                total[name] += grad.float()
        count += 1
    if count == 0:
        raise ValueError("no batches to accumulate gradients over")
    return {n: g / count for n, g in total.items()}


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks (same shapes as ``scores``) selecting exactly ``round(fraction * N)`` entries (at least one) of
    the ``N`` scores of all tensors together: the highest, ranked globally (ties broken by ``torch.topk``)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])  # (N,)
    k = max(1, round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return masks
