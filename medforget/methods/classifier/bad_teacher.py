"""BadTeacher (Chundawat et al., AAAI 2023): distil from a competent teacher on D_r, an incompetent one on D_f."""

from __future__ import annotations

from typing import Any

import torch

from medforget.methods.classifier._common import Frozen, TeacherStudent, distillation_kl, randomly_initialised_copy


class BadTeacher(TeacherStudent):
    """Minimise ``KL(competent || student)`` on D_r + ``KL(incompetent || student)`` on D_f.

    The competent teacher is the frozen original; the incompetent teacher is the same architecture randomly
    initialised (seeded), frozen too, so the student's forget predictions drift to those of a model that learnt
    nothing.

    Args:
        temperature: Distillation temperature (KLs scaled by ``T^2``).
        forget_weight: Weight of the forget (incompetent-teacher) term.
        teacher_seed: Seed of the incompetent teacher's initialisation.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        forget_weight: float = 1.0,
        teacher_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.teacher_seed = teacher_seed
        super().__init__(**kwargs)
        self.temperature, self.forget_weight = float(temperature), float(forget_weight)

    def on_attach(self) -> None:
        super().on_attach()
        self.bad_teacher = Frozen(randomly_initialised_copy(self.net, self.teacher_seed))

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_kl = distillation_kl(self(retain)["fused"], self.teacher(retain)["fused"], self.temperature)
        forget_kl = distillation_kl(self(forget)["fused"], self.bad_teacher(forget)["fused"], self.temperature)
        return {"loss": retain_kl + self.forget_weight * forget_kl, "retain_kl": retain_kl.detach(),
                "forget_kl": forget_kl.detach()}
