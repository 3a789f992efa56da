"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier._common import TeacherStudent, distillation_kl


class SCRUB(TeacherStudent):
    """Student/teacher unlearning with alternating max- and min-steps (manual optimization, two optimizer steps per
    batch while ``epoch < msteps``, one after).

    * **max-step** on a forget batch: maximise ``KL(teacher || student)`` (minimise its negative, clamped at
      ``max_forget_kl`` so the ascent is bounded);
    * **min-step** on a retain batch: minimise ``gamma * CE + alpha * KL(teacher || student)``.

    The paper runs whole passes of max-steps then min-steps per epoch; here each combined forget/retain batch does one
    of each, the same alternation at batch granularity. Temperature ``T`` softens both KLs (scaled by ``T^2``).

    Args:
        lr: Learning rate.
        msteps: Number of epochs with max-steps.
        temperature: Distillation temperature.
        gamma: Weight of the retain CE in the min-step.
        alpha: Weight of the retain KL in the min-step.
        max_forget_kl: Forget KL above which the max-step stops pushing.
        max_grad_norm: Gradient-norm clipping of each step (``None``: off). Manual optimization: Trainer-level
            ``gradient_clip_val`` is not available for this method.
        **kwargs: ``ckpt`` and the other optimizer settings (``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        lr: float = 5e-4,
        msteps: int = 3,
        temperature: float = 2.0,
        gamma: float = 1.0,
        alpha: float = 0.5,
        max_forget_kl: float = 5.0,
        max_grad_norm: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        if msteps < 0 or temperature <= 0:
            raise ValueError(f"msteps must be >= 0 and temperature > 0, got {msteps}, {temperature}")
        super().__init__(lr=lr, **kwargs)
        self.automatic_optimization = False
        self.msteps, self.temperature = int(msteps), float(temperature)
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.max_forget_kl, self.max_grad_norm = float(max_forget_kl), max_grad_norm

    @classmethod
    def search_space(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        from medforget.methods.classifier.search_space import FloatKnob, default_space

        return {**default_space(cls, init_args), "alpha": FloatKnob(0.1, 2.0, log=True),
                "gamma": FloatKnob(0.1, 2.0, log=True), "temperature": FloatKnob(1.0, 4.0)}

    def max_step_loss(self, forget: dict) -> tuple[torch.Tensor, torch.Tensor]:
        kl = distillation_kl(self(forget)["fused"], self.teacher(forget)["fused"], self.temperature)
        return -torch.clamp(kl, max=self.max_forget_kl), kl.detach()

    def min_step_loss(self, retain: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self(retain)["fused"]
        ce = F.cross_entropy(logits, retain[keys.LABEL])
        kl = distillation_kl(logits, self.teacher(retain)["fused"], self.temperature)
        return self.gamma * ce + self.alpha * kl, ce.detach(), kl.detach()

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        """Both objectives summed (for inspection; training alternates them, see :meth:`training_step`)."""
        max_loss, forget_kl = self.max_step_loss(forget)
        min_loss, retain_ce, retain_kl = self.min_step_loss(retain)
        return {"loss": max_loss + min_loss, "forget_kl": forget_kl, "retain_ce": retain_ce, "retain_kl": retain_kl}

    def _step(self, loss: torch.Tensor) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.max_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        forget, retain = batch[keys.FORGET], batch[keys.RETAIN]
        logs: dict[str, torch.Tensor] = {}
        if self.current_epoch < self.msteps:
            max_loss, logs["forget_kl"] = self.max_step_loss(forget)
            self._step(max_loss)
            logs["max_loss"] = max_loss.detach()
        min_loss, logs["retain_ce"], logs["retain_kl"] = self.min_step_loss(retain)
        self._step(min_loss)
        logs["loss"] = min_loss.detach() + logs.get("max_loss", 0.0)
        self.log_dict({f"unlearn/{k}": v for k, v in logs.items()}, batch_size=len(retain[keys.LABEL]),
                      on_step=False, on_epoch=True, prog_bar=True)
        return {"loss": logs["loss"]}
