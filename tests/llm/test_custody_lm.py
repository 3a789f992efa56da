"""Chain of custody of the language models: sidecars, the parent's SHA-256, lm_audit.json's hashes, ``verify``."""

from __future__ import annotations

from medforget.commands import evaluate_lm, unlearn_lm
from medforget.core.checkpoint import read_checkpoint, read_sidecar, sha256_file
from medforget.core.verify import verify
from tests.llm.conftest import TINY_LM_DATA

FAST = ["--audit.retain_questions=8", "--audit.holdout_questions=8", "--audit.max_new_tokens=8",
        "--audit.bootstrap=0", "--audit.quantization=[]", "--audit.plots=false"]


def test_lm_chain_of_custody(tiny_lm_ckpt, tiny_retain_lm_ckpt, tmp_path):
    assert read_sidecar(tiny_lm_ckpt) == sha256_file(tiny_lm_ckpt)
    unlearned = unlearn_lm(["--method=GradAscent", f"--ckpt={tiny_lm_ckpt}", f"--out={tmp_path / 'u'}",
                            *TINY_LM_DATA, "--data.batch_size=8", "--trainer.max_steps=1",
                            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    assert read_sidecar(unlearned) == sha256_file(unlearned)
    assert read_checkpoint(unlearned)["medforget_lm"]["provenance"]["parent_sha256"] == sha256_file(tiny_lm_ckpt)
    out = tmp_path / "audit"
    report = evaluate_lm([f"--original={tiny_lm_ckpt}", f"--unlearned={unlearned}", f"--retain={tiny_retain_lm_ckpt}",
                          f"--out={out}", *FAST])
    assert report["models"]["unlearned"]["checkpoint_sha256"] == sha256_file(unlearned)
    assert all(c.ok for c in verify(out))
    data = bytearray(unlearned.read_bytes())
    data[len(data) // 3] ^= 0x10
    unlearned.write_bytes(bytes(data))
    failed = [c for c in verify(out) if not c.ok]
    assert failed and {c.path for c in failed} == {str(unlearned)}


def test_lm_checkpoint_with_a_changed_shape_is_a_checkpoint_error(tiny_lm_ckpt, tmp_path):
    """Found by the fault campaign: load_lm raised a bare RuntimeError (size mismatch) naming no file."""
    import pytest
    import torch

    from medforget.core.checkpoint import CheckpointError
    from medforget.systems.lm import load_lm

    ckpt = read_checkpoint(tiny_lm_ckpt)
    name = next(k for k, v in ckpt["state_dict"].items() if v.ndim == 2)
    ckpt["state_dict"][name] = torch.zeros(*[s + 1 for s in ckpt["state_dict"][name].shape])
    path = tmp_path / "shape.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not match the architecture") as err:
        load_lm(path)
    assert str(path) in str(err.value)
