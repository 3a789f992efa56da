"""Image + text fusion network with per-modality and joint embeddings (timm-style features / head split)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medforget.datamodules import keys

Modalities = Literal["both", "image", "text"]
Fusion = Literal["concat", "gated", "attention"]


class JointFusion(nn.Module):
    """The joint representation: a persistent part of the network (never re-created per step).

    ``concat``: MLP over ``[p_i, p_t]``; ``gated``: ``g * p_i + (1 - g) * p_t`` with ``g = sigmoid(W [p_i, p_t])``;
    ``attention``: a transformer layer over the two modality tokens, mean-pooled.
    """

    def __init__(self, dim: int, kind: Fusion = "gated", dropout: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        if kind == "concat":
            self.mix = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout))
        elif kind == "gated":
            self.gate = nn.Linear(2 * dim, dim)
        elif kind == "attention":
            self.mix = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=dropout,
                                                  batch_first=True, norm_first=True)
        else:
            raise ValueError(f"unknown fusion {kind!r}; choose concat, gated or attention")

    def forward(self, p_i: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return self.mix(torch.cat([p_i, p_t], dim=-1))  # (B, D)
        if self.kind == "gated":
            g = torch.sigmoid(self.gate(torch.cat([p_i, p_t], dim=-1)))  # (B, D)
            return g * p_i + (1 - g) * p_t
        return self.mix(torch.stack([p_i, p_t], dim=1)).mean(1)  # (B, 2, D) -> (B, D)


class FusionNet(nn.Module):
    """Image encoder + text encoder -> projections -> joint fusion -> fused / image / text heads.

    ``forward_features(batch)`` returns ``{"image": z_i, "text": z_t, "joint": z_j}`` (only the modalities present);
    ``forward_head(feats)`` returns logits ``{"fused", "image", "text"}``. ``num_features`` maps each to its width.

    Args:
        image_encoder: Pooled image backbone with ``num_features`` (``None`` for text-only).
        text_encoder: :class:`~medforget.models.text.TextEncoder` (``None`` for image-only).
        num_classes: Output classes.
        joint_dim: Width of the projections and the joint embedding.
        fusion: How the projections are fused (see :class:`JointFusion`).
        dropout: Dropout before the heads.
    """

    def __init__(
        self,
        image_encoder: nn.Module | None,
        text_encoder: nn.Module | None,
        num_classes: int = 4,
        joint_dim: int = 128,
        fusion: Fusion = "gated",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_encoder is None and text_encoder is None:
            raise ValueError("FusionNet needs at least one of image_encoder / text_encoder")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.num_classes = num_classes
        self.num_features: dict[str, int] = {"joint": joint_dim}
        self.heads = nn.ModuleDict()
        if image_encoder is not None:
            self.num_features["image"] = int(image_encoder.num_features)
            self.proj_image = nn.Sequential(nn.Linear(self.num_features["image"], joint_dim), nn.LayerNorm(joint_dim))
            self.heads["image"] = nn.Linear(self.num_features["image"], num_classes)
        if text_encoder is not None:
            self.num_features["text"] = int(text_encoder.num_features)
            self.proj_text = nn.Sequential(nn.Linear(self.num_features["text"], joint_dim), nn.LayerNorm(joint_dim))
            self.heads["text"] = nn.Linear(self.num_features["text"], num_classes)
        self.fusion = JointFusion(joint_dim, fusion, dropout) if image_encoder and text_encoder else None
        self.drop = nn.Dropout(dropout)
        self.heads["fused"] = nn.Linear(joint_dim, num_classes)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in ("image", "text") if m in self.num_features)

    def forward_features(self, batch: dict) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        if self.image_encoder is not None:
            feats["image"] = self.image_encoder(batch[keys.IMAGE])  # (B, Fi)
        if self.text_encoder is not None:
            feats["text"] = self.text_encoder(batch[keys.INPUT_IDS], batch[keys.ATTENTION_MASK])  # (B, Ft)
        if self.fusion is not None:
            feats["joint"] = self.fusion(self.proj_image(feats["image"]), self.proj_text(feats["text"]))  # (B, D)
        elif "image" in feats:
            feats["joint"] = nn.functional.gelu(self.proj_image(feats["image"]))
        else:
            feats["joint"] = nn.functional.gelu(self.proj_text(feats["text"]))
        return feats

    def unimodal_features(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``concat(z_i, z_t)`` of the modalities present: (B, Fi + Ft)."""
        return torch.cat([feats[m] for m in self.modalities], dim=-1)

    def forward_head(self, feats: dict[str, torch.Tensor], pre_logits: bool = False) -> dict[str, torch.Tensor]:
        if pre_logits:
            return feats
        out = {"fused": self.heads["fused"](self.drop(feats["joint"]))}
        for m in self.modalities:
            out[m] = self.heads[m](self.drop(feats[m]))
        return out

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(batch))


def build_fusion_net(
    modalities: Modalities = "both",
    num_classes: int = 4,
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
) -> FusionNet:
    """Build a :class:`FusionNet` from plain arguments (see ``FusionClassifier`` for their meaning)."""
    from medforget.models.image import create_image_encoder
    from medforget.models.text import TextEncoder

    if modalities not in ("both", "image", "text"):
        raise ValueError(f"modalities must be 'both', 'image' or 'text', got {modalities!r}")
    if fusion not in ("concat", "gated", "attention"):
        raise ValueError(f"unknown fusion {fusion!r}; choose concat, gated or attention")
    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 or 3 (--data.channels), got {image_channels!r}")
    image = None
    if modalities != "text":
        image = create_image_encoder(image_encoder, image_width, image_pretrained, in_chans=image_channels)
    text = None
    if modalities != "image":
        text = TextEncoder(text_encoder, vocab_size, text_hidden, text_layers, text_heads, max_length)
    return FusionNet(image, text, num_classes, joint_dim, fusion, dropout)
