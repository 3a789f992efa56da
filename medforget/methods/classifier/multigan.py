"""MultiGAN (Hatua et al.): synthetic retain / forget data from small conditional GANs, inverted forget labels."""

from __future__ import annotations

from typing import Any

import torch

from medforget.datamodules import keys
from medforget.methods.classifier._common import TeacherStudent, borrow_reports, random_wrong_labels
from medforget.models.gan import ConditionalGenerator, fit_conditional_gan


class MultiGAN(TeacherStudent):
    """Fine-tune on real retain data plus synthetic retain data, with the labels of forget data inverted.

    Before the first step two class-conditional GANs (:func:`~medforget.models.gan.fit_conditional_gan`) are trained,
    one on the retain images and one on the forget images. At every step:

    * synthetic retain images ``G_r(z, c)`` are labelled with the original model's prediction (the frozen teacher);
    * synthetic forget images ``G_f(z, c)`` and the real forget batch get *inverted* labels: a random class different
      from the teacher's prediction (synthetic) or the true label (real);
    * the loss is ``CE(D_r) + CE(synthetic retain) + forget_weight * (CE(synthetic forget) + CE(D_f))`` with those
      labels.

    The generators make images only: in a fusion model synthetic images are paired with reports of the retain batch.
    A text-only model is rejected.

    Args:
        forget_weight: Weight of the two inverted-label terms.
        gan_steps: Training steps of each GAN.
        gan_lr: Adam learning rate of the GANs.
        max_gan_images: Retain images the retain GAN is trained on (a seeded sample when there are more).
        synthetic_batch: Synthetic images of each kind per step.
        gan_seed: Seed of the GANs, their samples and the inverted labels.
        **kwargs: ``ckpt`` and the optimizer settings (``lr``, ``optimizer``, ``weight_decay``, ``momentum``) of
            :class:`~medforget.methods.classifier.base.UnlearningMethod`.
    """

    def __init__(
        self,
        forget_weight: float = 1.0,
        gan_steps: int = 200,
        gan_lr: float = 2e-4,
        max_gan_images: int = 2048,
        synthetic_batch: int = 16,
        gan_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.forget_weight, self.gan_steps, self.gan_lr = float(forget_weight), int(gan_steps), float(gan_lr)
        self.max_gan_images, self.synthetic_batch, self.gan_seed = int(max_gan_images), int(synthetic_batch), gan_seed
        self.generators: dict[str, ConditionalGenerator] = {}
        self.sample_generator = torch.Generator().manual_seed(gan_seed)

    def on_attach(self) -> None:
        if "image" not in self.net.modalities:
            raise ValueError("MultiGAN generates images: it needs a model with the image modality")
        super().on_attach()

    def _images(self, part: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for batch in self.part_batches(part):
            images.append(batch[keys.IMAGE])
            labels.append(batch[keys.LABEL])
        x, y = torch.cat(images), torch.cat(labels)
        if len(x) > limit:
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.gan_seed))[:limit]
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        return x, y

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self.generators:  # plain attributes, not submodules: they are not part of the exported classifier
            for i, part in enumerate((keys.RETAIN, keys.FORGET)):
                x, y = self._images(part, self.max_gan_images)
                self.generators[part] = fit_conditional_gan(x, y, self.num_classes, self.gan_steps,
                                                            lr=self.gan_lr, seed=self.gan_seed + i)

    def _synthetic(self, part: str, reports: dict) -> dict:
        labels = torch.randint(0, self.num_classes, (self.synthetic_batch,), generator=self.sample_generator)
        labels = labels.to(self.device)
        with torch.no_grad():
            batch = {keys.IMAGE: self.generators[part].sample(labels, self.sample_generator)}
        if "text" in self.net.modalities:
            batch = borrow_reports(batch, reports)
        with torch.no_grad():
            batch[keys.LABEL] = self.teacher(batch)["fused"].argmax(-1)
        return batch

    def _inverted(self, labels: torch.Tensor) -> torch.Tensor:
        return random_wrong_labels(labels, self.num_classes, self.sample_generator)

    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        retain_ce = self.classification_loss(retain)
        terms = {"retain_ce": retain_ce}
        if self.generators:
            syn_retain = self._synthetic(keys.RETAIN, retain)
            syn_forget = self._synthetic(keys.FORGET, retain)
            terms["synthetic_retain_ce"] = self.classification_loss(syn_retain)
            terms["synthetic_forget_inverted_ce"] = self.classification_loss(
                syn_forget, self._inverted(syn_forget[keys.LABEL]))
        terms["forget_inverted_ce"] = self.classification_loss(forget, self._inverted(forget[keys.LABEL]))
        total = retain_ce + terms.get("synthetic_retain_ce", 0.0) + self.forget_weight * (
            terms.get("synthetic_forget_inverted_ce", 0.0) + terms["forget_inverted_ce"])
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}}
