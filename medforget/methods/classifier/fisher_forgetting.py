"""Fisher forgetting (Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR 2020): training-free."""

from __future__ import annotations

import torch

from medforget.datamodules import keys
from medforget.methods.classifier._common import OneShot, squared_gradients


class FisherForgetting(OneShot):
    """Add Gaussian noise with variance ``alpha / F_r`` to every weight, ``F_r`` the diagonal Fisher information of
    the retain set: weights the retain data does not pin down (low ``F_r``) are scrambled, which erases what only
    D_f relied on. The variance is capped at ``max_variance`` (as in the reference implementation) so unconstrained
    weights are perturbed, not destroyed.

    The Fisher is the empirical one, averaged over micro-batches of ``micro_batch`` samples (1 = exact per-sample
    squared gradients; larger is faster and underestimates it by about the micro-batch size, which ``alpha`` absorbs).
    With ``--data.bounded true`` (the default) ``F_r`` is estimated on the bounded retain pool (``--data.retain_pool``
    studies of whole patients), not on every retain study: its cost does not grow with the hospital.

    Args:
        ckpt: Checkpoint of the trained classifier (training-free: no optimizer settings, see
            :class:`~medforget.methods.classifier._common.OneShot`).
        alpha: Noise scale.
        max_variance: Cap of the per-weight noise variance.
        micro_batch: Samples per gradient in the Fisher estimate.
        noise_seed: Seed of the noise.
    """

    def __init__(
        self,
        ckpt: str | None = None,
        alpha: float = 1e-8,
        max_variance: float = 1e-3,
        micro_batch: int = 4,
        noise_seed: int = 0,
    ) -> None:
        if alpha <= 0 or max_variance <= 0 or micro_batch < 1:
            raise ValueError(f"alpha, max_variance must be > 0 and micro_batch >= 1, got {alpha}, {max_variance}, "
                             f"{micro_batch}")
        super().__init__(ckpt)
        self.alpha, self.max_variance = float(alpha), float(max_variance)
        self.micro_batch, self.noise_seed = int(micro_batch), int(noise_seed)

    def edit(self) -> dict[str, float]:
        fisher = squared_gradients(self, (keys.RETAIN,), micro_batch=self.micro_batch)
        generator = torch.Generator(device="cpu").manual_seed(self.noise_seed)
        capped = total = 0
        std_sum = 0.0
        for name, p in self.net.named_parameters():
            if name not in fisher:
                continue
            variance = (self.alpha / (fisher[name] + 1e-8)).clamp(max=self.max_variance)
            noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
            p.add_(variance.sqrt() * noise)
            capped += int((variance >= self.max_variance).sum())
            total += p.numel()
            std_sum += float(variance.sqrt().sum())
        return {"capped_fraction": capped / max(total, 1), "mean_noise_std": std_sum / max(total, 1)}
