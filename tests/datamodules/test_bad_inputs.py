"""Bad input ends at ``DicomReportDataModule.setup`` in a clear error naming the file and element (or row and field),
never in a traceback from inside a DataLoader worker; ``on_bad_image="skip"`` leaves unreadable images out and lists
them by path only.

Manifest-level checks (missing file, empty report, label, duplicates, patient in two splits) are unit-tested in
``test_manifest.py`` and forget requests in ``test_splits.py``; here they are checked through the datamodule.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medforget.datamodules import keys, transforms
from medforget.datamodules.dicom import DicomError
from medforget.datamodules.dicom_report import DicomReportDataModule, UnreadableImagesError
from medforget.datamodules.manifest import ManifestError
from medforget.datamodules.splits import ForgetRequestError, write_patient_ids
from medforget.datamodules.synthetic import write_dicom

PATIENTS = [f"PATIENT-{name}" for name in ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF",
                                           "HOTEL", "INDIA", "JULIET")]
SPLIT = {p: "train" for p in PATIENTS[:6]} | {p: "val" for p in PATIENTS[6:8]} | {p: "test" for p in PATIENTS[8:]}
REPORT = "Confidential finding number {} for this study."


def _image(path: Path, seed: int) -> None:
    uid = f"1.2.826.0.1.3680043.10.1492.77.{seed}"
    write_dicom(path, np.random.default_rng(seed).random((8, 8)), patient_id="ANON", study_uid=uid + ".1",
                sop_uid=uid + ".2", series_uid=uid + ".3")


@pytest.fixture()
def hospital(tmp_path) -> Path:
    """10 patients x 2 studies of 8x8 images; file names carry no patient ID (img/s<row>.dcm)."""
    rows = []
    for p, patient in enumerate(PATIENTS):
        for s in range(2):
            i = 2 * p + s
            _image(tmp_path / "img" / f"s{i}.dcm", i)
            rows.append({"patient_id": patient, "study_id": f"S{i}", "image_path": f"img/s{i}.dcm",
                         "report": REPORT.format(i), "label": str(i % 4), "split": SPLIT[patient]})
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _dm(manifest: Path, **kwargs) -> DicomReportDataModule:
    return DicomReportDataModule(str(manifest), image_size=8, batch_size=4, **kwargs)


def _assert_no_phi(text: str) -> None:
    for patient in PATIENTS:
        assert patient not in text
    assert "Confidential finding" not in text


def _corrupt(path: Path) -> None:
    path.write_text("FINDINGS: this is not a DICOM file.\n" * 5)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the end of PixelData is missing


def _multiframe(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path)


def _rle(path: Path) -> None:
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)


def _no_rle_handler(monkeypatch) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import RLELossless

    decoder = get_decoder(RLELossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})


# --- on_bad_image="fail" (the default) ------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("corrupt", "not a readable DICOM file"),
        ("truncated", "PixelData is corrupt or truncated"),
        ("multiframe", "NumberOfFrames=2; multi-frame images are rejected"),
        ("no_handler", "`pip install pylibjpeg pylibjpeg-rle`"),
    ],
)
def test_bad_image_fails_at_setup_naming_the_file(hospital, monkeypatch, kind, fragment):
    bad = hospital.parent / "img" / "s3.dcm"  # a training image
    {"corrupt": _corrupt, "truncated": _truncate, "multiframe": _multiframe, "no_handler": _rle}[kind](bad)
    if kind == "no_handler":
        _no_rle_handler(monkeypatch)
    dm = _dm(hospital, multiframe="error")
    with pytest.raises(UnreadableImagesError) as info:
        dm.setup()
    err = info.value
    assert isinstance(err, DicomError)
    assert err.paths == [str(bad)]
    assert len(err.problems) == 1 and err.problems[0].startswith(f"{bad}: ")
    assert fragment in err.problems[0]
    assert "1 of 20 image(s) cannot be read" in str(err) and err.problems[0] in str(err)
    assert "on_bad_image='skip'" in str(err)  # says how to go on without them
    _assert_no_phi(str(err))
    assert dm.df is None  # a failed setup is not mistaken for a finished one: calling setup again re-checks
    with pytest.raises(UnreadableImagesError):
        dm.setup()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_bad_image_is_listed(hospital, num_workers):
    images = hospital.parent / "img"
    _corrupt(images / "s0.dcm")
    _truncate(images / "s13.dcm")  # val
    _truncate(images / "s19.dcm")  # test
    with pytest.raises(UnreadableImagesError) as info:  # uncached images are checked too, in worker processes
        _dm(hospital, cache_rate=0.0, num_workers=num_workers).setup()
    assert info.value.paths == [str(images / f"s{i}.dcm") for i in (0, 13, 19)]
    assert "3 of 20 image(s)" in str(info.value)


def test_image_broken_after_setup_fails_naming_the_file(hospital):
    """An image that breaks between setup and loading (not cached: cache_rate=0) is a DicomError naming the file,
    not MONAI's wrapped transform error."""
    dm = _dm(hospital, cache_rate=0.0)
    dm.setup()
    bad = hospital.parent / "img" / "s12.dcm"  # val
    _truncate(bad)
    with pytest.raises(DicomError, match="PixelData is corrupt or truncated") as info:
        list(dm.val_dataloader())
    assert str(info.value).startswith(f"{bad}: ")


