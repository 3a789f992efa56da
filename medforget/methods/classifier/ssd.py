"""SSD, Selective Synaptic Dampening (Foster et al., AAAI 2024): training-free."""

from __future__ import annotations

import torch

from medforget.datamodules import keys
from medforget.methods.classifier._common import OneShot, squared_gradients


class SSD(OneShot):
    """Dampen the weights that matter far more to D_f than to the whole training set D = D_f + D_r.

    With diagonal Fisher importances ``I_f`` (over D_f) and ``I_D`` (over D), every weight with
    ``I_f > alpha * I_D`` is scaled by ``beta = min(lambda * I_D / I_f, 1)``; all others are left as they are. No
    training: the weights are edited once and the fit stops.

    Importances are means over loader batches, so ``I_f / I_D`` can be at most (batches of D) / (batches of D_f):
    ``alpha`` must stay below that ratio (the forget set must be a small part of D) for any weight to be selected.
    With ``--data.bounded true`` (the default) D is the forget set plus the bounded retain pool
    (``--data.retain_pool``), so ``I_D`` is estimated on a sample whose size does not grow with the hospital.

    Args:
        ckpt: Checkpoint of the trained classifier (training-free: no optimizer settings, see
            :class:`~medforget.methods.classifier._common.OneShot`).
        alpha: Selection threshold (how much more important to D_f a weight must be).
        dampening: ``lambda``, the dampening constant.
    """

    def __init__(self, ckpt: str | None = None, alpha: float = 10.0, dampening: float = 1.0) -> None:
        if alpha <= 0 or dampening <= 0:
            raise ValueError(f"alpha and dampening must be > 0, got {alpha}, {dampening}")
        super().__init__(ckpt)
        self.alpha, self.dampening = float(alpha), float(dampening)

    def edit(self) -> dict[str, float]:
        importance_d = squared_gradients(self, (keys.FORGET, keys.RETAIN))
        importance_f = squared_gradients(self, (keys.FORGET,))
        selected = total = 0
        for name, p in self.net.named_parameters():
            if name not in importance_f:
                continue
            i_d, i_f = importance_d[name], importance_f[name]
            hit = i_f > self.alpha * i_d
            beta = torch.clamp(self.dampening * i_d / i_f.clamp_min(1e-30), max=1.0)
            p.mul_(torch.where(hit, beta, torch.ones_like(beta)))
            selected += int(hit.sum())
            total += hit.numel()
        return {"dampened_fraction": selected / max(total, 1)}
