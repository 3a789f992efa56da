"""DICOM reading (modality LUT, linear window, MONOCHROME1) and the MONAI transforms around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut

from medforget.datamodules.dicom import DicomError, read_dicom
from medforget.datamodules.synthetic import write_dicom
from medforget.datamodules.transforms import LoadDicomd, image_transforms

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
def _bundled(name: str) -> str:
    """Path of a test file bundled with pydicom; never downloads (``download=False``), skips when absent."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom (it would need a download)")
    return str(path)


def _handler_available(path: str) -> bool:
    from pydicom.pixels import get_decoder

    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    return not ts.is_compressed or get_decoder(ts).is_available


def _assert_missing_handler_error(path: str) -> None:
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "`pip install " in message  # names the package(s) to install


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_test_files(name):
    path = _bundled(name)
    ds = pydicom.dcmread(path)
    out = read_dicom(path)
    assert out.dtype == np.float32
    assert out.shape == (ds.Rows, ds.Columns)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() > out.min()  # an actual image, not a constant
    assert np.isfinite(out).all()


def test_bundled_mr_small_window_by_hand():
    """MR_small: no rescale, Window Center 600 / Width 1600 (PS3.3 linear window)."""
    path = _bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    expected = _linear_window(ds.pixel_array.astype(np.float64), 600.0, 1600.0)
    np.testing.assert_allclose(read_dicom(path), expected, rtol=0, atol=1e-6)


