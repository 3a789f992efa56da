"""The LM datamodule (train and unlearn modes), the tokenizer and the train-lm CLI on the tiny corpus."""

from __future__ import annotations

import pytest
import torch

from medforget.datamodules.lm import qa_prompt
from medforget.models.causal_lm import train_bpe_tokenizer
from medforget.systems.lm import ClinicalLM, load_lm
from tests.llm.conftest import tiny_lm_datamodule


def test_train_mode_holds_trained_patients_only():
    dm = tiny_lm_datamodule()
    assert dm.summary() == {"forget": {"patients": 3, "questions": 18}, "retain": {"patients": 21, "questions": 126},
                            "holdout": {"patients": 6, "questions": 36}}
    seen = {p for b in dm.train_dataloader() for p in b["patient"]}
    assert seen == set(dm.parts["forget"] + dm.parts["retain"])
    retain_only = tiny_lm_datamodule(exclude_forget=True)
    assert {p for b in retain_only.train_dataloader() for p in b["patient"]} == set(dm.parts["retain"])


def test_unlearn_mode_pairs_forget_and_retain_batches():
    dm = tiny_lm_datamodule(mode="unlearn", batch_size=8)
    dm.setup()
    batches = list(dm.train_dataloader())
    forget_examples = dm.forget_examples()
    assert len(batches) == -(-len(forget_examples) // 8)
    for batch, *_ in batches:
        assert set(batch["forget"]["patient"]) <= set(dm.parts["forget"])
        assert set(batch["retain"]["patient"]) <= set(dm.parts["retain"])
        for prompt, alt in zip(batch["forget"]["prompt"], batch["forget"]["alt"], strict=True):
            assert alt.startswith(prompt)
    with pytest.raises(ValueError, match="exclude_forget"):
        tiny_lm_datamodule(mode="unlearn", exclude_forget=True)


def test_tokenizer_spells_identifiers_digit_by_digit():
    dm = tiny_lm_datamodule()
    tok = train_bpe_tokenizer(dm.train_texts(), 384)
    record = dm.records[dm.parts["retain"][0]]
    pieces = tok.tokenize(f"MRN {record.mrn}")
    assert [p for p in pieces if p.isdigit()] == list(record.mrn)
    assert tok.decode(tok(record.notes[0]).input_ids) == record.notes[0]


def test_encode_masks_prompt_and_padding():
    dm = tiny_lm_datamodule()
    model = ClinicalLM(hidden_size=16, num_layers=1, num_heads=2, vocab_size=300)
    model.tokenizer = train_bpe_tokenizer(dm.train_texts(), 300)
    q = dm.records[0].qa[0]
    enc = model.encode([qa_prompt(q.question), ""], [f"{qa_prompt(q.question)} {q.answer}", "short note"])
    answer_ids = model.tokenizer(" " + q.answer, add_special_tokens=False).input_ids
    labelled = enc["labels"][0][enc["labels"][0] != -100].tolist()
    assert labelled[:-1] == answer_ids and labelled[-1] == model.tokenizer.eos_token_id
    assert (enc["labels"][1][enc["attention_mask"][1] == 0] == -100).all()
    assert enc["labels"][1][0] == -100  # never a label for <s>


def test_train_lm_cli_exports_a_loadable_model_that_learns(tiny_lm_ckpt, tiny_retain_lm_ckpt):
    original, retain = load_lm(tiny_lm_ckpt), load_lm(tiny_retain_lm_ckpt)
    assert original.provenance["kind"] == "original" and retain.provenance["kind"] == "retain-only"
    assert original.provenance["data"]["num_patients"] == 30
    dm = tiny_lm_datamodule()
    dm.setup()
    batch = original.encode(*zip(*[(e["prompt"], e["text"]) for e in dm.examples(dm.parts["forget"], "qa")],
                                 strict=True))
    with torch.no_grad():
        nll_o, n = original.sequence_nll(batch)
        nll_r, _ = retain.sequence_nll(batch)
    # the original trained on these patients, the retain-only model never saw them
    assert (nll_o.sum() / n.sum()) < (nll_r.sum() / n.sum())
    answers = original.generate_answers([qa_prompt(dm.records[0].qa[0].question)], max_new_tokens=8)
    assert isinstance(answers[0], str)