# --- on_bad_image="skip" --------------------------------------------------------------------------
def test_skip_leaves_bad_images_out_and_logs_rows_only(hospital, caplog):
    images = hospital.parent / "img"
    _corrupt(images / "s2.dcm")  # train (PATIENT-BRAVO)
    _truncate(images / "s17.dcm")  # test (PATIENT-INDIA)
    dm = _dm(hospital, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="medforget.datamodules.dicom_report"):
        dm.setup()
    bad = sorted(str(images / f"s{i}.dcm") for i in (2, 17))
    assert dm.skipped_images == bad
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipping 2 of 20 image(s)" in logged
    assert "manifest rows 3, 18 (1-based" in logged  # rows 2 and 17 of the data, counted from 1
    for path in bad:
        assert path not in logged  # hospital paths often contain patient IDs
    _assert_no_phi(logged)
    assert "Confidential" not in logged and "not a DICOM file" not in logged
    for name in ("train", "val", "test"):
        assert not {2, 17} & set(dm.indices[name].tolist())
    assert dm.summary()["train"] == {"patients": 6, "studies": 11}
    assert dm.summary()["test"] == {"patients": 2, "studies": 3}
    seen = [i for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
            for batch in loader for i in batch[keys.INDEX].tolist()]
    assert sorted(seen) == sorted(set(range(20)) - {2, 17})  # everything else, once


def test_skip_without_bad_images_changes_nothing(hospital):
    dm = _dm(hospital, on_bad_image="skip")
    dm.setup()
    assert dm.skipped_images == []
    assert sum(len(dm.indices[n]) for n in ("train", "val", "test")) == 20


def test_skip_with_a_disk_cache_rechecks_repaired_files(hospital, monkeypatch):
    cache = hospital.parent / "cache"
    bad = hospital.parent / "img" / "s4.dcm"
    _truncate(bad)
    dm = _dm(hospital, on_bad_image="skip", cache_dir=str(cache))
    dm.setup()
    assert dm.skipped_images == [str(bad)]
    assert len(list(cache.glob("*.pt"))) == 19  # only readable images are cached
    # a second run reads the cache: nothing is decoded, the bad image is found again
    real = transforms.read_dicom
    calls: list[str] = []
    monkeypatch.setattr(transforms, "read_dicom", lambda path, *a: calls.append(str(path)) or real(path, *a))
    again = _dm(hospital, on_bad_image="skip", cache_dir=str(cache))
    again.setup()
    assert again.skipped_images == [str(bad)] and calls == [str(bad)]
    # the file is repaired: its new size/mtime change its cache key, so it is decoded and used
    _image(bad, 4)
    repaired = _dm(hospital, on_bad_image="skip", cache_dir=str(cache))
    repaired.setup()
    assert repaired.skipped_images == []
    assert 4 in repaired.indices["train"].tolist()
    item = repaired.subset("train")[repaired.indices["train"].tolist().index(4)]
    np.testing.assert_allclose(item[keys.IMAGE][0].numpy(), real(bad), rtol=0, atol=1e-6)


def test_skip_that_empties_the_forget_request_is_an_error(hospital, tmp_path):
    images = hospital.parent / "img"
    _corrupt(images / "s0.dcm")  # both studies of PATIENT-ALPHA
    _corrupt(images / "s1.dcm")
    forget = write_patient_ids([PATIENTS[0]], tmp_path / "forget.txt")
    dm = _dm(hospital, mode="unlearn", forget=str(forget), on_bad_image="skip", selection_fraction=0.0)
    with pytest.raises(ValueError, match="no image of the forget request's patients is left") as info:
        dm.setup()
    _assert_no_phi(str(info.value))


