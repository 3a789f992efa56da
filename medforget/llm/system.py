"""The clinical-notes language model as a Lightning system: a tokenizer of its own (trained on the training notes, or
the pretrained model's), a causal LM, and loss on what it should learn (the whole note; only the answer of a QA pair).
"""

from __future__ import annotations

import contextvars
import inspect
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medforget.checkpoint import CheckpointError, atomic_torch_save, read_checkpoint
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = None
        if pretrained is not None:
            self.lm, self.tokenizer = load_pretrained_lm(pretrained)
            self.lm.train()  # from_pretrained returns eval mode (dropout off); Lightning keeps a module's mode
        else:
            self.lm = build_causal_lm(vocab_size, hidden_size, num_layers, num_heads, max_length)

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
              overwrite: bool = False) -> Path:
    """Write a language-model checkpoint atomically (weights, hyper-parameters, tokenizer, provenance)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite true to replace it")
    checkpoint: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                  "hyper_parameters": {k: v for k, v in model.hparams.items()
                                                       if not k.startswith("_")}}
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
    # would otherwise become this model's hparams (see medforget.checkpoint.load_classifier)
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
