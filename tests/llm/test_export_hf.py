"""``--export_hf DIR``: a ``save_pretrained`` model + tokenizer directory that transformers' Auto classes load offline
and that generates exactly what medforget's model does; written atomically, never overwritten without
``--overwrite``; LoRA adapters merged (``--model.lora.*``)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medforget.cli import main
from medforget.commands import train_lm, unlearn_lm
from medforget.systems.lm import load_lm
from tests.llm.conftest import TINY_LM_DATA, tiny_lm_datamodule
from tests.llm.test_methods import sha256
from tests.llm.test_pretrained import local_model_dir  # noqa: F401  (fixture)

TRAINER = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def prompts(n: int = 4) -> list[str]:
    dm = tiny_lm_datamodule()
    dm.setup()
    return [e["prompt"] for e in dm.examples(dm.parts["forget"][:1] + dm.parts["retain"][:1], "qa")][:n] + [
        "Admission note. Patient"]


def hf_answers(path, texts: list[str], max_new_tokens: int) -> list[str]:
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    out = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def same_weights(ckpt, path) -> bool:
    ours = load_lm(ckpt).lm.state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_unlearn_lm_exports_a_transformers_directory_with_lora_merged(tiny_lm_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    digest = sha256(tiny_lm_ckpt)
    hf = tmp_path / "hf"
    args = ["--method", "NPO", f"--ckpt={tiny_lm_ckpt}", *TINY_LM_DATA, "--data.batch_size=8", "--model.lr=1e-2",
            "--model.lora.rank=2", "--model.lora.alpha=4", "--trainer.max_epochs=1", *TRAINER]
    target = unlearn_lm([*args, f"--out={tmp_path / 'run'}", f"--export_hf={hf}"])
    assert sha256(tiny_lm_ckpt) == digest  # the input checkpoint is byte-identical
    assert load_lm(target).provenance["lora"]["merged"] is True
    assert {"config.json", "model.safetensors", "tokenizer.json", "medforget.json"} <= {p.name for p in hf.iterdir()}
    assert json.loads((hf / "medforget.json").read_text())["provenance"]["method"] == "NPO"
    assert same_weights(target, hf)
    texts = prompts()
    assert hf_answers(hf, texts, 16) == load_lm(target).generate_answers(texts, 16)

    with pytest.raises(SystemExit, match="exists; pass --overwrite true"):  # before any training
        main(["unlearn-lm", *args, f"--out={tmp_path / 'again'}", f"--export_hf={hf}"])
    assert not (tmp_path / "again" / "model.ckpt").exists()
    unlearn_lm([*args, "--trainer.max_epochs=2", f"--out={tmp_path / 'again'}", f"--export_hf={hf}",
                "--overwrite=true"])
    assert same_weights(tmp_path / "again" / "model.ckpt", hf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "hf", "run"]  # no temporary directory left


def test_train_lm_adapts_a_pretrained_model_with_lora_and_exports_it(local_model_dir, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = tmp_path / "hf"
    before = {n: p.clone() for n, p in AutoModelForCausalLM.from_pretrained(local_model_dir).state_dict().items()}
    target = train_lm([*TINY_LM_DATA, f"--model.pretrained={local_model_dir}", "--model.max_length=96",
                       "--model.lora.rank=4", "--model.lora.target_modules=[q_proj,v_proj]", "--trainer.max_steps=3",
                       *TRAINER, f"--out={tmp_path / 'run'}", f"--export_hf={hf}"])
    model = load_lm(target)
    assert model.provenance["lora"] == {"rank": 4, "alpha": 16.0, "dropout": 0.0,
                                        "target_modules": ["q_proj", "v_proj"], "merged": True}
    after = model.lm.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed), changed
    assert same_weights(target, hf)
    texts = prompts(2)
    assert hf_answers(hf, texts, 8) == model.generate_answers(texts, 8)
