"""Export and load the classifier system's checkpoints: one :class:`FusionClassifier`, or a sharded
:class:`~medforget.systems.classifier.ensemble.FusionEnsemble` (``train --shards``)."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

from medforget.core.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    check_export_target,
    public_hparams,
    read_checkpoint,
)
from medforget.systems.classifier.ensemble import FusionEnsemble, ensemble_from_checkpoint, is_ensemble_checkpoint
from medforget.systems.classifier.fusion import CHECKPOINT_FORMAT, FusionClassifier


def load_classifier(path: str | Path) -> FusionClassifier | FusionEnsemble:
    """Rebuild a :class:`FusionClassifier` (weights + tokenizer) from a checkpoint, on the CPU, in eval mode; a
    sharded ensemble's checkpoint (``train --shards``) gives a :class:`FusionEnsemble`, which has the classifier's
    interface."""
    ckpt = read_checkpoint(path)
    if is_ensemble_checkpoint(ckpt):
        return ensemble_from_checkpoint(ckpt, path)
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
        hparams = public_hparams(ckpt["hyper_parameters"])
        model = contextvars.Context().run(FusionClassifier, **{**hparams, "image_pretrained": None})
        model.hparams.image_pretrained = hparams.get("image_pretrained")
    except TypeError as err:
        raise CheckpointError(f"{path}: hyper_parameters do not describe a FusionClassifier ({err})") from err
    model.on_load_checkpoint(ckpt)
    # earlier checkpoints kept BERT's pooler, which the mean-pooling text encoder never used: drop it
    own = model.state_dict()
    state = {k: v for k, v in ckpt["state_dict"].items() if ".backbone.pooler." not in k or k in own}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise CheckpointError(f"{path}: weights do not match the architecture ({' '.join(str(err).split())[:400]})"
                              ) from err
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the architecture (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    model.provenance = dict(ckpt.get("medforget", {}).get("provenance", {}))
    return model.eval()


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

    path = check_export_target(path, protect, overwrite)
    checkpoint: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": public_hparams(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    checkpoint["medforget"]["provenance"] = dict(provenance or {})
    return atomic_torch_save(checkpoint, path)