def test_skip_in_unlearn_mode_keeps_the_rest_of_the_forget_patients(hospital, tmp_path):
    _corrupt(hospital.parent / "img" / "s0.dcm")  # one of PATIENT-ALPHA's two studies
    forget = write_patient_ids([PATIENTS[0]], tmp_path / "forget.txt")
    dm = _dm(hospital, mode="unlearn", forget=str(forget), on_bad_image="skip", selection_fraction=0.0)
    dm.setup()
    assert dm.indices["forget"].tolist() == [1]
    assert 0 not in dm.indices["retain"].tolist() and 0 not in dm.indices[keys.RETAIN_SAMPLE].tolist()
    forget_rows = {i for batch in dm.part_dataloader("forget") for i in batch[keys.INDEX].tolist()}
    assert forget_rows == {1}


def test_a_request_too_small_for_the_selection_split_names_the_flag(hospital, tmp_path):
    forget = write_patient_ids([PATIENTS[0]], tmp_path / "forget.txt")
    for mode in ("unlearn", "evaluate"):
        with pytest.raises(ValueError, match="--data.selection_fraction 0") as info:
            _dm(hospital, mode=mode, forget=str(forget)).setup()
        _assert_no_phi(str(info.value))


# --- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "value"), [("on_bad_image", "ignore"), ("multiframe", "all")])
def test_invalid_options(hospital, option, value):
    with pytest.raises(ValueError, match=f"data.{option}"):
        _dm(hospital, **{option: value})


def test_on_bad_image_is_in_the_config_schema():
    """LightningCLI reads ``__init__``: the option is typed (choices checked) and documented."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DicomReportDataModule, "data")
    assert parser.parse_args([]).data.on_bad_image == "fail"
    assert parser.parse_args(["--data.on_bad_image=skip"]).data.on_bad_image == "skip"
    with pytest.raises(Exception, match="on_bad_image"):
        parser.parse_args(["--data.on_bad_image=ignore"])
    assert "skipped_images" in " ".join(parser.format_help().split())


# --- manifest and forget-request problems surface at setup, before any image is decoded ----------
def _edit(manifest: Path, change) -> None:
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df = change(df)
    df.to_csv(manifest, index=False)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda df: df.assign(image_path=df["image_path"].where(df.index != 3, "img/gone.dcm")),
         "row 5 (study_id='S3'): image_path file not found"),
        (lambda df: df.assign(report=df["report"].where(df.index != 3, "  ")), "row 5 (study_id='S3'): empty report"),
        (lambda df: df.assign(label=df["label"].where(df.index != 3, "7")),
         "row 5 (study_id='S3'): label 7 out of range [0, 4)"),
        (lambda df: pd.concat([df, df.iloc[[3]]], ignore_index=True),
         "row 22 (study_id='S3'): duplicate of an earlier row"),
        (lambda df: df.assign(split=df["split"].where(df.index != 3, "test")), "patient in rows 4, 5 appears"),
    ],
    ids=["missing-file", "empty-report", "label-out-of-range", "duplicate-row", "patient-in-two-splits"],
)
def test_manifest_problems_fail_setup_before_decoding(hospital, monkeypatch, change, fragment):
    _edit(hospital, change)
    monkeypatch.setattr(transforms, "read_dicom", lambda *a, **k: pytest.fail("an image was decoded"))
    with pytest.raises(ManifestError) as info:
        _dm(hospital).setup()
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(fragment)
    assert str(hospital) in str(info.value)
    _assert_no_phi(str(info.value))


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [("PATIENT-NOBODY", "entries [2] are not patients of this manifest"),
     (PATIENTS[8], "entries #2 (test) are not in the training split"),
     (PATIENTS[6], "entries #2 (val) are not in the training split")],
    ids=["unknown", "test-split", "val-split"],
)
@pytest.mark.parametrize("mode", ["unlearn", "evaluate"])
def test_bad_forget_request_fails_setup_before_decoding(hospital, tmp_path, monkeypatch, entry, fragment, mode):
    forget = write_patient_ids([PATIENTS[0], entry], tmp_path / "forget.txt")
    monkeypatch.setattr(transforms, "read_dicom", lambda *a, **k: pytest.fail("an image was decoded"))
    with pytest.raises(ForgetRequestError) as info:
        _dm(hospital, mode=mode, forget=str(forget)).setup()
    assert fragment in str(info.value) and str(forget) in str(info.value)
    assert entry not in str(info.value)
    _assert_no_phi(str(info.value))
