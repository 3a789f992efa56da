"""``--model.pretrained DIR``: any local Hugging Face causal LM and its tokenizer (never downloaded)."""

from __future__ import annotations

import pytest
import torch

from medforget.models.causal_lm import build_causal_lm, train_bpe_tokenizer
from medforget.systems.lm import ClinicalLM, load_lm
from tests.llm.conftest import TINY_LM_DATA, tiny_lm_datamodule


@pytest.fixture(scope="module")
def local_model_dir(tmp_path_factory):
    """A tiny causal LM saved with ``save_pretrained`` (config.json, safetensors, tokenizer files)."""
    path = tmp_path_factory.mktemp("hf_model")
    tokenizer = train_bpe_tokenizer(tiny_lm_datamodule().train_texts(), 300)
    torch.manual_seed(0)
    build_causal_lm(len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, max_length=96).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_train_lm_fine_tunes_a_local_pretrained_model(local_model_dir, tmp_path):
    from medforget.commands import train_lm

    before = ClinicalLM(pretrained=str(local_model_dir))
    assert all(m.training for m in before.lm.modules())  # fine-tuning trains with the model's dropout on
    target = train_lm([*TINY_LM_DATA, f"--model.pretrained={local_model_dir}", "--model.max_length=96",
                       "--trainer.max_steps=3", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                       f"--out={tmp_path / 'run'}"])
    after = load_lm(target)
    assert after.hparams.pretrained == str(local_model_dir)
    assert after.tokenizer.get_vocab() == before.tokenizer.get_vocab()  # the model's own tokenizer, not a new one
    changed = [n for n, p in after.lm.named_parameters()
               if not torch.equal(p, dict(before.lm.named_parameters())[n])]
    assert changed, "fine-tuning did not change the pretrained weights"
    assert isinstance(after.generate_answers(["Question: Who is the attending physician?\nAnswer:"], 4)[0], str)


def test_missing_pretrained_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ClinicalLM(pretrained=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not a local model directory"):
        ClinicalLM(pretrained="meta-llama/Llama-3.2-1B")  # a hub id is not fetched