def test_bundled_ct_small_min_max_of_rescaled_values():
    """CT_small: Rescale Intercept -1024 and no window tags, so the displayed image is min-max of the HU values."""
    path = _bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024.0
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(read_dicom(path), (hu - hu.min()) / (hu.max() - hu.min()), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE Lossless: pydicom's own decoder (or pylibjpeg-rle)
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless: Pillow, pylibjpeg-openjpeg or GDCM
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless: pyjpegls, pylibjpeg-libjpeg or GDCM
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_bundled_lossless_encodings_of_mr_small(name):
    """Every lossless encoding of MR_small displays exactly like the uncompressed file, or -- for a compressed
    syntax whose handler is not installed -- fails with the file's name and the packages to install."""
    path = _bundled(name)
    if not _handler_available(path):
        _assert_missing_handler_error(path)
        return
    np.testing.assert_array_equal(read_dicom(path), read_dicom(_bundled("MR_small.dcm")))


def test_bundled_jpeg2000_ct_rescale_and_window():
    """693_J2KI: JPEG 2000 CT with Rescale Intercept -1024 and a 40/100 soft-tissue window."""
    path = _bundled("693_J2KI.dcm")
    if not _handler_available(path):
        _assert_missing_handler_error(path)
        return
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth), float(ds.RescaleIntercept)) == (40.0, 100.0, -1024.0)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) - 1024.0
    out = read_dicom(path)
    np.testing.assert_allclose(out, _linear_window(hu, 40.0, 100.0), rtol=0, atol=1e-6)
    assert 0.0 < (out == 0.0).mean() < 1.0 and 0.0 < (out == 1.0).mean() < 1.0  # the narrow window clips both ends


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm"])
def test_bundled_lossy_and_12_bit_jpeg(name):
    """12-bit JPEG Extended (Pillow cannot decode it: pylibjpeg-libjpeg, a default dependency, can) and JPEG 2000
    (pylibjpeg-openjpeg). JPEG-lossy.dcm, the broken original of JPGExtended.dcm, is among the corrupt files of
    test_dicom_colour.py."""
    path = _bundled(name)
    out = read_dicom(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert out.shape == (ds.Rows, ds.Columns)
    assert out.min() == 0.0 and out.max() == 1.0  # no window tags: min-max
    assert np.isfinite(out).all()
    frame = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(out, (frame - frame.min()) / (frame.max() - frame.min()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm"])
def test_bundled_multiframe(name):
    """rtdose: 15 frames of 10x10 (uncompressed and RLE); ``first`` reads frame 0 (min-max), ``error`` rejects."""
    path = _bundled(name)
    ds = pydicom.dcmread(_bundled("rtdose.dcm"))
    assert int(ds.NumberOfFrames) == 15
    frame = ds.pixel_array[0].astype(np.float64)
    np.testing.assert_allclose(read_dicom(path, multiframe="first"),
                               (frame - frame.min()) / (frame.max() - frame.min()), rtol=0, atol=1e-6)
    with pytest.raises(DicomError, match="NumberOfFrames=15") as info:
        read_dicom(path, multiframe="error")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("MR_truncated.dcm", "PixelData is corrupt or truncated"),
        ("badVR.dcm", "invalid NumberOfFrames '1A'"),
        ("no_meta.dcm", "not a readable DICOM file: no File Meta header"),
        ("rtplan_truncated.dcm", "no PixelData element"),
    ],
)
def test_bundled_bad_files_name_the_file_and_element(name, fragment):
    path = _bundled(name)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


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


# --- hand-built files: every display step against hand-computed values ---------------------------
def _custom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> Path:
    """An uncompressed 16-bit grayscale file of ``stored`` values (signed if any is negative) plus ``elements``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    stored = np.asarray(stored)
    signed = bool((stored < 0).any())
    frames = stored.shape[0] if stored.ndim == 3 else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.array([[0, 10, 20], [30, 40, 50]])


def test_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 1000, 2000], [3000, 4000, 4095]])
    mono2 = read_dicom(_custom(tmp_path / "m2.dcm", stored))
    mono1 = read_dicom(_custom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono2, stored / 4095, rtol=0, atol=1e-6)  # min-max: 0 -> 0, 4095 -> 1
    np.testing.assert_allclose(mono1, 1.0 - stored / 4095, rtol=0, atol=1e-6)
    assert mono1[0, 0] == 1.0 and mono1[1, 2] == 0.0  # the lowest stored value is the brightest pixel


def test_monochrome1_windowed_is_inverted_after_the_window(tmp_path):
    # window c=25.5, w=21: 15 -> 0, 35 -> 1 in between linear; MONOCHROME1 then flips the windowed result
    path = _custom(tmp_path / "m1w.dcm", STORED, photometric="MONOCHROME1", WindowCenter=25.5, WindowWidth=21)
    windowed = np.array([[0.0, 0.0, (20 - 25) / 20 + 0.5], [(30 - 25) / 20 + 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(read_dicom(path), 1.0 - windowed, rtol=0, atol=1e-6)


def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path):
    # modality values 2.5 * stored - 20 = [[-20, 5, 30], [55, 80, 105]]; window c=40.5 w=51: y = (x - 40) / 50 + 0.5
    path = _custom(tmp_path / "rescale.dcm", STORED, RescaleSlope=2.5, RescaleIntercept=-20, WindowCenter=40.5,
                   WindowWidth=51)
    expected = np.array([[0.0, 0.0, 0.3], [0.8, 1.0, 1.0]])
    np.testing.assert_allclose(read_dicom(path), expected, rtol=0, atol=1e-6)
    ignored = np.clip((STORED - 40) / 50 + 0.5, 0, 1)  # what a reader that skipped the rescale would show
    assert not np.allclose(read_dicom(path), ignored, atol=0.05)


def test_signed_pixels_with_intercept(tmp_path):
    stored = np.array([[-1000, -500], [0, 1000]])  # CT-like signed stored values, HU = stored - 24
    path = _custom(tmp_path / "signed.dcm", stored, RescaleSlope=1, RescaleIntercept=-24, WindowCenter=-23.5,
                   WindowWidth=1001)  # y = (HU + 24) / 1000 + 0.5
    np.testing.assert_allclose(read_dicom(path), [[0.0, 0.0], [0.5, 1.0]], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # LINEAR_EXACT: y = (x - c) / w + 0.5 with c=25, w=20
        ("LINEAR_EXACT", [[0.0, 0.0, 0.25], [0.75, 1.0, 1.0]]),
        # SIGMOID: y = 1 / (1 + exp(-4 (x - c) / w)) with c=25, w=20
        ("SIGMOID", 1.0 / (1.0 + np.exp(-4.0 * (STORED - 25.0) / 20.0))),
    ],
)
def test_voi_lut_functions(tmp_path, function, expected):
    path = _custom(tmp_path / "fn.dcm", STORED, WindowCenter=25, WindowWidth=20, VOILUTFunction=function)
    np.testing.assert_allclose(read_dicom(path), expected, rtol=0, atol=1e-6)


def test_unknown_voi_lut_function_is_named(tmp_path):
    path = _custom(tmp_path / "cubic.dcm", STORED, WindowCenter=25, WindowWidth=20, VOILUTFunction="CUBIC")
    with pytest.raises(DicomError, match="VOILUTFunction 'CUBIC'") as info:
        read_dicom(path)
    assert str(path) in str(info.value)


def _voi_lut_item(descriptor: list[int], data: list[int], vr: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new("LUTDescriptor", "US", descriptor)
    if vr == "OW":
        item.add_new("LUTData", "OW", np.asarray(data, "<u2").tobytes())
    else:
        item.add_new("LUTData", "US", data)
    return item


@pytest.mark.parametrize("vr", ["US", "OW"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_voi_lut_sequence(tmp_path, vr, photometric):
    """4-entry 8-bit LUT from input 10: [0, 50, 200, 255]; applied to modality values (stored - 5), preferred over
    the window; values below 10 take the first entry, above 13 the last."""
    from pydicom.sequence import Sequence

    stored = np.array([[5, 15], [16, 17], [18, 40]])  # modality values [[0, 10], [11, 12], [13, 35]]
    path = _custom(tmp_path / "voilut.dcm", stored, photometric=photometric, RescaleSlope=1, RescaleIntercept=-5,
                   WindowCenter=1000, WindowWidth=10,
                   VOILUTSequence=Sequence([_voi_lut_item([4, 10, 8], [0, 50, 200, 255], vr)]))
    expected = np.array([[0, 0], [50, 200], [255, 255]]) / 255
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(read_dicom(path), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("voi", ["window", "lut"])
def test_modality_lut_sequence_feeds_the_voi_step(tmp_path, voi):
    """Modality LUT [100, 110, 120, 130] over stored 0..3; the window / VOI LUT sees those values, not 0..3."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    modality = Dataset()
    modality.add_new("LUTDescriptor", "US", [4, 0, 16])
    modality.add_new("LUTData", "US", [100, 110, 120, 130])
    modality.ModalityLUTType = "US"
    if voi == "window":  # c=115.5, w=31: y = (x - 115) / 30 + 0.5
        elements = {"WindowCenter": 115.5, "WindowWidth": 31}
        expected = [[0.0, 1 / 3], [2 / 3, 1.0]]
    else:  # 8-bit VOI LUT from input 110: [7, 255]; 100 is below its first input
        elements = {"VOILUTSequence": Sequence([_voi_lut_item([2, 110, 8], [7, 255], "US")])}
        expected = [[7 / 255, 7 / 255], [1.0, 1.0]]
    path = _custom(tmp_path / "mlut.dcm", np.array([[0, 1], [2, 3]]), ModalityLUTSequence=Sequence([modality]),
                   **elements)
    np.testing.assert_allclose(read_dicom(path), expected, rtol=0, atol=1e-6)


def test_voi_lut_with_more_entries_than_its_output_depth(tmp_path):
    """An 8-bit LUT of 300 entries: inputs past 255 must not wrap around to the start of the table."""
    from pydicom.sequence import Sequence

    table = [min(255, i) for i in range(300)]  # identity up to 255, then flat
    stored = np.array([[10, 200], [280, 299]])
    path = _custom(tmp_path / "long.dcm", stored, VOILUTSequence=Sequence([_voi_lut_item([300, 0, 8], table, "US")]))
    np.testing.assert_allclose(read_dicom(path), [[10 / 255, 200 / 255], [1.0, 1.0]], rtol=0, atol=1e-6)


def test_voi_lut_sequence_shorter_than_its_descriptor_is_named(tmp_path):
    from pydicom.sequence import Sequence

    path = _custom(tmp_path / "short.dcm", STORED, VOILUTSequence=Sequence([_voi_lut_item([4, 0, 8], [0, 1], "US")]))
    with pytest.raises(DicomError, match="VOILUTSequence") as info:
        read_dicom(path)
    assert str(path) in str(info.value)


def test_multiframe_first_frame_by_hand(tmp_path):
    frames = np.stack([STORED, 50 - STORED, STORED * 2])
    path = _custom(tmp_path / "frames.dcm", frames, WindowCenter=25.5, WindowWidth=51)  # y = (x - 25) / 50 + 0.5
    np.testing.assert_allclose(read_dicom(path, multiframe="first"), STORED / 50, rtol=0, atol=1e-6)
    with pytest.raises(DicomError, match="NumberOfFrames=3") as info:
        read_dicom(path, multiframe="error")
    assert str(path) in str(info.value)


def test_invalid_number_of_frames_is_named(tmp_path):
    path = _custom(tmp_path / "nf.dcm", STORED)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 0
    ds.save_as(path)
    with pytest.raises(DicomError, match="NumberOfFrames") as info:
        read_dicom(path)
    assert str(path) in str(info.value)


# --- compressed transfer syntaxes: decoded by an installed handler, or a clear error ----------------------------
def _rle(tmp_path: Path, stored: np.ndarray, **elements) -> tuple[Path, Path]:
    """An RLE Lossless file (pydicom's own encoder) and the uncompressed file it was made from."""
    from pydicom.uid import RLELossless

    plain = _custom(tmp_path / "plain.dcm", stored, **elements)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle)
    return rle, plain


