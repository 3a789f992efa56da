"""The synthetic hospital: determinism, valid DICOM, manifest consistency, label noise, config validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import UID

from medforget.datamodules.dicom import read_dicom
from medforget.datamodules.manifest import load_manifest
from medforget.datamodules.synthetic import NUM_CLASSES, SyntheticConfig, generate_hospital


def _gen(factory, name: str, **cfg) -> Path:
    return generate_hospital(factory.mktemp(name) / "h", SyntheticConfig(**cfg))


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two hospitals with the same seed and one with another seed (6 patients, 24x24)."""
    a = _gen(tmp_path_factory, "a", num_patients=6, image_size=24, seed=11)
    b = _gen(tmp_path_factory, "b", num_patients=6, image_size=24, seed=11)
    c = _gen(tmp_path_factory, "c", num_patients=6, image_size=24, seed=12)
    return a, b, c


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> Path:
    return _gen(tmp_path_factory, "larger", num_patients=30, image_size=16, seed=0)


def _images(manifest: Path) -> list[Path]:
    df = pd.read_csv(manifest)
    return [manifest.parent / p for p in df["image_path"]]


# --- determinism ----------------------------------------------------------------------------------
def test_same_seed_is_byte_identical(twins):
    a, b, _ = twins
    assert a.read_bytes() == b.read_bytes()  # manifest.csv: reports, labels, paths
    images_a, images_b = _images(a), _images(b)
    assert [p.relative_to(a.parent) for p in images_a] == [p.relative_to(b.parent) for p in images_b]
    for pa, pb in zip(images_a, images_b, strict=True):
        da, db = pydicom.dcmread(pa), pydicom.dcmread(pb)
        assert da.PixelData == db.PixelData
        assert da.SOPInstanceUID == db.SOPInstanceUID
    config = "synthetic_config.json"
    assert (a.parent / config).read_text() == (b.parent / config).read_text()


def test_different_seed_differs(twins):
    a, _, c = twins
    assert a.read_bytes() != c.read_bytes()
    df_a, df_c = pd.read_csv(a), pd.read_csv(c)
    common = sorted(set(df_a["image_path"]) & set(df_c["image_path"]))
    assert common  # both hospitals have MF0000-S01 etc.
    for rel in common:
        da, dc = pydicom.dcmread(a.parent / rel), pydicom.dcmread(c.parent / rel)
        assert da.PixelData != dc.PixelData
        assert da.SOPInstanceUID != dc.SOPInstanceUID
    assert df_a["report"].tolist()[: len(common)] != df_c["report"].tolist()[: len(common)]


