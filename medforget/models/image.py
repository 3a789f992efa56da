"""Image encoders: any timm model, or a MONAI DenseNet, with pooled features and no classifier head.

Pretrained weights come from a local file only (a state dict saved with ``torch.save`` -- ``.pt``/``.pth``/``.bin``,
read with ``weights_only=True`` -- or a ``.safetensors`` file); nothing is ever downloaded. The first convolution is
adapted to the image channels (timm's ``adapt_input_conv``: RGB weights summed for one channel, repeated for more),
the classifier's weights are dropped, and the width of the network is read from the weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

MONAI_PREFIX = "monai:"
MONAI_DENSENETS = ("DenseNet121", "DenseNet169", "DenseNet201", "DenseNet264")
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "timm/", "http://", "https://")
# torchvision's DenseNet keys (denselayer1.norm1.weight, or norm.1 in its published files) -> MONAI's
# (denselayer1.layers.norm1.weight)
TORCHVISION_DENSE = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|"
                               r"num_batches_tracked)$")


class ImageWeightsError(ValueError):
    """A pretrained image-weights file is missing, unreadable or does not fit the encoder; the message names it."""


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``).

    A checkpoint that nests its weights under ``state_dict`` or ``model`` is unwrapped; a ``module.`` prefix (from
    ``DataParallel``) is removed.
    """
    text = str(path)
    path = Path(path)
    if text.startswith(HUB_PREFIXES):
        raise ImageWeightsError(f"--model.image_pretrained {text!r} is not a local file: medforget never downloads "
                                "weights; download them yourself and pass the file's path")
    if not path.is_file():
        raise ImageWeightsError(f"--model.image_pretrained: weights file not found: {path} (a local file is "
                                "needed: medforget never downloads weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ImageWeightsError(f"{path}: not a loadable weights file ({type(err).__name__}: {err}); expected a "
                                "state dict (torch.save, .pt/.pth) or a .safetensors file") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImageWeightsError(f"{path}: holds no state dict of tensors (a name -> tensor mapping)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first(state: dict[str, torch.Tensor], keys: tuple[str, ...], path: Path, what: str) -> torch.Tensor:
    for key in keys:
        if key in state:
            return state[key]
    raise ImageWeightsError(f"{path}: no {' or '.join(keys)} in the weights: not the {what} they are loaded into")


def _check_width(width: int | None, found: int, path: Path, what: str) -> int:
    if width is not None and width != found:
        raise ImageWeightsError(f"--model.image_width {width} contradicts the weights in {path} ({what} {found}); "
                                f"pass --model.image_width {found}, or null to take it from the weights")
    return found


def _adapt_and_load(model: nn.Module, state: dict[str, torch.Tensor], first_conv: str, drop: tuple[str, ...],
                    in_chans: int, path: Path) -> None:
    """Adapt the first convolution to ``in_chans``, drop the classifier, load strictly with errors naming keys."""
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    key = f"{first_conv}.weight"
    if key in state and state[key].shape[1] != in_chans:
        state[key] = adapt_input_conv(in_chans, state[key])
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if shapes or missing or unexpected:
        parts = [f"{name} ({len(items)}): {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for name, items in (("different shapes, file vs model", shapes), ("missing", missing),
                                     ("unexpected", unexpected)) if items]
        raise ImageWeightsError(f"{path}: the weights do not fit the encoder: " + "; ".join(parts))
    model.load_state_dict(state)


def _is_resnet(name: str) -> bool:
    """A model of timm's ``resnet`` module (ResNet, ResNeXt, SE-ResNet, wide ResNet, ...): its width is a flag."""
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__.endswith(".resnet")


def _timm_encoder(name: str, width: int | None, pretrained: Path | None, in_chans: int, **kwargs: Any) -> nn.Module:
    if name.startswith(HUB_PREFIXES):
        raise ValueError(f"--model.image_encoder {name!r} is a hub name: medforget never downloads weights; give "
                         "the architecture's timm name and the downloaded file as --model.image_pretrained")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() (or {MONAI_PREFIX}DenseNet121 for "
                         "MONAI's)")
    resnet = _is_resnet(name)
    state = load_weights(pretrained) if pretrained is not None else None
    if state is not None and resnet:
        if "layer1.0.conv3.weight" in state:  # bottleneck: planes * 4 outputs
            found = int(state["layer1.0.conv3.weight"].shape[0]) // 4
        else:  # basic block: planes outputs
            found = int(_first(state, ("layer1.0.conv2.weight",), pretrained, f"ResNet {name}").shape[0])
        width = _check_width(width, found, pretrained, "first-stage width")
        if "conv1.0.weight" in state and int(state["conv1.0.weight"].shape[0]) != width:
            raise ImageWeightsError(f"{pretrained}: a deep-stem ResNet whose stem width "
                                    f"({int(state['conv1.0.weight'].shape[0])}) differs from its first-stage width "
                                    f"({width}) cannot be rebuilt from --model.image_width; use a plain-stem ResNet")
    elif state is not None and width is not None:
        raise ValueError(f"--model.image_width applies to ResNet-family and MONAI DenseNet encoders; {name} takes "
                         "its width from its name and weights: pass --model.image_width null")
    if width is not None and resnet:
        kwargs.setdefault("channels", (width, 2 * width, 4 * width, 8 * width))
        kwargs.setdefault("stem_width", width)
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **kwargs)
    if state is not None:
        cfg = model.pretrained_cfg or {}
        classifier = cfg.get("classifier") or "fc"
        classifiers = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
        _adapt_and_load(model, state, cfg.get("first_conv") or "conv1", tuple(f"{c}." for c in classifiers),
                        in_chans, pretrained)
    return model


