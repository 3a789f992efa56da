"""Image encoders from timm (single channel, no classifier head)."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn


def create_image_encoder(
    name: str = "resnet18", width: int | None = 16, pretrained: str | None = None, **kwargs: Any
) -> nn.Module:
    """A timm backbone with ``in_chans=1`` and ``num_classes=0`` (pooled features, ``num_features`` wide).

    Args:
        name: Any ``timm.list_models()`` name.
        width: For ResNet-family models, the stem/first-stage width (stages ``w, 2w, 4w, 8w``); ``None`` keeps
            timm's default (64). A narrow ResNet trains in seconds per epoch on a laptop CPU.
        pretrained: Path to a local weights file (``.safetensors``/``.pth``) loaded through timm's
            ``pretrained_cfg_overlay``; nothing is downloaded.
        **kwargs: Passed to ``timm.create_model``.
    """
    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    if width is not None and name.startswith(("resnet", "resnext", "seresnet")):
        kwargs.setdefault("channels", (width, 2 * width, 4 * width, 8 * width))
        kwargs.setdefault("stem_width", width)
    if pretrained is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
    return timm.create_model(name, in_chans=1, num_classes=0, **kwargs)