def test_output_layout(twins):
    a, _, _ = twins
    root = a.parent
    assert sorted(p.name for p in root.iterdir()) == ["images", "manifest.csv", "synthetic_config.json"]
    assert not root.with_name(root.name + ".partial").exists()
    assert not list(root.rglob("*.tmp"))
    df = pd.read_csv(a)
    assert list(df.columns) == ["patient_id", "study_id", "image_path", "report", "label", "true_label"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.dcm")) == sorted(df["image_path"])
    assert df["patient_id"].nunique() == 6
    assert df["study_id"].is_unique
    assert (df["report"].str.len() > 0).all()


def test_manifest_passes_validation(larger):
    df = load_manifest(larger, NUM_CLASSES)
    assert len(df) == len(pd.read_csv(larger))
    assert df["patient_id"].nunique() == 30


# --- DICOM tags -----------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["twins", "larger"])
def test_dicom_tags(request, which):
    manifest = request.getfixturevalue(which)
    manifest = manifest[0] if isinstance(manifest, tuple) else manifest
    size = 24 if which == "twins" else 16
    df = pd.read_csv(manifest)
    sops, studies, series = [], [], []
    photometric = set()
    for row in df.itertuples():
        ds = pydicom.dcmread(manifest.parent / row.image_path)
        assert ds.Modality == "DX"
        assert ds.PatientID == row.patient_id
        assert Path(row.image_path).parts[-2] == row.patient_id
        meta = ds.file_meta
        assert "TransferSyntaxUID" in meta and meta.TransferSyntaxUID.is_transfer_syntax
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.BitsAllocated == 16
        assert ds.BitsStored in (12, 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.SamplesPerPixel == 1
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        photometric.add(ds.PhotometricInterpretation)
        assert "WindowCenter" in ds and "WindowWidth" in ds and float(ds.WindowWidth) > 1
        assert (ds.Rows, ds.Columns) == (size, size)
        assert ds.pixel_array.shape == (size, size)
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert len(uid) <= 64
            assert UID(uid).is_valid
        sops.append(ds.SOPInstanceUID)
        studies.append(ds.StudyInstanceUID)
        series.append(ds.SeriesInstanceUID)
        image = read_dicom(manifest.parent / row.image_path)
        assert image.shape == (size, size) and image.min() >= 0 and image.max() <= 1
    all_uids = sops + studies + series
    assert len(set(all_uids)) == len(all_uids)  # one study and one series per image, nothing reused
    if which == "larger":
        assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_monochrome1_files_display_like_the_rest(larger):
    """MONOCHROME1 images are stored inverted but displayed bright = dense like MONOCHROME2 ones."""
    means = {"MONOCHROME1": [], "MONOCHROME2": []}
    for path in _images(larger):
        ds = pydicom.dcmread(path)
        means[str(ds.PhotometricInterpretation)].append(float(read_dicom(path).mean()))
    assert means["MONOCHROME1"] and means["MONOCHROME2"]
    assert abs(np.mean(means["MONOCHROME1"]) - np.mean(means["MONOCHROME2"])) < 0.1


# --- studies and labels ---------------------------------------------------------------------------
@pytest.mark.parametrize(("min_studies", "max_studies"), [(1, 6), (2, 3), (4, 4)])
def test_studies_per_patient(tmp_path_factory, min_studies, max_studies):
    manifest = _gen(tmp_path_factory, "studies", num_patients=12, image_size=16, min_studies=min_studies,
                    max_studies=max_studies, seed=2)
    df = pd.read_csv(manifest)
    counts = df.groupby("patient_id").size()
    assert len(counts) == 12
    assert counts.min() >= min_studies and counts.max() <= max_studies
    if min_studies < max_studies:
        assert counts.nunique() > 1


def test_labels_and_label_noise(tmp_path_factory):
    manifest = _gen(tmp_path_factory, "noise", num_patients=150, image_size=16, label_noise=0.04, seed=0)
    df = pd.read_csv(manifest)
    assert set(df["label"]) <= set(range(NUM_CLASSES))
    assert set(df["true_label"]) <= set(range(NUM_CLASSES))
    assert set(df["label"]) == set(range(NUM_CLASSES))  # every class occurs
    flipped = (df["label"] != df["true_label"]).mean()
    assert 0 < flipped <= 0.15


def test_no_label_noise(tmp_path_factory):
    manifest = _gen(tmp_path_factory, "clean", num_patients=20, image_size=16, label_noise=0.0, seed=0)
    df = pd.read_csv(manifest)
    assert (df["label"] == df["true_label"]).all()


# --- output folder and config ---------------------------------------------------------------------
def test_existing_non_empty_folder(tmp_path):
    out = tmp_path / "h"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    cfg = SyntheticConfig(num_patients=2, image_size=16, max_studies=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_hospital(out, cfg)
    assert (out / "keep.txt").read_text() == "precious"
    manifest = generate_hospital(out, cfg, overwrite=True)
    assert manifest == out / "manifest.csv" and manifest.is_file()
    assert not (out / "keep.txt").exists()


def test_existing_empty_folder_is_fine(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    manifest = generate_hospital(out, SyntheticConfig(num_patients=2, image_size=16, max_studies=1))
    assert len(pd.read_csv(manifest)) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_patients": 0}, "num_patients"),
        ({"min_studies": 3, "max_studies": 2}, "min_studies"),
        ({"min_studies": 0}, "min_studies"),
        ({"label_noise": 2}, "label_noise"),
        ({"text_fidelity": -0.1}, "text_fidelity"),
        ({"monochrome1_fraction": 1.5}, "monochrome1_fraction"),
        ({"image_size": 8}, "image_size"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**kwargs)
