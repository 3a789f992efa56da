"""Causal language models for clinical notes: a byte-level BPE tokenizer trained on the corpus and a small Llama-style
model from a config (trains on a CPU in minutes and memorises its patients), or any local Hugging Face checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2  # the order of SPECIAL_TOKENS in a trained tokenizer's vocabulary


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; digits are single tokens, so identifiers (MRNs, dates) are
    spelled digit by digit and their extraction can be measured exactly. Deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not texts:
        raise ValueError("cannot train a tokenizer on zero texts")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sorted(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tokenizer_to_json(tokenizer: PreTrainedTokenizerFast) -> str:
    """The tokenizer as a JSON string (stored in checkpoints; no pickles)."""
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(state: str) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(state), **SPECIAL_TOKENS)


def build_causal_lm(vocab_size: int, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                    max_length: int = 256) -> LlamaForCausalLM:
    """A small Llama-style decoder (RoPE, RMSNorm, SwiGLU, tied embeddings) from a config."""
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=max_length, tie_word_embeddings=True, bos_token_id=BOS_ID,
                         eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return LlamaForCausalLM(config)


def load_pretrained_lm(path: str | Path) -> tuple[AutoModelForCausalLM, PreTrainedTokenizerFast]:
    """A causal LM and its tokenizer from a local directory (never downloaded)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"pretrained language model {str(path)!r} is not a local model directory with a "
                                "config.json; medforget never downloads weights")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def config_dict(model: LlamaForCausalLM) -> dict:
    """The model's config as plain JSON data."""
    return json.loads(model.config.to_json_string())
