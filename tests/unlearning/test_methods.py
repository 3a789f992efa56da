"""Every registered unlearning method: a few steps on tiny data, finite loss, weights change, input untouched."""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch

from medforget.checkpoint import load_classifier
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.unlearning import UnlearningMethod, get_method, list_methods


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_lists_the_spine_methods():
    assert {"FineTune", "GradientAscent"} <= set(list_methods())
    assert get_method("FineTune").__name__ == "FineTune"
    with pytest.raises(KeyError, match="registered"):
        get_method("NoSuchMethod")


@pytest.mark.parametrize("name", list_methods())
def test_method_runs_and_changes_weights(name, trained_ckpt, forget_file, tiny_datamodule_kwargs):
    before_file = _sha(trained_ckpt)
    method: UnlearningMethod = get_method(name)(ckpt=str(trained_ckpt), lr=1e-3)
    before = {k: v.clone() for k, v in method.net.state_dict().items()}
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs)
    seen: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(method, datamodule=dm)
    assert len(seen) == 3 and all(torch.isfinite(torch.tensor(seen)))
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