def _monai_encoder(name: str, width: int | None, pretrained: Path | None, in_chans: int) -> nn.Module:
    from monai.networks import nets

    arch = name.removeprefix(MONAI_PREFIX)
    if arch not in MONAI_DENSENETS:
        raise ValueError(f"unknown MONAI image encoder {name!r}; choose one of "
                         f"{', '.join(MONAI_PREFIX + n for n in MONAI_DENSENETS)}")
    growth = None
    state = None
    if pretrained is not None:
        state = load_weights(pretrained)
        for key in list(state):  # torchvision-style names, as MONAI's own loader converts them
            match = TORCHVISION_DENSE.match(key)
            if match:
                layer, kind, index, tensor = match.groups()
                state[f"{layer}.layers.{kind}{index}.{tensor}"] = state.pop(key)
        conv0 = _first(state, ("features.conv0.weight",), pretrained, f"MONAI {arch}")
        width = _check_width(width, int(conv0.shape[0]), pretrained, "init_features")
        growth = int(_first(state, ("features.denseblock1.denselayer1.layers.conv2.weight",), pretrained,
                            f"MONAI {arch}").shape[0])
    width = 64 if width is None else width  # MONAI's default: init_features 64, growth_rate 32
    growth = growth or max(1, width // 2)
    net = getattr(nets, arch)(spatial_dims=2, in_channels=in_chans, out_channels=1, init_features=width,
                              growth_rate=growth)
    net.num_features = int(net.class_layers.out.in_features)
    net.class_layers.out = nn.Identity()  # (B, num_features) pooled features
    if state is not None:
        _adapt_and_load(net, state, "features.conv0", ("class_layers.out.", "classifier."), in_chans, pretrained)
    return net


def create_image_encoder(
    name: str = "resnet18",
    width: int | None = 16,
    pretrained: str | None = None,
    in_chans: int = 1,
    **kwargs: Any,
) -> nn.Module:
    """A pooled image backbone (``num_features`` wide, no classifier head) for ``in_chans``-channel images.

    Args:
        name: Any ``timm.list_models()`` name, or ``monai:DenseNet121`` (also 169, 201, 264) for MONAI's DenseNet.
        width: ResNet family: the stage widths ``w, 2w, 4w, 8w`` (timm's ``channels``); MONAI DenseNet:
            ``init_features`` (growth rate ``w // 2``). ``None``: the architecture's default (64), or, with
            ``pretrained``, the width of the weights; an explicit width that contradicts the weights is an error. A
            narrow ResNet trains in seconds per epoch on a laptop CPU.
        pretrained: Local weights file (state dict ``.pt``/``.pth`` or ``.safetensors``) of the same architecture,
            e.g. ImageNet or chest-X-ray weights; never downloaded. The first convolution is adapted to ``in_chans``.
        in_chans: Image channels (1 grayscale, 3 RGB).
        **kwargs: Passed to ``timm.create_model``.
    """
    path = Path(pretrained) if pretrained is not None else None
    if name.startswith(MONAI_PREFIX):
        if kwargs:
            raise ValueError(f"extra encoder arguments {sorted(kwargs)} are only passed to timm models")
        return _monai_encoder(name, width, path, in_chans)
    return _timm_encoder(name, width, path, in_chans, **kwargs)


def encoder_width(encoder: nn.Module, name: str) -> int | None:
    """The width an encoder was built with (what ``create_image_encoder(width=...)`` rebuilds it from), or ``None``
    for architectures whose width is fixed by their name."""
    if name.startswith(MONAI_PREFIX):
        return int(encoder.features.conv0.out_channels)
    if not name.startswith(MONAI_PREFIX) and _is_resnet(name):
        block = encoder.layer1[0]
        return int(block.conv3.out_channels) // 4 if hasattr(block, "conv3") else int(block.conv2.out_channels)
    return None
