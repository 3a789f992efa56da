"""Classifier checkpoints: safe loading (``weights_only=True``), atomic export and the chain of custody.

Every model medforget produces -- original, retrained, unlearned -- is exported in one format: a Lightning-compatible
checkpoint of a :class:`~medforget.classifier.FusionClassifier` (``state_dict``, ``hyper_parameters``, and a
``medforget`` section with the tokenizer and provenance). ``FusionClassifier.load_from_checkpoint`` reads it too.

Chain of custody: every exported checkpoint gets a SHA-256 sidecar (``model.ckpt.sha256``, the format of
``sha256sum``, so ``sha256sum -c model.ckpt.sha256`` checks it too); an unlearned model's provenance records its
parent's SHA-256 (``parent_sha256``), and the audits record the SHA-256 of every checkpoint they audited.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import os
import shutil
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
    """Rebuild a :class:`FusionClassifier` (weights + tokenizer) from a checkpoint, on the CPU, in eval mode; a
    sharded ensemble's checkpoint (``train --shards``) gives a :class:`~medforget.ensemble.FusionEnsemble`, which
    has the classifier's interface."""
    ckpt = read_checkpoint(path)
    from medforget.ensemble import ensemble_from_checkpoint, is_ensemble_checkpoint

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
        hparams = _public_hparams(ckpt["hyper_parameters"])
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


SIDECAR_SUFFIX = ".sha256"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """Where the SHA-256 sidecar of ``path`` lives: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> str | None:
    """The SHA-256 that ``path``'s sidecar records, or ``None`` without a sidecar (a malformed one is an error)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    digest = side.read_text(encoding="utf-8", errors="replace").split(maxsplit=1)[:1]
    if not digest or len(digest[0]) != 64 or any(c not in "0123456789abcdef" for c in digest[0]):
        raise CheckpointError(f"{side}: not a SHA-256 sidecar (expected '<64 hex digits>  {Path(path).name}')")
    return digest[0]


def write_error(path: str | Path, err: BaseException) -> OSError:
    """An :class:`OSError` naming ``path`` for a failed write (torch's writer raises a bare ``RuntimeError`` on a full
    disk); the free space is in the message."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = -1
    code = getattr(err, "errno", None) or (errno.ENOSPC if 0 <= free < 64 << 20 else errno.EIO)
    reason = os.strerror(code) if not isinstance(err, OSError) or not err.strerror else err.strerror
    detail = "" if isinstance(err, OSError) else f" ({' '.join(str(err).split())[:200]})"
    return OSError(code, f"cannot write {path}: {reason}{detail}; {max(free, 0) / 2**20:.1f} MiB free there; "
                         "nothing was written or replaced")


def _atomic_write(path: Path, write: Any) -> str:
    """``write(tmp)`` to a temporary file beside ``path``, fsync, rename; returns the SHA-256 of what was written.

    The SHA-256 sidecar (``<path>.sha256``) follows the file: an old sidecar is removed before the rename and the new
    one is written after it, so a crash in between leaves a file without a sidecar, never one with a wrong one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    side = sidecar_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        side.unlink(missing_ok=True)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_sidecar(path, digest)
    return digest


def write_sidecar(path: str | Path, digest: str | None = None) -> Path:
    """Write ``<path>.sha256`` (``sha256sum`` format) atomically; ``digest`` defaults to the file's SHA-256."""
    path = Path(path)
    digest = digest or sha256_file(path)
    side = sidecar_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{digest}  {path.name}\n")
        os.replace(tmp, side)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(side, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return side


def check_resume_checkpoint(path: str | Path, module: torch.nn.Module) -> None:
    """Refuse, naming the file, a checkpoint to resume from (``--ckpt_path``) that is not loadable with
    ``weights_only=True`` or whose weights do not fit ``module`` (missing or unexpected keys, other shapes): Lightning
    would stop deep inside ``fit`` with an unpickling or size-mismatch error that names no file."""
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state_dict; not a checkpoint to resume this run from")
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and (not isinstance(v, torch.Tensor) or v.shape != own[k].shape)]
    if (missing or unexpected) and getattr(module, "strict_loading", True) or shapes:
        raise CheckpointError(f"{path}: weights do not match this run's model (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, other shapes {shapes[:5]}); resume with the command that wrote it")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see a partial file. The
    file's SHA-256 goes to the sidecar ``<path>.sha256``."""
    path = Path(path)
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))
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
