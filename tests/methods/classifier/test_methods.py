"""Every registered unlearning method: a few steps on tiny data, finite loss, weights change, input untouched."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch

from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.base import init_parameters
from medforget.methods.classifier import UnlearningMethod, get_method, list_methods
from medforget.systems.classifier import load_classifier


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_lists_the_spine_methods():
    assert {"FineTune", "GradientAscent"} <= set(list_methods())
    assert get_method("FineTune").__name__ == "FineTune"
    with pytest.raises(KeyError, match="registered"):
        get_method("NoSuchMethod")


# SSD selects weights with I_f > alpha * I_D, and I_f / I_D is at most (#batches of D) / (#batches of D_f): about 3
# on the tiny hospital, so its default alpha=10 (meant for real datasets) would select nothing there.
# RefDistill trains its own 2 one-epoch reference models (into the trainer's default_root_dir) when given none;
# ForgetMI also runs with its retain distillation term.
TINY_DATA_KWARGS = {"SSD": {"alpha": 1.5}, "RefDistill": {"num_references": 2, "reference_epochs": 1},
                    "ForgetMI": {"retain_kl": 0.5}}


def make_method(name: str, ckpt, **kwargs) -> UnlearningMethod:
    """The registered method ``name`` on ``ckpt``; ``kwargs`` it does not take (e.g. ``lr`` of a training-free
    method) are dropped."""
    cls = get_method(name)
    accepted = init_parameters(cls)  # its own arguments and those it forwards to its base
    return cls(ckpt=str(ckpt), **{k: v for k, v in kwargs.items() if k in accepted})


# methods that update the loaded model's weights (SISA retrains shards of an ensemble: tests/test_sisa.py)
GRADIENT_METHODS = [m for m in list_methods() if not get_method(m).retrains]


@pytest.mark.parametrize("modalities", ["both", "image"])
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_method_runs_and_changes_weights(name, modalities, trained_ckpt, trained_image_ckpt, forget_file,
                                         tiny_datamodule_kwargs, tmp_path):
    trained_ckpt = trained_ckpt if modalities == "both" else trained_image_ckpt
    before_file = _sha(trained_ckpt)
    method = make_method(name, trained_ckpt, lr=1e-3, **TINY_DATA_KWARGS.get(name, {}))
    assert method.net.modalities == (("image", "text") if modalities == "both" else ("image",))
    before = {k: v.clone() for k, v in method.net.state_dict().items()}
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    seen: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(method, datamodule=dm)
    if method.one_shot:  # training-free: the weights are edited once, no training step runs
        assert seen == []
    else:  # max_steps counts optimizer steps: SCRUB (manual optimization) takes a max- and a min-step per batch
        assert len(seen) == (3 if method.automatic_optimization else 2)
        assert all(torch.isfinite(torch.tensor(seen)))
    after = method.net.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed, f"{name} did not change any weight"
    assert _sha(trained_ckpt) == before_file, "the input checkpoint file was modified"
    # the in-memory original used by the method is a separate copy from what is on disk
    reloaded = load_classifier(trained_ckpt).net.state_dict()
    assert any(not torch.equal(reloaded[k], after[k]) for k in changed)


def test_method_without_checkpoint_fails_clearly():
    with pytest.raises(RuntimeError, match="ckpt"):
        _ = get_method("FineTune")().net


@pytest.mark.parametrize("name", list_methods())
def test_method_hyperparameters_do_not_collide_with_the_datamodule(name):
    # Lightning merges the system's and the datamodule's hparams and fails on a shared key with different values
    # (e.g. a method's ``seed`` next to ``data.seed``), so method arguments must be named apart.
    method_args = set(init_parameters(get_method(name)))
    data_args = set(inspect.signature(DicomReportDataModule.__init__).parameters) - {"self"}
    assert not method_args & data_args, f"{name} shares {method_args & data_args} with DicomReportDataModule"


CONFIGS = sorted((Path(__file__).parents[3] / "configs" / "unlearn").glob("*.yaml"))
TUNED = sorted((Path(__file__).parents[3] / "configs" / "unlearn" / "tuned").glob("*.yaml"))  # the leaderboard's


@pytest.mark.parametrize("config", CONFIGS + TUNED, ids=[c.stem for c in CONFIGS] + [f"tuned-{c.stem}" for c in TUNED])
def test_unlearn_config_parses(config, capsys):
    from medforget.commands import unlearn

    with pytest.raises(SystemExit) as exc:
        unlearn([f"--config={config}", "--print_config"])
    assert exc.value.code in (0, None)
    assert "class_path: medforget.methods.classifier." in capsys.readouterr().out


def test_every_method_has_a_config():
    import yaml

    configured = {yaml.safe_load(c.read_text())["model"]["class_path"].rsplit(".", 1)[-1] for c in CONFIGS}
    assert set(list_methods()) <= configured, f"no configs/unlearn/*.yaml for {set(list_methods()) - configured}"
