"""MultiDelete (Cheng & Amiri, ECCV 2024): modality decoupling + multimodal and unimodal knowledge retention."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier._common import TeacherStudent, borrow_reports, l2_distance


class MultiDelete(TeacherStudent):
    """Decouple the image-report pairs of D_f while a frozen teacher (the original model) anchors D_r.

    * **Modality decoupling** (D_f, weight ``alpha``): a forget pair should be treated as *unrelated* data. The
      student's joint embedding of each forget pair ``(I_f, T_f)`` is pulled to the teacher's joint embedding of a
      mismatched pair ``(I_f, T_r)``, the same image with the report of a retain patient (retain batch row
      ``k mod B_r``), so the fused representation stops carrying what the forget image and report encode together.
      It is a distance to a fixed (no-gradient) target, hence bounded below by 0 and unable to diverge.
    * **Multimodal knowledge retention** (D_r, weight ``beta``): ``KL(teacher || student)`` of the fused-head
      predictions at ``temperature`` (scaled by ``T^2``).
    * **Unimodal knowledge retention** (D_r, weight ``gamma``): L2 distance between the student's and the teacher's
      unimodal embeddings ``concat(z_i, z_t)``.

    Image-only and text-only models have no modality pairs to decouple: the decoupling term is 0 and only the two
    retention terms act (which then leave D_f untouched — use a fusion model with this method).
    The teacher is frozen (``eval()`` even when Lightning switches the system to train mode, no gradients).

    Args:
        lr: Learning rate.
        alpha: Weight of modality decoupling on D_f.
        beta: Weight of multimodal knowledge retention (fused-head KL) on D_r.
        gamma: Weight of unimodal knowledge retention (embedding distance) on D_r.
        temperature: Softmax temperature of the retention KL.
        relative: Divide embedding distances by the norm of the teacher's embedding (scale-free); ``False``: raw
            per-sample L2 distances.
        freeze_bn_stats: Keep the student's BatchNorm layers in eval mode (running statistics fixed, affine weights
            trained), so that before any update student and teacher embeddings are identical.
        **kwargs: ``ckpt`` and the other optimizer settings (``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        lr: float = 5e-5,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        relative: bool = True,
        freeze_bn_stats: bool = True,
        **kwargs: Any,
    ) -> None:
        if min(alpha, beta, gamma) < 0:
            raise ValueError(f"alpha, beta, gamma must be >= 0, got {alpha}, {beta}, {gamma}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(lr=lr, **kwargs)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.temperature = float(temperature)
        self.relative = relative
        self.freeze_bn_stats = freeze_bn_stats
        self.train(self.training)  # apply it to the classifier attached by super().__init__

    @staticmethod
    def mismatched_pairs(forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        """Forget images paired with retain reports: row ``k`` gets the report of retain row ``k mod B_r``."""
        return borrow_reports({keys.IMAGE: forget[keys.IMAGE]}, retain)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        net, teacher = self.net, self.teacher.module
        student_r = net.forward_features(retain)
        logits_r = net.forward_head(student_r)["fused"]
        with torch.no_grad():
            teacher_r = teacher.forward_features(retain)
            teacher_logits_r = teacher.forward_head(teacher_r)["fused"]
        t = self.temperature
        mkr = F.kl_div(F.log_softmax(logits_r / t, -1), F.log_softmax(teacher_logits_r / t, -1), log_target=True,
                       reduction="batchmean") * t**2
        ukr = l2_distance(net.unimodal_features(student_r), teacher.unimodal_features(teacher_r), self.relative).mean()

        if net.fusion is not None:
            joint_f = net.forward_features(forget)["joint"]
            with torch.no_grad():
                target = teacher.forward_features(self.mismatched_pairs(forget, retain))["joint"]
            md = l2_distance(joint_f, target, self.relative).mean()
        else:  # one modality: nothing to decouple
            md = logits_r.new_zeros(())
        total = self.alpha * md + self.beta * mkr + self.gamma * ukr
        return {"loss": total, "decoupling": md, "mm_retention": mkr, "uni_retention": ukr}