def test_rle_generated_file_decodes_like_the_uncompressed_one(tmp_path):
    frames = np.stack([STORED, 50 - STORED])
    rle, plain = _rle(tmp_path, frames, WindowCenter=25.5, WindowWidth=51)
    assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_dicom(rle), read_dicom(plain))  # first frame, through the RLE handler
    np.testing.assert_allclose(read_dicom(rle), STORED / 50, rtol=0, atol=1e-6)


def test_missing_handler_names_the_file_and_the_package(tmp_path, monkeypatch):
    """Simulate an environment without any RLE handler (pydicom's own one removed)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import RLELossless

    rle, _ = _rle(tmp_path, STORED)
    decoder = get_decoder(RLELossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})
    with pytest.raises(DicomError) as info:
        read_dicom(rle)
    message = str(info.value)
    assert message.startswith(f"{rle}: ")
    assert "no pixel-data handler for transfer syntax 'RLE Lossless' is installed" in message
    assert "`pip install pylibjpeg pylibjpeg-rle`" in message


def test_handler_failure_on_corrupt_data_names_the_file(tmp_path):
    rle, _ = _rle(tmp_path, STORED)
    ds = pydicom.dcmread(rle)
    ds.PixelData = ds.PixelData[:40]  # cut into the RLE header of the only fragment
    ds.save_as(rle)
    with pytest.raises(DicomError) as info:
        read_dicom(rle)
    message = str(info.value)
    assert message.startswith(f"{rle}: ")
    assert "PixelData (RLE Lossless) could not be decoded by the installed handler(s)" in message
    assert "corrupt" in message


def test_install_hint():
    from medforget.datamodules.dicom import install_hint

    missing = ["gdcm - requires gdcm>=3.0.10", "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1",
               "pyjpegls - requires numpy and pyjpegls>=1.2"]
    assert install_hint(missing) == (
        "`pip install python-gdcm` (gdcm) or `pip install pylibjpeg pylibjpeg-libjpeg` (pylibjpeg) or "
        "`pip install pyjpegls` (pyjpegls)"
    )
    assert install_hint(["x - requires a, b and c>=1"]) == "`pip install a b c` (x)"
    assert install_hint(["odd entry"]) == "odd entry"
    assert install_hint([]) == ""
