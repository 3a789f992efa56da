"""Regression tests of the bugs the fault campaign (benchmarks/faults.py, issue 18) found; one test per bug."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
import torch

from medforget.cli import COMMANDS, main
from medforget.commands import train
from medforget.core.checkpoint import CheckpointError, read_checkpoint, sidecar_path
from medforget.core.io import write_json
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.manifest import ManifestError, load_manifest
from medforget.systems.classifier import export_classifier, load_classifier
from tests.conftest import TINY_DATA, TINY_MODEL

QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


class Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


# --- a last training batch of one image stopped BatchNorm ------------------------------------------------------------
def test_no_training_batch_of_one_image(tiny_datamodule_kwargs):
    dm = DicomReportDataModule(**tiny_datamodule_kwargs)
    dm.setup()
    n = len(dm.indices["train"])
    dm = DicomReportDataModule(**{**tiny_datamodule_kwargs, "batch_size": n - 1})  # n % (n - 1) == 1
    dm.setup()
    sizes = [len(b["label"]) for b in dm.train_dataloader()]
    assert sizes == [n - 1]  # the lone last image is left out of this epoch (another one in the next)
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == len(dm.indices["val"])  # evaluation keeps all


# --- manifests that are not UTF-8 CSV: pandas' UnicodeDecodeError / ParserError named no file ----------------------
def test_manifest_encoding_and_parse_errors_name_the_file(tiny_hospital, tmp_path):
    text = tiny_hospital.read_text()
    latin = tmp_path / "latin.csv"
    latin.write_bytes(text.replace("report", "r\xe9port", 1).encode("latin-1"))
    with pytest.raises(ManifestError, match="encoding: not UTF-8") as err:
        load_manifest(latin, 4, check_files=False)
    assert str(latin) in str(err.value)
    broken = tmp_path / "broken.csv"
    broken.write_text('patient_id,study_id\n"a,b\n')  # an unterminated quote
    with pytest.raises(ManifestError, match="not a readable csv table") as err:
        load_manifest(broken, 4, check_files=False)
    assert str(broken) in str(err.value)
    excel = tmp_path / "m.xlsx"
    excel.write_text("x")
    with pytest.raises(ManifestError, match="unsupported format"):
        load_manifest(excel, 4)


def test_utf16_and_bom_manifests_are_read(tiny_hospital, tmp_path):
    expected = load_manifest(tiny_hospital, 4, check_files=False)
    for name, data in (("utf16.csv", tiny_hospital.read_text().encode("utf-16")),
                       ("bom.csv", b"\xef\xbb\xbf" + tiny_hospital.read_bytes())):
        path = tiny_hospital.parent / name
        path.write_bytes(data)
        try:
            got = load_manifest(path, 4, check_files=False)
        finally:
            path.unlink()
        assert list(got.columns) == list(expected.columns) and got["study_id"].tolist() == expected["study_id"].tolist()


# --- a tensor of another shape: load_classifier raised a bare RuntimeError ------------------------------------------
def test_changed_tensor_shape_is_a_checkpoint_error(trained_ckpt, tmp_path):
    ckpt = read_checkpoint(trained_ckpt)
    name = next(k for k, v in ckpt["state_dict"].items() if v.ndim == 2)
    ckpt["state_dict"][name] = torch.zeros(*[s + 1 for s in ckpt["state_dict"][name].shape])
    path = tmp_path / "shape.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not match the architecture") as err:
        load_classifier(path)
    assert str(path) in str(err.value)


# --- --ckpt_path: Lightning unpickled it deep in fit (UnpicklingError / RuntimeError naming no file) ---------------
@pytest.mark.parametrize("kind", ["payload", "truncated", "shape"])
def test_resume_from_a_tampered_checkpoint_is_refused(tiny_hospital, trained_ckpt, tmp_path, kind, capsys):
    out = tmp_path / "run"
    args = [f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.max_epochs=1", *QUIET,
            f"--out={out}"]
    train(args)
    last = (out / "checkpoints" / "last.ckpt").resolve()
    sentinel = tmp_path / "EXECUTED"
    ckpt = read_checkpoint(last)
    if kind == "payload":
        torch.save({**ckpt, "evil": Payload(sentinel)}, last)
    elif kind == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        name = next(k for k, v in ckpt["state_dict"].items() if v.ndim == 2)
        ckpt["state_dict"][name] = torch.zeros(3, 3)
        torch.save(ckpt, last)
    with pytest.raises(SystemExit) as err:
        main(["train", *args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    message = str(err.value.code)
    assert "error:" in message and str(out / "checkpoints" / "last.ckpt") in message, message
    assert not sentinel.exists()


# --- a full disk: torch.save's RuntimeError ("unexpected pos") and the audit's OSError named no file --------------
@pytest.fixture
def full_disk(monkeypatch):
    """Every write of more than 100 bytes fails like a full disk (Python writes: ENOSPC; torch.save: its
    RuntimeError)."""
    real_save, real_fdopen = torch.save, os.fdopen

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 782272 vs 782168")
        return real_save(obj, f, *args, **kwargs)

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))


def test_export_on_a_full_disk_names_the_file_and_leaves_nothing(trained_ckpt, tmp_path, full_disk):
    model = load_classifier(trained_ckpt)
    target = tmp_path / "model.ckpt"
    with pytest.raises(OSError, match="cannot write .*model.ckpt") as err:
        export_classifier(model, target)
    assert err.value.errno in (errno.ENOSPC, errno.EIO) and str(target) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_on_a_full_disk_keeps_the_old_file_and_sidecar(trained_ckpt, tmp_path, monkeypatch):
    target = shutil.copy(trained_ckpt, tmp_path / "model.ckpt")
    shutil.copy(sidecar_path(trained_ckpt), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = load_classifier(trained_ckpt)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("file write failed")))
    with pytest.raises(OSError, match="cannot write"):
        export_classifier(model, target, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_audit_write_on_a_full_disk_names_the_file(tmp_path, full_disk):
    with pytest.raises(OSError, match="cannot write .*audit.json") as err:
        write_json({"verdict": "pass"}, tmp_path / "audit.json")
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_os_errors_in_one_line(tmp_path, monkeypatch):
    def boom(args):
        raise OSError(errno.ENOSPC, f"cannot write {tmp_path / 'model.ckpt'}: No space left on device")

    monkeypatch.setitem(COMMANDS, "train", boom)
    with pytest.raises(SystemExit, match="medforget train: error: .*No space left on device"):
        main(["train"])


# --- the resume point was written before the selection callback's best: a resumed unlearn could not export -------
def test_resume_point_records_an_existing_best_epoch(tiny_hospital, trained_ckpt, forget_file, tmp_path):
    from medforget.commands import unlearn

    out = tmp_path / "u"
    args = ["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
            f"--data.manifest={tiny_hospital}", *TINY_DATA, "--model.init_args.lr=0.05", "--trainer.max_epochs=3",
            *QUIET, f"--out={out}"]
    first = read_checkpoint(unlearn(args))["state_dict"]
    states = read_checkpoint(out / "checkpoints" / "last.ckpt")["callbacks"]
    best = [s["best_model_path"] for k, s in states.items() if "ResumePoint" not in k and s.get("best_model_path")]
    assert best and all(os.path.isfile(p) for p in best), best  # the file the resumed run would export exists
    # killed after the last epoch (even after the export): the rerun with --ckpt_path last exports the same model
    again = read_checkpoint(unlearn([*args, "--ckpt_path=last", "--overwrite=true"]))["state_dict"]
    assert all(torch.equal(v, again[k]) for k, v in first.items())


# --- a bit flip in a value representation (US -> TS) escaped as NotImplementedError and stopped setup ------------
def test_unknown_value_representation_is_a_dicom_error(tiny_hospital, tmp_path):
    import pandas as pd

    from medforget.datamodules.dicom import DicomError
    from medforget.datamodules.dicom_report import UnreadableImagesError
    from medforget.datamodules.transforms import LoadDicomd

    df = pd.read_csv(tiny_hospital, dtype=str, keep_default_na=False)
    data = (tiny_hospital.parent / df.at[0, "image_path"]).read_bytes()
    tag = b"\x28\x00\x02\x00US"  # SamplesPerPixel, explicit VR little endian
    assert tag in data
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data.replace(tag, b"\x28\x00\x02\x00TS"))
    with pytest.raises(DicomError, match="not a readable DICOM file") as err:
        LoadDicomd("image")({"image": str(bad)})
    assert str(bad) in str(err.value)
    df.loc[0, "image_path"] = str(bad)
    manifest = tmp_path / "manifest.csv"
    df.assign(image_path=[str(bad)] + [str(tiny_hospital.parent / p) for p in df["image_path"][1:]]).to_csv(
        manifest, index=False)
    with pytest.raises(UnreadableImagesError) as err:
        DicomReportDataModule(str(manifest), image_size=32).setup()
    assert err.value.paths == [str(bad)]
