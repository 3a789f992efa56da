"""The clinical-notes language model as a Lightning system: a tokenizer of its own (trained on the training notes, or
the pretrained model's), a causal LM, and loss on what it should learn (the whole note; only the answer of a QA pair).

Optionally the causal LM trains LoRA adapters only (:class:`LoRA`, peft): the base weights stay frozen, and exporting
(:func:`export_lm`, :func:`export_hf`) merges the adapters into the weights, so every exported model is a plain one.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medforget.core.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    check_export_target,
    public_hparams,
    read_checkpoint,
)
from medforget.models.causal_lm import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    build_causal_lm,
    load_pretrained_lm,
    tokenizer_from_json,
    tokenizer_to_json,
    train_bpe_tokenizer,
)

LM_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class LoRA:
    """LoRA adapters (Hu et al., 2021, via peft's ``LoraConfig``): train ``W + (alpha / rank) B A`` with ``W`` frozen.

    Args:
        rank: Rank ``r`` of the adapters.
        alpha: Scale numerator (``lora_alpha``): the update is scaled by ``alpha / rank``.
        dropout: Dropout on the adapters' input.
        target_modules: Module names (or suffixes) that get adapters, or ``all-linear`` (every linear layer but the
            output head).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module (or 'all-linear')")

    @classmethod
    def of(cls, value: LoRA | dict[str, Any] | None) -> LoRA | None:
        """A :class:`LoRA` from itself, a dict (hyper-parameters, YAML) or ``None``."""
        if value is None or isinstance(value, LoRA):
            return value
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for hyper-parameters and provenance: checkpoints are loaded with ``weights_only=True``)."""
        out = asdict(self)
        if isinstance(out["target_modules"], (list, tuple)):
            out["target_modules"] = list(out["target_modules"])
        return out


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (``...lora_A.default.weight``, ``...lora_B...``)."""
    return ".lora_A." in name or ".lora_B." in name


