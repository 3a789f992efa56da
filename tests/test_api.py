"""The Python API (:mod:`medforget.api`) on tiny data: the same runs as the CLI verbs, from typed arguments."""

from __future__ import annotations

import pytest
import torch

from medforget import api
from medforget.commands import train
from medforget.core.checkpoint import read_checkpoint
from medforget.core.registry import UnknownNameError
from tests.conftest import TINY_DATA, TINY_MODEL

TINY_MODEL_KWARGS = {"image_width": 8, "text_hidden": 32, "vocab_size": 256, "joint_dim": 32, "max_length": 48}
QUIET = {"accelerator": "cpu", "trainer": {"enable_progress_bar": False}}


def test_flags_are_what_the_cli_reads():
    assert api.flags("model.init_args", {"lr": 1e-3, "preset": "equal", "params": ["a", "b"], "x": None,
                                         "on": True}) == [
        "--model.init_args.lr=0.001", "--model.init_args.preset=equal", '--model.init_args.params=["a", "b"]',
        "--model.init_args.x=null", "--model.init_args.on=true"]


def test_train_equals_the_cli(tiny_hospital, tmp_path):
    """api.train and the argv verb give the same weights (same seed, same recipe)."""
    by_api = api.train(tiny_hospital, tmp_path / "api", epochs=1, seed=3, data={"image_size": 32, "batch_size": 16},
                       model=TINY_MODEL_KWARGS, **QUIET)
    by_cli = train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.max_epochs=1",
                    "--seed_everything=3", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                    f"--out={tmp_path / 'cli'}"])
    a, b = read_checkpoint(by_api), read_checkpoint(by_cli)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["medforget"]["provenance"]["kind"] == "original"


def test_unlearn_and_evaluate(tiny_hospital, forget_file, trained_ckpt, retrained_ckpt, tmp_path):
    unlearned = api.unlearn(trained_ckpt, forget_file, "GradientAscent", tmp_path / "unlearned", manifest=tiny_hospital,
                            data={"image_size": 32, "batch_size": 16}, method_args={"lr": 1e-4}, epochs=1, **QUIET)
    provenance = read_checkpoint(unlearned)["medforget"]["provenance"]
    assert provenance["method"] == "GradientAscent" and provenance["method_hparams"]["lr"] == pytest.approx(1e-4)
    report = api.evaluate(forget_file, original=trained_ckpt, unlearned=unlearned, retrained=retrained_ckpt,
                          manifest=tiny_hospital, data={"image_size": 32, "batch_size": 16}, out=tmp_path / "audit",
                          accelerator="cpu", audit={"quantization": [], "relearn_steps": 0, "plots": False})
    assert set(report["summary"]["models"]) == {"original", "unlearned", "retrained"}
    assert report["verdict"] in ("pass", "inconclusive", "fail")
    checks = api.verify(tmp_path / "audit")
    assert len(checks) >= 4  # the audit's own hash and the three checkpoints it audited


def test_unknown_method_fails_before_anything_runs(trained_ckpt, forget_file, tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'FineTune'"):
        api.unlearn(trained_ckpt, forget_file, "FineTun", tmp_path / "u")
    with pytest.raises(UnknownNameError, match="did you mean 'SimNPO'"):
        api.unlearn_lm(trained_ckpt, "SimNP", tmp_path / "u")
    assert not (tmp_path / "u").exists()


def test_synth(tmp_path):
    manifest = api.synth(tmp_path / "h", num_patients=3, image_size=16)
    assert manifest.is_file() and len(list((tmp_path / "h" / "images").rglob("*.dcm"))) >= 3
