"""UnlearningMethod: the LightningModule every unlearning method extends, and the registry of methods.

A method is one file with one subclass that implements :meth:`UnlearningMethod.unlearning_loss` on a
``{"forget": batch, "retain": batch}`` training batch. Subclassing registers it under its class name, so adding a
method touches one file and every registry-parametrized test exercises it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from medforget.core.registry import Registry
from medforget.datamodules import keys
from medforget.methods.base import UnlearningBase
from medforget.methods.classifier import selection
from medforget.systems.classifier import FusionClassifier


class UnlearningMethod(UnlearningBase):
    """Base system: loads the trained classifier from ``ckpt`` and updates it on forget/retain batches.

    A method declares only its own arguments and forwards these through ``**kwargs`` (``super().__init__(**kwargs)``);
    one whose default differs from the one here keeps that argument with its own default (SCRUB's ``lr``), and a
    method without optimizer settings narrows them to ``ckpt`` (SSD, FisherForgetting, SISA). The rule is
    :class:`~medforget.methods.base.UnlearningBase`'s.

    Args:
        ckpt: Checkpoint of the trained classifier (``python -m medforget train`` output). It is only read.
        lr: Learning rate.
        optimizer: ``adamw`` or ``sgd`` (with ``momentum``).
        weight_decay: Weight decay.
        momentum: SGD momentum.
    """

    registry: ClassVar[Registry[type[UnlearningMethod]]] = Registry("method", "medforget.methods.classifier")
    one_shot: ClassVar[bool] = False  # edits the weights once instead of training (no training steps)
    retrains: ClassVar[bool] = False  # exact unlearning by retraining (SISA): the unlearn verb calls retrain(cli)
    # reads the datamodule's val part outside validation (held-out statistics, e.g. LossMatch's target losses), so
    # a run without validation still decodes it (otherwise such a run skips it: DicomReportDataModule.read_val)
    reads_val: ClassVar[bool] = False
    accepts_ensemble: ClassVar[bool] = False  # may be given a sharded ensemble (train --shards) checkpoint

    def __init__(
        self,
        ckpt: str | None = None,
        lr: float = 1e-4,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # kept apart from hparams: save_hyperparameters records the *subclass's* arguments, which training-free
        # methods (SSD, FisherForgetting) do not extend with these
        self.optimizer_settings = {"lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
                                   "momentum": momentum}
        self.classifier: FusionClassifier | None = None
        self.selection_reference: dict[str, float] | None = None
        self._last_selection: dict[str, dict[str, float]] = {}
        self._val_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        if ckpt is not None:
            from medforget.systems.classifier import load_classifier

            self.attach(load_classifier(ckpt))

    @classmethod
    def search_space(cls, init_args: dict[str, Any]) -> dict[str, Any]:
        """The knobs ``python -m medforget tune`` searches: ``__init__`` argument -> knob
        (:mod:`medforget.methods.classifier.search_space`). ``init_args`` are the values of the method's config (the
        ranges are centred on them). Default: the learning rate; methods extend it with their own documented weights."""
        from medforget.methods.classifier.search_space import default_space

        return default_space(cls, init_args)

    def attach(self, classifier: FusionClassifier) -> UnlearningMethod:
        """Use ``classifier`` (already trained) as the model to unlearn from; called once before fitting."""
        if hasattr(classifier, "members") and not self.accepts_ensemble:
            raise ValueError(f"--method {type(self).__name__} updates one model's weights, but the checkpoint is a "
                             "sharded ensemble (train --shards): unlearn it with --method SISA (exact: retrains the "
                             "shards holding the forget patients)")
        self.classifier = classifier.train()
        self.on_attach()
        return self

    def on_attach(self) -> None:
        """Hook for methods that need a frozen copy of the original model, masks, etc."""

    def unlearned_module(self) -> torch.nn.Module:
        return self.net

    @property
    def net(self):
        if self.classifier is None:
            raise RuntimeError(f"{type(self).__name__} has no model: pass ckpt=... (--ckpt) or call attach()")
        return self.classifier.net

    @property
    def num_classes(self) -> int:
        return int(self.classifier.hparams.num_classes)

    # --- batches ------------------------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        _ = self.net  # clear error if no model is attached
        return self.classifier.prepare_batch(batch)

    def part_batches(self, name: str, loader_idx: int = 0) -> Iterator[dict]:
        """Prepared (tokenized) batches of one datamodule part on the system's device, for setup-time passes over
        a whole part (e.g. ``forget`` for saliency masks or Fisher information). Needs a datamodule with
        ``part_dataloader(name)`` (:class:`~medforget.datamodules.dicom_report.DicomReportDataModule`)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "part_dataloader"):
            raise RuntimeError(f"{type(self).__name__} needs a datamodule with part_dataloader() (fit with "
                               "datamodule=DicomReportDataModule(mode='unlearn', ...))")
        for batch in datamodule.part_dataloader(name):
            yield self.transfer_batch_to_device(self.on_before_batch_transfer(batch, loader_idx), self.device,
                                                loader_idx)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.net(batch)

    def classification_loss(self, batch: dict, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier's own training loss (fused CE + auxiliary unimodal CE) on ``batch``."""
        target = batch[keys.LABEL] if labels is None else labels
        return self.classifier.loss(self(batch), target)["loss"]

    # --- steps --------------------------------------------------------------------------------------------------
    @abstractmethod
    def unlearning_loss(self, forget: dict, retain: dict) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, **terms}`` for one forget batch and one retain batch."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.unlearning_loss(batch[keys.FORGET], batch[keys.RETAIN])
        bs = len(batch[keys.RETAIN][keys.LABEL])
        self.log_dict({f"unlearn/{k}": v.detach() for k, v in losses.items()}, batch_size=bs, on_step=False,
                      on_epoch=True, prog_bar=True)
        return losses["loss"]

    # --- validation and checkpoint selection (see medforget.methods.classifier.selection) ------------------------
    def _validation_parts(self) -> tuple[str, ...]:
        """The unlearn-mode validation parts of the datamodule, in dataloader order (empty: plain validation)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        parts = tuple(getattr(datamodule, "validation_parts", ()))
        return parts if getattr(datamodule, "mode", None) == "unlearn" else ()

    def _part_name(self, dataloader_idx: int) -> str:
        parts = self._validation_parts()
        loaders = self.trainer.val_dataloaders if self._trainer is not None else None
        if parts and isinstance(loaders, (list, tuple)) and len(loaders) == len(parts):
            return parts[dataloader_idx]
        return keys.VAL

    def on_validation_epoch_start(self) -> None:
        self._val_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = self(batch)["fused"].detach().float()
        self._val_outputs.setdefault(self._part_name(dataloader_idx), []).append((logits, batch[keys.LABEL]))

    def _gathered_outputs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        outputs = {}
        for part, chunks in self._val_outputs.items():
            logits, labels = _concat(chunks)
            if self.trainer.world_size > 1:  # DistributedSampler shards (and pads) each loader: gather every rank
                logits = self.all_gather(logits).flatten(0, 1)
                labels = self.all_gather(labels).flatten(0, 1)
            outputs[part] = (logits.cpu(), labels.cpu())
        return outputs

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_outputs:
            return
        outputs = self._gathered_outputs()
        logits, labels = outputs[keys.VAL]
        self.log("val/loss", F.cross_entropy(logits, labels), prog_bar=True)
        self.log("val/acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)
        if not {keys.RETAIN_SAMPLE, keys.VAL} <= set(outputs) or self.selection_reference is None:
            return  # plain validation (no forget request in the datamodule): nothing to select on
        metrics = selection.part_metrics(outputs)
        gaps = selection.proxy_gaps(metrics, self.selection_reference)
        self.log_dict({f"val/{k}": v for k, v in metrics.items() if not k.endswith("accuracy")})
        self.log_dict({f"val/gap_{k}": v for k, v in gaps.items() if k != "score"})
        self.log(selection.SCORE, gaps["score"], prog_bar=True)
        self._last_selection = {"metrics": metrics, "gaps": gaps}

    def on_train_start(self) -> None:
        """Measure the selection reference: the original model's metrics on the validation parts, before any
        update (kept in Lightning checkpoints, so a resumed run compares with the same reference)."""
        if self.selection_reference is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "part_dataloader"):
            return
        parts = self._validation_parts()
        if not {keys.RETAIN_SAMPLE, keys.VAL} <= set(parts):
            return
        was_training = self.training
        self.eval()
        outputs = {part: self.part_logits(part) for part in parts}
        self.train(was_training)
        self.selection_reference = selection.part_metrics(outputs)

    @torch.no_grad()
    def part_logits(self, part: str, model: Callable[[dict], dict[str, torch.Tensor]] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused-head logits and labels (on the CPU) of ``model`` (default: this system, as it is) over one
        datamodule part (:meth:`part_batches`), for setup-time measurements such as the selection reference."""
        model = model if model is not None else self
        return _concat([(model(b)["fused"].float().cpu(), b[keys.LABEL].cpu()) for b in self.part_batches(part)])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["medforget_selection_reference"] = self.selection_reference
        checkpoint["medforget_selection"] = self._last_selection

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.selection_reference = checkpoint.get("medforget_selection_reference")

    def configure_optimizers(self):
        params, cfg = self.trainable_parameters(), self.optimizer_settings
        if cfg["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _concat(chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(logits, labels), ...]`` of several batches -> one ``(logits, labels)``."""
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


def list_methods() -> list[str]:
    """Names of the registered unlearning methods."""
    return UnlearningMethod.registry.names()


def get_method(name: str) -> type[UnlearningMethod]:
    """The method class registered as ``name``."""
    return UnlearningMethod.registry.get(name)
