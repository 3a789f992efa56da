"""Classifier checkpoints: safe loading (``weights_only=True``) and atomic export.

Every model medforget produces -- original, retrained, unlearned -- is exported in one format: a Lightning-compatible
checkpoint of a :class:`~medforget.classifier.FusionClassifier` (``state_dict``, ``hyper_parameters``, and a
``medforget`` section with the tokenizer and provenance). ``FusionClassifier.load_from_checkpoint`` reads it too.
"""

from __future__ import annotations

import contextvars
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from medforget.classifier import CHECKPOINT_FORMAT, FusionClassifier


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a medforget classifier; the message names the file."""


def _public_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(hparams).items() if not k.startswith("_")}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from err


def load_classifier(path: str | Path) -> FusionClassifier:
    """Rebuild a :class:`FusionClassifier` (weights + tokenizer) from a checkpoint, on the CPU, in eval mode."""
    ckpt = read_checkpoint(path)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: no state_dict/hyper_parameters; not a medforget classifier checkpoint")
    fmt = ckpt.get("medforget", {}).get("format")
    if fmt is not None and fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {fmt} is newer than this medforget ({CHECKPOINT_FORMAT})")
    try:
        # A fresh context: when called while LightningCLI instantiates an UnlearningMethod, the CLI's
        # "given hyperparameters" context variable must not become this classifier's hparams.
        # image_pretrained is not read again (the state dict holds the trained weights; the file may be gone):
        # the architecture comes from the recorded width and channels
        hparams = _public_hparams(ckpt["hyper_parameters"])
        model = contextvars.Context().run(FusionClassifier, **{**hparams, "image_pretrained": None})
        model.hparams.image_pretrained = hparams.get("image_pretrained")
    except TypeError as err:
        raise CheckpointError(f"{path}: hyper_parameters do not describe a FusionClassifier ({err})") from err
    model.on_load_checkpoint(ckpt)
    # earlier checkpoints kept BERT's pooler, which the mean-pooling text encoder never used: drop it
    own = model.state_dict()
    state = {k: v for k, v in ckpt["state_dict"].items() if ".backbone.pooler." not in k or k in own}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the architecture (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    model.provenance = dict(ckpt.get("medforget", {}).get("provenance", {}))
    return model.eval()


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_classifier(
    model: FusionClassifier,
    path: str | Path,
    provenance: dict[str, Any] | None = None,
    protect: tuple[str | Path, ...] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a classifier checkpoint, atomically.

    Args:
        model: The classifier.
        path: Output file.
        provenance: Plain-data facts stored under ``checkpoint["medforget"]["provenance"]`` (method, times, ...).
        protect: Input files that must never be overwritten (e.g. the checkpoint an unlearning run started from).
        overwrite: Replace an existing output file.
    """
    import lightning

    path = Path(path)
    for p in protect:
        if Path(p).exists() and path.resolve() == Path(p).resolve():
            raise FileExistsError(f"refusing to overwrite the input checkpoint {p}; choose another output path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it")
    checkpoint: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": _public_hparams(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    checkpoint["medforget"]["provenance"] = dict(provenance or {})
    return atomic_torch_save(checkpoint, path)
