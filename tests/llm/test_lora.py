"""LoRA adapters (peft) on every registered language-model unlearning method (registry-parametrized): only adapter
weights change, the exported checkpoint holds the merged model, and the input checkpoint is never modified."""

from __future__ import annotations

import pytest
import torch

import medforget.methods.lm  # noqa: F401  (registers the methods)
from medforget.methods.lm.base import LMUnlearningMethod
from medforget.systems.lm import ClinicalLM, LoRA, export_lm, is_adapter_parameter, load_lm
from tests.llm.test_methods import fit, sha256, weights

TINY_LORA = LoRA(rank=2, alpha=4.0)


@pytest.mark.parametrize("name", sorted(LMUnlearningMethod.registry))
def test_every_method_trains_adapters_only_and_exports_the_merged_model(name, tiny_lm_ckpt, tmp_path):
    digest = sha256(tiny_lm_ckpt)
    method = LMUnlearningMethod.registry[name](ckpt=str(tiny_lm_ckpt), lora=TINY_LORA)
    assert method.hparams["lora"] == TINY_LORA.as_dict()
    trainable = [n for n, p in method.lm.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_parameter(n) for n in trainable), trainable
    before = weights(method)
    fit(method, max_steps=1)
    after = weights(method)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed, f"{name} changed no adapter"
    assert all(is_adapter_parameter(n) for n in changed), [n for n in changed if not is_adapter_parameter(n)]

    target = export_lm(method.lm, tmp_path / "model.ckpt", provenance={"kind": "unlearned"})
    model, original = load_lm(target), load_lm(tiny_lm_ckpt)
    assert model.provenance["lora"] == {**TINY_LORA.as_dict(), "merged": True} and model.hparams["lora"] is None
    assert list(model.state_dict()) == list(original.state_dict())  # a plain model: no adapter left
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values(),
                                                     strict=True))
    assert sha256(tiny_lm_ckpt) == digest


def test_rmu_with_lora_trains_only_the_adapters_of_its_layers(tiny_lm_ckpt):
    method = LMUnlearningMethod.registry["RMU"](ckpt=str(tiny_lm_ckpt), update_layers=[1], params="mlp.down_proj",
                                                 lora=TINY_LORA)
    trainable = sorted(n for n, p in method.lm.named_parameters() if p.requires_grad)
    assert trainable == [f"lm.base_model.model.model.layers.1.mlp.down_proj.lora_{ab}.default.weight"
                         for ab in ("A", "B")]
    with pytest.raises(ValueError, match="no LoRA adapter trains"):
        LMUnlearningMethod.registry["RMU"](ckpt=str(tiny_lm_ckpt), lora=LoRA(target_modules=["q_proj"]))


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match="rank"):
        LoRA(rank=0)
    with pytest.raises(ValueError, match="target_modules"):
        ClinicalLM(hidden_size=16, num_layers=1, num_heads=2, vocab_size=64, lora=LoRA(target_modules=["nope"]))
