"""UNSIR (Tarun et al., "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023): error-maximising noise."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier._common import borrow_reports
from medforget.methods.classifier.base import UnlearningMethod


class UNSIR(UnlearningMethod):
    """Impair with error-maximising noise, then repair on the retain set.

    1. **Noise.** Before the first step, one noise image per class present in D_f is learnt with Adam to *maximise*
       the original model's loss on that class: minimise ``-CE(f(N_c), c) + noise_reg * mean ||N_c||^2`` for
       ``noise_steps`` steps.
    2. **Impair** (epochs ``< impair_epochs``): ``CE(D_r) + CE(f(N_y), y)`` for the labels ``y`` of each forget batch,
       which wrecks what the model maps to the forget samples' classes from their images.
    3. **Repair** (later epochs): ``CE(D_r)`` only.

    In a fusion model the noise image is paired with reports of the retain batch (no forget text is used). The noise
    lives in image space, so a text-only model is rejected.

    Args:
        impair_epochs: Epochs of the impair phase (the rest repair).
        noise_steps: Optimisation steps of the noise.
        noise_lr: Adam learning rate of the noise.
        noise_reg: Weight of the noise-energy penalty.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        impair_epochs: int = 1,
        noise_steps: int = 20,
        noise_lr: float = 0.1,
        noise_reg: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.impair_epochs, self.noise_steps = int(impair_epochs), int(noise_steps)
        self.noise_lr, self.noise_reg = float(noise_lr), float(noise_reg)
        self.noise: torch.Tensor | None = None  # (num_classes, 1, H, W); rows of absent classes are unused

    def on_attach(self) -> None:
        if "image" not in self.net.modalities:
            raise ValueError("UNSIR learns noise in image space: it needs a model with the image modality")

    def learn_noise(self, image_shape: tuple[int, ...], classes: torch.Tensor, reports: dict) -> torch.Tensor:
        """Error-maximising noise images ``(num_classes, *image_shape)`` for ``classes``; ``reports`` holds
        ``input_ids``/``attention_mask`` to pair with them (fusion models)."""
        noise = torch.randn((self.num_classes, *image_shape), device=self.device, requires_grad=True)
        opt = torch.optim.Adam([noise], lr=self.noise_lr)
        net = self.net
        was_training = net.training
        net.eval()
        with torch.enable_grad():
            for _ in range(self.noise_steps):
                batch = self._noise_batch(noise, classes, reports)
                loss = -F.cross_entropy(net(batch)["fused"], classes) + self.noise_reg * noise[classes].pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.zero_grad(set_to_none=True)
        net.train(was_training)
        return noise.detach()

    def _noise_batch(self, noise: torch.Tensor, labels: torch.Tensor, reports: dict) -> dict:
        batch = {keys.IMAGE: noise[labels], keys.LABEL: labels}
        return borrow_reports(batch, reports) if "text" in self.net.modalities else batch

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.noise is None:
            forget = list(self.part_batches(keys.FORGET))
            retain = next(iter(self.part_batches(keys.RETAIN)))
            classes = torch.unique(torch.cat([b[keys.LABEL] for b in forget]))
            self.noise = self.learn_noise(tuple(forget[0][keys.IMAGE].shape[1:]), classes, retain)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        if self.current_epoch >= self.impair_epochs or self.noise is None:
            return {"loss": retain_ce, "retain_ce": retain_ce.detach()}
        noise_ce = self.classification_loss(self._noise_batch(self.noise, forget[keys.LABEL], retain))
        return {"loss": retain_ce + noise_ce, "retain_ce": retain_ce.detach(), "noise_ce": noise_ce.detach()}