class ClinicalLM(L.LightningModule):
    """A causal LM trained on clinical notes and question-answer pairs.

    Args:
        pretrained: Local directory of a Hugging Face causal LM (and tokenizer); ``None``: a small Llama-style model
            from a config with a byte-level BPE tokenizer trained on the training notes.
        vocab_size: Vocabulary of the from-scratch tokenizer and model.
        hidden_size: Width of the from-scratch model.
        num_layers: Decoder layers of the from-scratch model.
        num_heads: Attention heads of the from-scratch model.
        max_length: Longest sequence in tokens (longer examples are truncated).
        lr: AdamW peak learning rate (cosine schedule with warm-up).
        weight_decay: AdamW weight decay.
        warmup: Share of the steps spent warming up.
        lora: Train LoRA adapters only (:class:`LoRA`; ``--model.lora.rank 8`` ...); ``None``: every weight trains.
            Exported checkpoints hold the merged model.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        vocab_size: int = 2048,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        max_length: int = 256,
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        warmup: float = 0.05,
        lora: LoRA | None = None,
    ) -> None:
        super().__init__()
        lora = LoRA.of(lora)
        self.save_hyperparameters()
        self.hparams["lora"] = lora.as_dict() if lora else None  # plain data in checkpoints
        self.tokenizer = None
        self.lora: LoRA | None = None  # the adapters' settings while the model has unmerged adapters
        if pretrained is not None:
            self.lm, self.tokenizer = load_pretrained_lm(pretrained)
            self.lm.train()  # from_pretrained returns eval mode (dropout off); Lightning keeps a module's mode
        else:
            self.lm = build_causal_lm(vocab_size, hidden_size, num_layers, num_heads, max_length)
        if lora is not None:
            self.add_lora(lora)

    # --- adapters -----------------------------------------------------------------------------------------------
    def add_lora(self, lora: LoRA, trainable: set[int] | None = None) -> None:
        """Wrap the causal LM with LoRA adapters (peft) and freeze every base weight.

        Args:
            lora: The adapters' settings.
            trainable: ``id()`` of the base weights that may change (an unlearning method's choice, e.g. RMU's
                MLPs); only the adapters of layers whose weight is among them train. ``None``: every adapter trains.
        """
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        if self.lora is not None:
            raise RuntimeError("this ClinicalLM already has LoRA adapters")
        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
                            bias="none", task_type="CAUSAL_LM")
        try:
            self.lm = get_peft_model(self.lm, config)
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            raise ValueError(f"model.lora.target_modules={target!r}: {err}") from None
        self.lora = lora
        if trainable is not None:
            for module in self.lm.modules():
                if isinstance(module, LoraLayer) and id(module.get_base_layer().weight) not in trainable:
                    for name in ("lora_A", "lora_B"):
                        getattr(module, name).requires_grad_(False)
        if not any(p.requires_grad for p in self.lm.parameters()):
            raise ValueError(f"no LoRA adapter trains: model.lora.target_modules={target!r} covers none of the "
                             "weights this run may change")

    def merge_lora(self) -> LoRA | None:
        """Merge the adapters into the base weights (in place) and unwrap the model; returns their settings (``None``
        if there were none). Afterwards the model is a plain causal LM."""
        lora, self.lora = self.lora, None
        if lora is not None:
            self.lm = self.lm.merge_and_unload()
            self.hparams["lora"] = None
        return lora

    def base_model(self) -> Any:
        """The causal LM without its adapter wrapper (the ``transformers`` model)."""
        return self.lm.get_base_model() if self.lora is not None else self.lm

    # --- tokenization -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "train_texts"):
                raise RuntimeError("ClinicalLM needs a datamodule with train_texts() to fit its tokenizer")
            self.tokenizer = train_bpe_tokenizer(datamodule.train_texts(), self.hparams.vocab_size)

    def encode(self, prompts: list[str], texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding and on the prompt part of each text,
        so only what follows the prompt is learned); sequences are ``<s> text </s>``, right-padded."""
        if self.tokenizer is None:
            raise RuntimeError("this ClinicalLM has no tokenizer yet (fit it, or load it from a checkpoint)")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        bos, eos = (BOS_ID if bos is None else bos), (EOS_ID if eos is None else eos)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else PAD_ID
        limit = self.hparams.max_length
        rows, lengths, prompt_lengths = [], [], []
        for prompt, text in zip(prompts, texts, strict=True):
            ids = [bos, *self.tokenizer(text, add_special_tokens=False).input_ids, eos][:limit]
            n_prompt = 1 + len(self.tokenizer(prompt, add_special_tokens=False).input_ids) if prompt else 1
            rows.append(ids)
            lengths.append(len(ids))
            prompt_lengths.append(min(n_prompt, len(ids)))
        width = max(lengths)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, prompt_lengths[i]: len(ids)] = input_ids[i, prompt_lengths[i]: len(ids)]
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "text" in batch:
            return {**self.encode(batch["prompt"], batch["text"]), "patient": torch.tensor(batch["patient"])}
        return batch

    # --- steps --------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def sequence_nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence summed NLL over the labelled tokens and their count."""
        logits = self(batch).logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        mask = target != -100
        return (nll * mask).sum(1), mask.sum(1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, count = self.sequence_nll(batch)
        loss = nll.sum() / count.sum().clamp_min(1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(nll))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, count = self.sequence_nll(batch)
        self.log("val/answer_nll", nll.sum() / count.sum().clamp_min(1), prog_bar=True, batch_size=len(nll))

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm = max(1, int(self.hparams.warmup * total))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_answers(self, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy continuations of ``prompts`` (without the prompt)."""
        self.eval()
        out = []
        for prompt in prompts:
            enc = self.encode([prompt], [prompt])
            ids = enc["input_ids"][:, :-1].to(self.device)  # drop </s>: continue after the prompt
            generated = self.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=EOS_ID if self.hparams.pretrained is None else None,
                                         pad_token_id=self.tokenizer.pad_token_id)
            out.append(self.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return out

    # --- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medforget_lm"] = {"format": LM_CHECKPOINT_FORMAT,
                                      "tokenizer": tokenizer_to_json(self.tokenizer) if self.tokenizer else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("medforget_lm", {}).get("tokenizer")
        if state is not None and self.hparams.pretrained is None:
            self.tokenizer = tokenizer_from_json(state)


def export_lm(model: ClinicalLM, path: str | Path, provenance: dict[str, Any] | None = None,
              overwrite: bool = False, protect: tuple[str | Path, ...] = ()) -> Path:
    """Write a language-model checkpoint atomically (weights, hyper-parameters, tokenizer, provenance). A model with
    LoRA adapters is merged first (in place: :meth:`ClinicalLM.merge_lora`), so the file holds a plain model; the
    adapters' settings go to ``provenance["lora"]``; ``protect`` and ``overwrite`` as for the classifier's export
    (:func:`~medforget.core.checkpoint.check_export_target`)."""
    path = check_export_target(path, protect, overwrite)
    lora = model.merge_lora()
    if lora is not None:
        provenance = {**(provenance or {}), "lora": {**lora.as_dict(), "merged": True}}
    checkpoint: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                  "hyper_parameters": public_hparams(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    checkpoint["medforget_lm"]["provenance"] = dict(provenance or {})
    return atomic_torch_save(checkpoint, path)


def load_lm(path: str | Path) -> ClinicalLM:
    """Rebuild a :class:`ClinicalLM` (weights + tokenizer) from :func:`export_lm`'s file, on the CPU, in eval mode."""
    ckpt = read_checkpoint(path)
    if "medforget_lm" not in ckpt:
        raise CheckpointError(f"{path}: not a medforget language-model checkpoint")
    accepted = inspect.signature(ClinicalLM.__init__).parameters
    # a fresh context: inside LightningCLI's instantiation of a method, its "given hyperparameters" context variable
    # would otherwise become this model's hparams (see medforget.core.checkpoint.load_classifier)
    model = contextvars.Context().run(ClinicalLM, **{k: v for k, v in ckpt["hyper_parameters"].items()
                                                     if k in accepted})
    model.on_load_checkpoint(ckpt)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:  # missing, unexpected or other-shaped weights
        raise CheckpointError(f"{path}: weights do not match the architecture ({' '.join(str(err).split())[:400]})"
                              ) from err
    model.provenance = dict(ckpt["medforget_lm"].get("provenance", {}))
    return model.eval()


def export_hf(model: ClinicalLM, path: str | Path, provenance: dict[str, Any] | None = None,
              overwrite: bool = False) -> Path:
    """Write ``model`` as a Hugging Face directory (``save_pretrained`` model + tokenizer) that
    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load offline.

    Adapters are merged first (in place). The tokenizer of a from-scratch model gets a post-processor that starts every
    text with ``<s>``, as the model was trained, so ``tokenizer(prompt)`` gives the model's own inputs. ``provenance``
    goes to ``medforget.json``. The directory is written under a temporary name beside ``path`` and renamed.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from tokenizers import processors

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it")
    if model.tokenizer is None:
        raise RuntimeError("this ClinicalLM has no tokenizer yet (fit it, or load it from a checkpoint)")
    model.merge_lora()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        model.lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer = model.tokenizer
        if model.hparams.get("pretrained") is None:
            tokenizer = tokenizer_from_json(tokenizer_to_json(tokenizer))
            bos = tokenizer.bos_token
            tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
            tokenizer.model_max_length = model.hparams.max_length
        tokenizer.save_pretrained(tmp)
        (tmp / "medforget.json").write_text(json.dumps({"format": LM_CHECKPOINT_FORMAT,
                                                        "provenance": provenance or {}}, indent=2, default=str))
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
