"""DICOM reading (modality LUT, linear window, MONOCHROME1) and the MONAI transforms around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut

from medforget.datamodules.synthetic import write_dicom
from medforget.datamodules.transforms import DicomError, LoadDicomd, image_transforms, read_dicom

H, W = 20, 24


def _write(path: Path, image: np.ndarray, **kwargs) -> Path:
    root = "1.2.826.0.1.3680043.10.1492.7."
    write_dicom(path, image, patient_id="TEST", study_uid=root + "1", sop_uid=root + "2",
                series_uid=root + "3", **kwargs)
    return path


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, with output range [0, 1]:
    x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 1; else ((x - (c - 0.5)) / (w - 1) + 0.5)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # w == 1: only the two outer branches apply
        y = (x - (center - 0.5)) / (width - 1) + 0.5
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 1.0, y)
    return y


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(42).random((H, W))


@pytest.fixture()
def mono2(tmp_path, image) -> Path:
    return _write(tmp_path / "mono2.dcm", image)


# --- round trip -----------------------------------------------------------------------------------
def test_raw_modality_values_round_trip(mono2, image):
    ds = pydicom.dcmread(mono2)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.Rows, ds.Columns) == (H, W)
    values = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(values, np.round(image * 4095))


def test_read_dicom_applies_the_linear_window(mono2, image):
    out = read_dicom(mono2)
    assert out.dtype == np.float32
    assert out.shape == (H, W)
    expected = _linear_window(np.round(image * 4095), 2048.0, 4096.0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, image, rtol=0, atol=1.0 / 4095)  # the display reproduces the image


@pytest.mark.parametrize("window", [(1500.0, 1000.0), (2500.0, 2001.0), (3000.0, 1.0)])
def test_read_dicom_narrow_windows_clip(tmp_path, image, window):
    out = read_dicom(_write(tmp_path / "w.dcm", image, window=window))
    expected = _linear_window(np.round(image * 4095), *window)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0  # the narrow window saturates both ends
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(
    "variant",
    [
        {"monochrome1": True},
        {"rescale_intercept": -1024.0},
        {"monochrome1": True, "rescale_intercept": -1024.0},
    ],
    ids=["monochrome1", "intercept", "monochrome1+intercept"],
)
@pytest.mark.parametrize("window", [(2048.0, 4096.0), (1900.0, 3001.0)])
def test_variants_display_identically(tmp_path, image, variant, window):
    reference = read_dicom(_write(tmp_path / "ref.dcm", image, window=window))
    path = _write(tmp_path / "variant.dcm", image, window=window, **variant)
    ds = pydicom.dcmread(path)
    if variant.get("monochrome1"):
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        raw = apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_array_equal(raw, 4095 - np.round(image * 4095))  # stored inverted
    if variant.get("rescale_intercept"):
        assert float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_allclose(read_dicom(path), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("center", [2048.0, 2048.5])
def test_width_one_window_is_a_threshold(tmp_path, center):
    values = np.array([[2046.0, 2047.0, 2048.0, 2049.0, 2050.0]])
    with np.errstate(all="raise"):  # no division by w - 1 == 0
        out = read_dicom(_write(tmp_path / "t.dcm", values / 4095, window=(center, 1.0)))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, _linear_window(values, center, 1.0))
    np.testing.assert_array_equal(out[0], (values[0] > center - 0.5).astype(np.float32))


def test_no_window_tags_gives_min_max_normalisation(tmp_path, image):
    path = _write(tmp_path / "nowin.dcm", image)
    ds = pydicom.dcmread(path)
    del ds.WindowCenter
    del ds.WindowWidth
    ds.save_as(path)
    x = np.round(image * 4095)
    out = read_dicom(path)
    np.testing.assert_allclose(out, (x - x.min()) / (x.max() - x.min()), rtol=0, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_no_window_tags_constant_image_is_zero(tmp_path):
    path = _write(tmp_path / "flat.dcm", np.full((6, 5), 0.3))
    ds = pydicom.dcmread(path)
    del ds.WindowCenter
    del ds.WindowWidth
    ds.save_as(path)
    out = read_dicom(path)
    assert out.shape == (6, 5)
    assert not out.any()


def test_multivalued_window_uses_the_first(tmp_path, image):
    path = _write(tmp_path / "multi.dcm", image)
    ds = pydicom.dcmread(path)
    ds.WindowCenter = [1500, 2048]
    ds.WindowWidth = [1000, 4096]
    ds.save_as(path)
    expected = _linear_window(np.round(image * 4095), 1500.0, 1000.0)
    np.testing.assert_allclose(read_dicom(path), expected, rtol=0, atol=1e-6)


# --- errors ---------------------------------------------------------------------------------------
def test_truncated_file(mono2):
    data = mono2.read_bytes()
    mono2.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError) as info:
        read_dicom(mono2)
    assert str(mono2) in str(info.value)


def test_text_file_named_dcm(tmp_path):
    path = tmp_path / "report.dcm"
    path.write_text("FINDINGS: this is not a DICOM file.\n" * 10)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.dcm"
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_no_pixel_data(mono2):
    ds = pydicom.dcmread(mono2)
    del ds.PixelData
    ds.save_as(mono2)
    with pytest.raises(DicomError, match="PixelData") as info:
        read_dicom(mono2)
    assert str(mono2) in str(info.value)


def test_colour_image_is_rejected(mono2):
    ds = pydicom.dcmread(mono2)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.zeros((H, W, 3), np.uint8).tobytes()
    ds.save_as(mono2)
    with pytest.raises(DicomError, match="SamplesPerPixel=3") as info:
        read_dicom(mono2)
    assert str(mono2) in str(info.value)


@pytest.fixture()
def two_frames(tmp_path, image) -> tuple[Path, Path]:
    """A 2-frame file whose frame 0 is ``image``, and the single-frame file of ``image``."""
    single = _write(tmp_path / "single.dcm", image)
    other = _write(tmp_path / "other.dcm", 1.0 - image)
    ds = pydicom.dcmread(single)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData + pydicom.dcmread(other).PixelData
    multi = tmp_path / "multi.dcm"
    ds.save_as(multi)
    assert pydicom.dcmread(multi).pixel_array.shape == (2, H, W)
    return multi, single


def test_multiframe_first(two_frames):
    multi, single = two_frames
    out = read_dicom(multi, multiframe="first")
    assert out.shape == (H, W)
    np.testing.assert_array_equal(out, read_dicom(single))
    assert read_dicom(multi).shape == (H, W)  # "first" is the default


def test_multiframe_error(two_frames):
    multi, _ = two_frames
    with pytest.raises(DicomError, match="NumberOfFrames=2") as info:
        read_dicom(multi, multiframe="error")
    assert str(multi) in str(info.value)


# --- pydicom's own test files ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_test_files(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    ds = pydicom.dcmread(path)
    out = read_dicom(path)
    assert out.dtype == np.float32
    assert out.shape == (ds.Rows, ds.Columns)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > out.min()  # an actual image, not a constant
    assert np.isfinite(out).all()


# --- MONAI transforms -----------------------------------------------------------------------------
def test_load_dicomd(mono2, image):
    data = {"image": str(mono2), "report": "No edema.", "label": 2}
    out = LoadDicomd("image")(data)
    assert out["image"].shape == (1, H, W)
    assert out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"][0], read_dicom(mono2))
    assert out["report"] == "No edema." and out["label"] == 2
    assert data["image"] == str(mono2)  # the input dict is not modified


def test_load_dicomd_missing_key():
    with pytest.raises(KeyError):
        LoadDicomd("image")({"report": "x"})
    assert LoadDicomd("image", allow_missing_keys=True)({"report": "x"}) == {"report": "x"}


def test_load_dicomd_multiframe_error(two_frames):
    multi, _ = two_frames
    assert LoadDicomd("image")({"image": str(multi)})["image"].shape == (1, H, W)
    with pytest.raises(DicomError):
        LoadDicomd("image", multiframe="error")({"image": str(multi)})


def test_image_transforms(mono2):
    out = image_transforms(16)({"image": str(mono2), "report": "r"})
    img = out["image"]
    assert isinstance(img, torch.Tensor)
    assert tuple(img.shape) == (1, 16, 16)
    assert img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert out["report"] == "r"


def test_image_transforms_constant_image_stays_constant(tmp_path):
    path = _write(tmp_path / "flat.dcm", np.full((H, W), 0.25))
    img = image_transforms(8)({"image": str(path)})["image"]
    assert tuple(img.shape) == (1, 8, 8)
    value = read_dicom(path)[0, 0]
    torch.testing.assert_close(img, torch.full((1, 8, 8), float(value)), rtol=0, atol=1e-6)
