"""ForgetMI (Hardan et al., MICCAI 2025): unimodal + multimodal forgetting against a perturbed forget set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from medforget.datamodules import keys
from medforget.methods.classifier._common import TeacherStudent, distillation_kl, l2_distance
from medforget.methods.classifier._perturbation import ImagePerturbation, TextPerturbation
from medforget.models.text import tokenize_batch

Preset = Literal["equal", "unimodal", "multimodal", "retention"]
PRESETS: dict[str, tuple[float, float, float, float]] = {  # (uu, ur, mu, mr)
    "equal": (0.25, 0.25, 0.25, 0.25),
    "unimodal": (0.4, 0.4, 0.1, 0.1),
    "multimodal": (0.1, 0.1, 0.4, 0.4),
    "retention": (0.1, 0.4, 0.1, 0.4),
}
PERTURBED = "perturbed"  # entry of the forget batch holding its perturbed (and re-tokenized) copy D̃_f


def normalise_weights(weights: Sequence[float]) -> tuple[float, float, float, float]:
    """``(uu, ur, mu, mr)`` scaled to sum to 1 (non-negative, not all zero)."""
    w = [float(x) for x in weights]
    if len(w) != 4 or any(not x >= 0 or x == float("inf") for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be 4 finite non-negative numbers (uu, ur, mu, mr), not all 0; got {weights}")
    total = sum(w)
    return tuple(x / total for x in w)  # type: ignore[return-value]


class ForgetMI(TeacherStudent):
    """Push the student's forget embeddings away from the frozen teacher's embeddings of *perturbed* forget data,
    while keeping its retain embeddings on the teacher's, at the unimodal and the joint level.

    The teacher is a frozen copy of the original network (``eval()``, no gradients, BatchNorm/dropout frozen even
    when Lightning switches the system to train mode); the student is the network being unlearned, with its own
    persistent joint-fusion module. D̃_f is the forget batch with Gaussian image noise (clipped to ``[0, 1]``) and
    corrupted report text (see :mod:`medforget.methods.classifier._perturbation`), perturbed afresh every step from the
    method's own seeded generators. With ``d`` the per-sample L2 distance and ``u = concat(z_i, z_t)``::

        L_UU = mean relu(margin - d(u_student(D_f), u_teacher(D̃_f)))       unimodal forgetting
        L_MU = mean relu(margin - d(z_joint_student(D_f), z_joint_teacher(D̃_f)))   multimodal forgetting
        L_UR = mean d(u_student(D_r), u_teacher(D_r))                        unimodal retention
        L_MR = mean d(z_joint_student(D_r), z_joint_teacher(D_r))            multimodal retention
        L    = w_uu L_UU + w_ur L_UR + w_mu L_MU + w_mr L_MR                 (weights sum to 1)

    The paper's ``-d`` forgetting terms are unbounded below; the hinge keeps them in ``[0, margin]`` (same gradient
    as ``-d`` until the distance reaches the margin, none after), so training cannot diverge. Image-only and
    text-only models work too: ``u`` is the embedding of the one modality present. Clip gradients with the
    Trainer (``--trainer.gradient_clip_val 1.0``, set in ``configs/unlearn/forget_mi.yaml``).

    Args:
        lr: Learning rate (1e-5..1e-4 with AdamW; this method's default).
        preset: Loss weights ``(uu, ur, mu, mr)``: ``equal`` (.25 each), ``unimodal`` (.4, .4, .1, .1),
            ``multimodal`` (.1, .1, .4, .4) or ``retention`` (.1, .4, .1, .4).
        weights: Explicit ``(uu, ur, mu, mr)`` weights, normalised to sum to 1; overrides ``preset``.
        margin: Hinge margin of the forgetting terms: the distance beyond which forget embeddings are no longer
            pushed (relative to the teacher's embedding norm when ``relative``).
        relative: Divide each distance by the norm of the teacher's embedding, so ``margin`` and the weights are
            independent of encoder width and feature scale; ``False``: raw L2 distances.
        sigma: Standard deviation of the Gaussian image noise of D̃_f.
        text_level: Per-word probability of a text perturbation in D̃_f (0.3-0.5 in the paper).
        perturbation_seed: Seed of the perturbation generators (named apart from ``data.seed``: Lightning merges
            the hyperparameters of the system and the datamodule).
        freeze_bn_stats: Keep the student's BatchNorm layers in eval mode (running statistics fixed, affine weights
            trained), so that before any update student and teacher embeddings are identical.
        retain_kl: Weight of an extra retain *output* distillation term, ``retain_kl * T^2 KL(teacher || student)``
            of the fused predictions on retain batches at temperature ``retain_temperature``, added to the
            normalised embedding loss (0: the paper's loss). The embedding retention terms alone let the retain
            patients' confidence drift (retain accuracy 0.72-0.84 against a retrained model's 1.00 in the
            leaderboard), which membership attacks detect; this term keeps the original's memorised outputs.
        retain_temperature: Temperature of the ``retain_kl`` term.
        **kwargs: ``ckpt`` and the other optimizer settings (``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        lr: float = 5e-5,
        preset: Preset = "equal",
        weights: tuple[float, float, float, float] | None = None,
        margin: float = 1.0,
        relative: bool = True,
        sigma: float = 0.1,
        text_level: float = 0.4,
        perturbation_seed: int = 0,
        freeze_bn_stats: bool = True,
        retain_kl: float = 0.0,
        retain_temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if retain_kl < 0 or not retain_temperature > 0:
            raise ValueError(f"retain_kl must be >= 0 and retain_temperature > 0, got {retain_kl}, "
                             f"{retain_temperature}")
        super().__init__(lr=lr, **kwargs)
        self.retain_kl, self.retain_temperature = float(retain_kl), float(retain_temperature)
        self.weights = normalise_weights(PRESETS[preset] if weights is None else weights)
        self.margin = float(margin)
        self.relative = relative
        self.image_perturbation = ImagePerturbation(sigma, (0.0, 1.0), perturbation_seed)
        self.text_perturbation = TextPerturbation(text_level, seed=perturbation_seed)
        self.freeze_bn_stats = freeze_bn_stats
        self.train(self.training)  # apply it to the classifier attached by super().__init__

    @classmethod
    def search_space(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        from medforget.methods.classifier.search_space import ChoiceKnob, FloatKnob, default_space

        return {**default_space(cls, init_args), "preset": ChoiceKnob(tuple(PRESETS)),
                "margin": FloatKnob(0.25, 2.0, log=True), "retain_kl": FloatKnob(0.0, 4.0)}

    # --- the perturbed forget set D̃_f -------------------------------------------------------------------------
    def perturb(self, batch: dict) -> dict:
        """A perturbed copy of a forget batch: noisy image, corrupted reports re-tokenized; ``batch`` is unchanged."""
        modalities = self.net.modalities
        out = {k: v for k, v in batch.items() if k not in (keys.INPUT_IDS, keys.ATTENTION_MASK, PERTURBED)}
        if "image" in modalities:
            out[keys.IMAGE] = self.image_perturbation(batch[keys.IMAGE])
        if "text" in modalities:
            out[keys.REPORT] = self.text_perturbation(list(batch[keys.REPORT]))
            out = tokenize_batch(out, self.classifier.tokenizer, self.classifier.hparams.max_length)
            if keys.INPUT_IDS in batch:  # already on the device (called from a step): follow the original batch
                device = batch[keys.INPUT_IDS].device
                out[keys.INPUT_IDS] = out[keys.INPUT_IDS].to(device)
                out[keys.ATTENTION_MASK] = out[keys.ATTENTION_MASK].to(device)
        return out

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if isinstance(batch, Mapping) and keys.FORGET in batch:  # training batches only (validation ones are plain)
            batch = dict(batch)
            batch[keys.FORGET] = {**batch[keys.FORGET], PERTURBED: self.perturb(batch[keys.FORGET])}
        return batch

    # --- loss ---------------------------------------------------------------------------------------------------
    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        perturbed = forget[PERTURBED] if PERTURBED in forget else self.perturb(forget)
        net, teacher = self.net, self.teacher.module
        student_f = net.forward_features(forget)
        student_r = net.forward_features(retain)
        with torch.no_grad():
            teacher_f = teacher.forward_features(perturbed)
            teacher_r = teacher.forward_features(retain)

        d_uu = l2_distance(net.unimodal_features(student_f), teacher.unimodal_features(teacher_f), self.relative)
        d_mu = l2_distance(student_f["joint"], teacher_f["joint"], self.relative)
        d_ur = l2_distance(net.unimodal_features(student_r), teacher.unimodal_features(teacher_r), self.relative)
        d_mr = l2_distance(student_r["joint"], teacher_r["joint"], self.relative)
        terms = {
            "uu": F.relu(self.margin - d_uu).mean(),
            "ur": d_ur.mean(),
            "mu": F.relu(self.margin - d_mu).mean(),
            "mr": d_mr.mean(),
        }
        w_uu, w_ur, w_mu, w_mr = self.weights
        total = w_uu * terms["uu"] + w_ur * terms["ur"] + w_mu * terms["mu"] + w_mr * terms["mr"]
        if self.retain_kl > 0:  # output-level retain fidelity (see retain_kl)
            terms["retain_kl"] = distillation_kl(net.forward_head(student_r)["fused"],
                                                 teacher.forward_head(teacher_r)["fused"], self.retain_temperature)
            total = total + self.retain_kl * terms["retain_kl"]
        return {"loss": total, **terms, "forget_dist_uni": d_uu.detach().mean(),
                "forget_dist_joint": d_mu.detach().mean()}

    # --- resumable perturbations --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["forget_mi_perturbation"] = {"image": self.image_perturbation.state_dict(),
                                                "text": self.text_perturbation.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("forget_mi_perturbation")
        if state is not None:
            self.image_perturbation.load_state_dict(state["image"])
            self.text_perturbation.load_state_dict(state["text"])
