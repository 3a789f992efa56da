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


def _capture(monkeypatch, verb: str) -> list[list[str]]:
    """Replace ``commands.<verb>`` (what the API calls) by a recorder of its argv."""
    calls: list[list[str]] = []
    monkeypatch.setattr(api.commands, verb, lambda argv: calls.append(list(argv)) or "recorded")
    return calls


def test_fit_verbs_build_their_argv_alike(monkeypatch, tmp_path):
    """train / unlearn / train_lm / unlearn_lm share one flag builder: config first, the verb's own flags, the groups,
    the run flags, --out, and extra_args last (so that they win)."""
    recorded = {verb: _capture(monkeypatch, verb) for verb in ("train", "unlearn", "train_lm", "unlearn_lm")}
    api.train("m.csv", "o", exclude_patients="f.txt", epochs=2, seed=1, accelerator="cpu", data={"seed": 3},
              model={"lr": 0.1}, trainer={"logger": False}, config="c.yaml", extra_args=["--x=1"])
    api.unlearn("a.ckpt", "f.txt", "SCRUB", "u", manifest="m.csv", method_args={"lr": 0.01}, overwrite=True)
    api.train_lm("lm", exclude_forget=True, model={"hidden_size": 64}, export_hf=tmp_path / "hf")
    api.unlearn_lm("lm.ckpt", "NPO", "ul", forget="f.txt", data={"batch_size": 4}, method_args={"beta": 0.1},
                   epochs=1)
    assert recorded["train"] == [["--config=c.yaml", "--data.manifest=m.csv", "--data.exclude_patients=f.txt",
                                  "--data.seed=3", "--model.lr=0.1", "--trainer.logger=false",
                                  "--trainer.max_epochs=2", "--seed_everything=1", "--trainer.accelerator=cpu",
                                  "--overwrite=false", "--out=o", "--x=1"]]
    assert recorded["unlearn"] == [["--method=SCRUB", "--ckpt=a.ckpt", "--forget=f.txt", "--data.manifest=m.csv",
                                    "--model.init_args.lr=0.01", "--overwrite=true", "--out=u"]]
    assert recorded["train_lm"] == [["--data.exclude_forget=true", "--model.hidden_size=64", "--overwrite=false",
                                     f"--export_hf={tmp_path / 'hf'}", "--out=lm"]]
    assert recorded["unlearn_lm"] == [["--method=NPO", "--ckpt=lm.ckpt", "--forget=f.txt", "--data.batch_size=4",
                                       "--model.init_args.beta=0.1", "--trainer.max_epochs=1", "--overwrite=false",
                                       "--out=ul"]]


def test_tune_takes_typed_arguments(monkeypatch):
    calls = _capture(monkeypatch, "tune")
    api.tune("a.ckpt", "f.txt", "RefDistill", "t", n_trials=3, sampler_seed=2, max_epochs_high=4, timeout=60.0,
             manifest="m.csv", method_args={"reference_dir": "refs", "num_references": 2}, data={"seed": 1},
             trainer={"enable_progress_bar": False}, accelerator="cpu", config="c.yaml")
    assert calls == [["--method=RefDistill", "--config=c.yaml", "--out=t", "--n_trials=3", "--sampler_seed=2",
                      "--pruner=median", "--max_epochs_high=4", "--timeout=60.0", "--ckpt=a.ckpt", "--forget=f.txt",
                      "--data.manifest=m.csv", "--data.seed=1", "--model.init_args.reference_dir=refs",
                      "--model.init_args.num_references=2", "--trainer.enable_progress_bar=false",
                      "--trainer.accelerator=cpu"]]
    with pytest.raises(TypeError, match="one config file"):
        api.tune("a.ckpt", "f.txt", config=["a.yaml", "b.yaml"])


def test_tune_runs_with_fixed_method_args(trained_ckpt, forget_file, tiny_hospital, tmp_path):
    """A real one-trial study: the fixed method_args reach every trial's unlearn run, the search space the rest."""
    import yaml

    summary = api.tune(trained_ckpt, forget_file, "FineTune", tmp_path / "tune", n_trials=1, max_epochs_high=1,
                       manifest=tiny_hospital, data={"image_size": 32, "batch_size": 16},
                       method_args={"weight_decay": 0.01}, **QUIET)
    assert summary["method"] == "FineTune" and summary["complete"] == 1
    [saved] = (tmp_path / "tune" / "trials" / "0000").rglob("config.yaml")  # the run's resolved config
    trial = yaml.safe_load(saved.read_text())
    assert trial["model"]["init_args"]["weight_decay"] == pytest.approx(0.01)
    assert trial["model"]["init_args"]["lr"] == pytest.approx(summary["best_params"]["lr"])
    assert trial["trainer"]["max_epochs"] == 1 and trial["trainer"]["accelerator"] == "cpu"
