"""LMUnlearningMethod: the LightningModule every language-model unlearning method extends, and their registry.

A method is one file with one subclass implementing :meth:`LMUnlearningMethod.unlearning_loss` on a forget batch and
a retain batch (both tokenized: ``input_ids``, ``attention_mask``, ``labels`` with ``-100`` on the prompt and the
padding; forget batches also carry ``alt``, the same prompts followed by a refusal). Subclassing registers the
method under its class name; the registry-parametrized tests exercise every one.

Notation of the design (``../shared/design/METHODS.md``): forget loss ``L_f``, retain loss ``L_r`` (NLL, or KL to the
frozen original model), total ``gamma * L_f + alpha * L_r``.

Set-up that needs data (saliency scores, masks, noise) goes in :meth:`LMUnlearningMethod.prepare`, run once per run at
the start of fitting and not again when a run resumes from a Lightning checkpoint; a method that restricts which
weights change fills :attr:`LMUnlearningMethod.update_masks` there (a hard constraint, weight decay included).

With ``lora`` (``--model.init_args.lora.rank 8`` ...) every method trains LoRA adapters only: after
:meth:`LMUnlearningMethod.on_attach` has chosen which weights may change, the model gets adapters on those of its
layers (peft), every base weight is frozen, and the exported checkpoint holds the merged model.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from medforget.core.registry import Registry
from medforget.methods.base import UnlearningBase
from medforget.systems.lm import ClinicalLM, LoRA, load_lm


def token_logprobs(model: ClinicalLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled next tokens ``[B, T-1]`` and their mask (1 where a label exists)."""
    logits = model(batch).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    mask = target != -100
    logp = torch.log_softmax(logits, -1).gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logprob(model: ClinicalLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's labelled tokens ``[B]`` and the token counts ``[B]``."""
    logp, mask = token_logprobs(model, batch)
    return logp.sum(1), mask.sum(1)


def mean_nll(model: ClinicalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The usual LM loss: NLL averaged over every labelled token of the batch."""
    logp, count = sequence_logprob(model, batch)
    return -logp.sum() / count.sum().clamp_min(1)


def kl_to_reference(model: ClinicalLM, reference: ClinicalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``KL(p_ref || p_theta)`` of the next-token distributions, averaged over the labelled positions."""
    mask = batch["labels"][:, 1:] != -100
    logq = torch.log_softmax(model(batch).logits[:, :-1].float(), -1)
    with torch.no_grad():
        logp = torch.log_softmax(reference(batch).logits[:, :-1].float(), -1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


class LMUnlearningMethod(UnlearningBase):
    """Base system: loads the trained language model from ``ckpt`` and updates it on forget / retain batches.

    A method declares only its own arguments and forwards these through ``**kwargs`` (``super().__init__(**kwargs)``);
    one whose default differs from the one here keeps that argument with its own default (RMU's ``lr`` and ``alpha``,
    SURE's ``lr``). The rule is :class:`~medforget.methods.base.UnlearningBase`'s.

    Args:
        ckpt: Checkpoint of the trained language model (``python -m medforget train-lm`` output). It is only read.
        lr: AdamW learning rate (constant after ``warmup``).
        weight_decay: AdamW weight decay.
        warmup: Share of the steps spent warming the learning rate up linearly.
        gamma: Weight of the forget loss.
        alpha: Weight of the retain loss (0 drops it).
        retain_loss: ``nll`` on retain examples, or ``kl`` to the frozen original model on them.
        lora: Train LoRA adapters only (:class:`~medforget.systems.lm.LoRA`: rank, alpha, dropout, target modules),
            on the layers whose weights the method would train; ``None``: the weights themselves.
    """

    registry: ClassVar[Registry[type[LMUnlearningMethod]]] = Registry("method", "medforget.methods.lm")
    needs_reference: ClassVar[bool] = False  # keeps a frozen copy of the original model as ``self.reference``
    uses_retain: ClassVar[bool] = True  # False: forget data only (GradAscent, FLAT); alpha is ignored
    checkpoint_key: ClassVar[str] = "medforget_lm_unlearning"

    def __init__(
        self,
        ckpt: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: float = 0.0,
        gamma: float = 1.0,
        alpha: float = 1.0,
        retain_loss: Literal["nll", "kl"] = "nll",
        lora: LoRA | None = None,
    ) -> None:
        super().__init__()
        if retain_loss not in ("nll", "kl"):
            raise ValueError(f"model.retain_loss must be 'nll' or 'kl', got {retain_loss!r}")
        self.lora = LoRA.of(lora)
        self.save_hyperparameters(ignore=["lora"])
        self.hparams["lora"] = self.lora.as_dict() if self.lora else None  # plain data in checkpoints
        self.settings = {"lr": lr, "weight_decay": weight_decay, "warmup": warmup, "gamma": gamma, "alpha": alpha,
                         "retain_loss": retain_loss}
        self.model: ClinicalLM | None = None
        self.reference: ClinicalLM | None = None
        if ckpt is not None:
            self.attach(load_lm(ckpt))

    def attach(self, model: ClinicalLM) -> LMUnlearningMethod:
        """Unlearn from ``model`` (already trained); keeps a frozen copy when the method or the KL retain loss needs
        one, then calls :meth:`on_attach`; with ``lora``, then adds the adapters to the layers whose weights
        :meth:`on_attach` left trainable (the frozen copy has none)."""
        self.model = model.train()
        if self.needs_reference or self.settings["retain_loss"] == "kl":
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.on_attach()
        if self.lora is not None:
            self.model.add_lora(self.lora, trainable={id(p) for p in self.model.parameters() if p.requires_grad})
        return self

    def on_attach(self) -> None:
        """Hook for methods that need directions, frozen parameters or buffers before training (no data yet)."""

    def unlearned_module(self) -> ClinicalLM:
        return self.lm

    @property
    def lm(self) -> ClinicalLM:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} has no model: pass ckpt=... (--ckpt) or call attach()")
        return self.model

    # --- batches ------------------------------------------------------------------------------------------------
    def encode(self, examples: dict[str, list], key: str = "text") -> dict[str, torch.Tensor]:
        return self.lm.encode(examples["prompt"], examples[key])

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "forget" in batch:  # a training batch {"forget": ..., "retain": ...}
            forget = self.encode(batch["forget"])
            if "alt" in batch["forget"]:
                forget["alt"] = self.encode(batch["forget"], "alt")
            return {"forget": forget, "retain": self.encode(batch["retain"])}
        if isinstance(batch, dict) and "text" in batch:
            return self.encode(batch)
        return batch

    def part_batches(self, part: str, content: str = "both"):
        """Tokenized batches of one datamodule part on the system's device (setup-time passes: saliency, scores)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "part_dataloader"):
            raise RuntimeError(f"{type(self).__name__} needs a ClinicalNotesDataModule(mode='unlearn')")
        for batch in datamodule.part_dataloader(part, content):
            yield self.transfer_batch_to_device(self.encode(batch), self.device, 0)

    # --- losses -------------------------------------------------------------------------------------------------
    def retain_term(self, retain: dict[str, torch.Tensor]) -> torch.Tensor:
        """``L_r``: NLL of the retain batch, or KL to the original model on it."""
        if self.settings["retain_loss"] == "kl":
            return kl_to_reference(self.lm, self.reference, retain)
        return mean_nll(self.lm, retain)

    def combine(self, forget_loss: torch.Tensor, retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``gamma * L_f + alpha * L_r`` (the retain term is skipped when ``alpha`` is 0 or unused)."""
        out = {"forget_loss": forget_loss}
        loss = self.settings["gamma"] * forget_loss
        if self.uses_retain and self.settings["alpha"] > 0:
            out["retain_loss"] = self.retain_term(retain)
            loss = loss + self.settings["alpha"] * out["retain_loss"]
        return {"loss": loss, **out}

    @abstractmethod
    def unlearning_loss(self, forget: dict[str, Any], retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, **terms}`` for one forget batch and one retain batch."""

    # --- steps --------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.unlearning_loss(batch["forget"], batch["retain"])
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"{type(self).__name__}: the unlearning loss is not finite at step "
                                     f"{self.global_step} (lower --model.lr?)")
        self.log_dict({f"unlearn/{k}": v.detach() for k, v in losses.items()}, prog_bar=True,
                      batch_size=len(batch["forget"]["input_ids"]), on_step=False, on_epoch=True)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        part = ("forget", "retain")[dataloader_idx] if dataloader_idx < 2 else str(dataloader_idx)
        logp, count = sequence_logprob(self.lm, batch)
        self.log(f"val/{part}_answer_nll", -logp.sum() / count.sum().clamp_min(1), prog_bar=True,
                 batch_size=len(logp), add_dataloader_idx=False)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """With ``restricts_updates``: the update masks, with AdamW's decoupled weight decay applied to the
        updatable entries only (:meth:`~medforget.methods.base.UnlearningBase.apply_update_masks`)."""
        if self.restricts_updates:
            self.apply_update_masks(optimizer, self.settings["weight_decay"])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.settings["lr"],
                                      weight_decay=0.0 if self.restricts_updates else self.settings["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = int(self.settings["warmup"] * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warm)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
