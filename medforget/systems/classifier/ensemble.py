"""FusionEnsemble: K :class:`~medforget.systems.classifier.FusionClassifier` members whose softmax probabilities are
averaged.

It is what ``train --shards K`` exports (SISA, :mod:`medforget.methods.classifier.sharding`) and what ``unlearn
--method SISA`` writes: a LightningModule with the classifier's interface (``forward`` returning ``{"fused", "image",
"text"}`` logits, ``loss``, ``prepare_batch``, ``predict_step``, ``check_channels``, ``provenance``), so the audit,
the quantization and relearning attacks and every loader (:func:`medforget.systems.classifier.load_classifier`) treat
it like one model.

**Logits.** For every head ``h`` the ensemble returns ``log(mean_k softmax(z_k[h]))``, the log of the members' mean
probability. Its softmax is exactly the mean probability (the ensemble's prediction), its argmax is the ensemble's
class, and cross-entropy on it is the negative log-likelihood of the mean probability; attacks that read logits
(loss, confidence, LiRA's logit scaling) therefore see the ensemble's probabilities.

**Tokenizers.** Each member keeps the tokenizer fitted on its own shard (so no shard depends on another shard's
reports, as exact unlearning requires); :meth:`prepare_batch` therefore leaves the reports as text and
:meth:`forward` tokenizes them once per member.

**Checkpoint.** The same Lightning-style file as a single classifier: ``state_dict`` (``net.<k>.<...>``: member
``k``'s network), ``hyper_parameters`` (the members' recipe, shared by all members), and ``medforget`` with
``format``, ``ensemble`` (``members``: K, ``tokenizers``: one per member) and ``provenance`` (with a ``sisa`` section
describing the shards and their slice checkpoints). :func:`medforget.systems.classifier.load_classifier` returns a
:class:`FusionEnsemble` for such a file."""

from __future__ import annotations

import contextvars
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from medforget.datamodules import keys
from medforget.models.text import tokenizer_from_dict, tokenizer_to_dict
from medforget.systems.classifier.fusion import CHECKPOINT_FORMAT, FusionClassifier

ENSEMBLE_KEY = "ensemble"


class FusionEnsemble(L.LightningModule):
    """Mean of the softmax probabilities of ``K`` fusion classifiers with one recipe.

    Args:
        members: The classifiers (same hyper-parameters; each with its own tokenizer if it reads reports).
    """

    def __init__(self, members: list[FusionClassifier]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a FusionEnsemble needs at least one member")
        recipe = _recipe(members[0])
        for k, member in enumerate(members[1:], start=1):
            if _recipe(member) != recipe:
                raise ValueError(f"ensemble member {k} has another recipe than member 0: "
                                 f"{_recipe(member)} vs {recipe}")
        # the members' networks are the registered parameters (state_dict keys net.<k>.*); the classifiers stay
        # plain attributes (their tokenizer, loss and heads), sharing those very networks (deepcopy keeps the sharing)
        self.net = nn.ModuleList([m.net for m in members])
        self.members = list(members)
        self.hparams.update(dict(members[0].hparams))
        self.heads = members[0].heads
        self.provenance: dict[str, Any] = {}

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def uses_text(self) -> bool:
        return self.members[0].uses_text

    # --- forward ------------------------------------------------------------------------------------------------
    def prepare_batch(self, batch: Any) -> Any:
        """The reports stay text: each member tokenizes them with its own tokenizer in :meth:`forward`."""
        return batch

    def member_logits(self, batch: dict) -> list[dict[str, torch.Tensor]]:
        """Each member's logits per head."""
        device = next(self.net.parameters()).device
        plain = {k: v for k, v in batch.items() if k not in (keys.INPUT_IDS, keys.ATTENTION_MASK)}
        outs = []
        for member, net in zip(self.members, self.net, strict=True):
            prepared = member.prepare_batch(plain)
            prepared = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepared.items()}
            outs.append(net(prepared))
        return outs

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{head: log(mean_k softmax(logits_k[head]))}`` (see the module docstring)."""
        outs = self.member_logits(batch)
        return {h: torch.logsumexp(torch.stack([F.log_softmax(o[h].float(), -1) for o in outs]), 0)
                - math.log(len(outs)) for h in outs[0]}

    def loss(self, logits: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The members' training loss applied to the ensemble's log-probabilities (fused NLL + auxiliary)."""
        return self.members[0].loss(logits, target)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        logits = self(batch)
        return {"logits": {h: v.float().cpu() for h, v in logits.items()}, keys.LABEL: batch[keys.LABEL].cpu(),
                keys.INDEX: batch[keys.INDEX].cpu()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        raise RuntimeError("a FusionEnsemble is trained shard by shard (train --shards), not as one module")

    def configure_optimizers(self):
        raise RuntimeError("a FusionEnsemble is trained shard by shard (train --shards), not as one module")

    def check_channels(self, channels: int, source: str | Path) -> None:
        """See :meth:`FusionClassifier.check_channels`."""
        self.members[0].check_channels(channels, source)

    # --- checkpoints --------------------------------------------------------------------------------------------
    def checkpoint(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint dict (plain tensors and data: ``torch.load(weights_only=True)`` reads it)."""
        import lightning

        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "hyper_parameters": {k: v for k, v in dict(self.hparams).items() if not k.startswith("_")},
            "pytorch-lightning_version": lightning.__version__,
            "medforget": {
                "format": CHECKPOINT_FORMAT,
                "tokenizer": None,
                ENSEMBLE_KEY: {
                    "members": self.num_members,
                    "tokenizers": [tokenizer_to_dict(m.tokenizer) if m.tokenizer is not None else None
                                   for m in self.members],
                },
                "provenance": dict(provenance),
            },
        }


def _recipe(model: FusionClassifier) -> dict[str, Any]:
    return {k: v for k, v in dict(model.hparams).items() if not k.startswith("_") and k != "image_pretrained"}


def is_ensemble_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint dict is a :class:`FusionEnsemble`'s."""
    return isinstance(ckpt.get("medforget", {}).get(ENSEMBLE_KEY), dict)


def ensemble_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> FusionEnsemble:
    """Rebuild a :class:`FusionEnsemble` (CPU, eval mode) from a checkpoint dict read with ``weights_only=True``."""
    from medforget.core.checkpoint import CheckpointError

    info = ckpt["medforget"][ENSEMBLE_KEY]
    hparams = {k: v for k, v in dict(ckpt.get("hyper_parameters", {})).items() if not k.startswith("_")}
    count = int(info.get("members", 0))
    tokenizers = list(info.get("tokenizers") or [None] * count)
    if count < 1 or len(tokenizers) != count:
        raise CheckpointError(f"{path}: ensemble section names {count} members and {len(tokenizers)} tokenizers")
    members = []
    for k in range(count):
        try:
            member = contextvars.Context().run(FusionClassifier, **{**hparams, "image_pretrained": None})
        except TypeError as err:
            raise CheckpointError(f"{path}: hyper_parameters do not describe a FusionClassifier ({err})") from err
        member.hparams.image_pretrained = hparams.get("image_pretrained")
        if tokenizers[k] is not None:
            member.tokenizer = tokenizer_from_dict(tokenizers[k])
        members.append(member)
    model = FusionEnsemble(members)
    try:
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the ensemble's architecture "
                              f"({' '.join(str(err).split())[:400]})") from err
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the ensemble's architecture (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    model.provenance = dict(ckpt["medforget"].get("provenance", {}))
    return model.eval()
