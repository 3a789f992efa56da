"""Nothing is lost: an interrupted ``train`` / ``unlearn`` exports nothing and resumes from its last checkpoint with
``--ckpt_path last``; inputs (manifest, checkpoint) are never modified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medforget.commands import train, unlearn
from medforget.core.checkpoint import read_checkpoint
from tests.conftest import TINY_DATA, TINY_MODEL

QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


class CrashAtEpoch(Callback):
    """Simulates a crash (power cut, pre-empted job) at the start of an epoch."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")


class RecordEpochs(Callback):
    """Appends every epoch that starts to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step}) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def callbacks(record: Path, crash: bool) -> list[str]:
    flags = [f"--trainer.callbacks+={__name__}.RecordEpochs", f"--trainer.callbacks.path={record}"]
    if crash:
        flags += [f"--trainer.callbacks+={__name__}.CrashAtEpoch", "--trainer.callbacks.epoch=1"]
    return flags


def epochs_run(record: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in record.read_text().splitlines()]


def test_interrupted_train_exports_nothing_and_resumes(tiny_hospital, tmp_path):
    manifest_digest = sha256(tiny_hospital)
    out, record = tmp_path / "run", tmp_path / "epochs.jsonl"
    args = [f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.max_epochs=3", *QUIET,
            f"--out={out}"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train([*args, *callbacks(record, crash=True)])
    assert not (out / "model.ckpt").exists()  # an interrupted run never exports a model
    last = out / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["epoch"] == 0
    steps_per_epoch = read_checkpoint(last)["global_step"]
    assert epochs_run(record) == [0, 1]

    record.unlink()
    model = train([*args, "--ckpt_path=last", *callbacks(record, crash=False)])
    assert epochs_run(record) == [1, 2]  # epoch 0 was not trained again
    assert [json.loads(x)["step"] for x in record.read_text().splitlines()][0] == steps_per_epoch
    provenance = read_checkpoint(model)["medforget"]["provenance"]
    assert provenance["epochs"] == 3
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 3 * steps_per_epoch
    assert sha256(tiny_hospital) == manifest_digest  # the manifest is never modified


def test_interrupted_unlearn_resumes_with_the_same_salun_mask(tiny_hospital, forget_file, trained_ckpt, tmp_path):
    ckpt_digest, request_digest = sha256(trained_ckpt), sha256(forget_file)
    out, record = tmp_path / "unlearned", tmp_path / "epochs.jsonl"
    args = ["--method=SalUn", f"--ckpt={trained_ckpt}", f"--forget={forget_file}", f"--data.manifest={tiny_hospital}",
            *TINY_DATA, "--model.init_args.mask_ratio=0.3", "--model.init_args.lr=0.05", "--trainer.max_epochs=3",
            *QUIET, f"--out={out}"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        unlearn([*args, *callbacks(record, crash=True)])
    assert not (out / "model.ckpt").exists()
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    masks = last["salun_masks"]
    reference = last["medforget_selection_reference"]

    record.unlink()
    model = unlearn([*args, "--ckpt_path=last", *callbacks(record, crash=False)])
    assert epochs_run(record) == [1, 2]
    final = read_checkpoint(out / "checkpoints" / "last.ckpt")
    for name, mask in masks.items():  # the mask was restored, not recomputed from the half-unlearned weights
        assert torch.equal(final["salun_masks"][name], mask), name
    # the selection keeps comparing with the original (NaN where the one selection patient has a single class)
    assert final["medforget_selection_reference"].keys() == reference.keys()
    assert all(final["medforget_selection_reference"][k] == pytest.approx(v, nan_ok=True) for k, v in reference.items())
    # the hard constraint holds across the interruption: only masked-in weights differ from the original model
    original = read_checkpoint(trained_ckpt)["state_dict"]
    exported = read_checkpoint(model)["state_dict"]
    for name, mask in masks.items():
        key = f"net.{name}" if f"net.{name}" in original else name
        assert torch.equal(exported[key][~mask], original[key][~mask]), name
    assert sha256(trained_ckpt) == ckpt_digest and sha256(forget_file) == request_digest
