"""Colour DICOM (RGB, YBR, palette) with ``channels`` 1 (BT.601 luminance) or 3, files without a File Meta header,
and every file of pydicom's bundled test data: each one with valid pixel data decodes, the corrupt ones are clear
errors naming the file."""

from __future__ import annotations

import collections
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medforget.datamodules.dicom import DicomError, read_dicom
from medforget.datamodules.transforms import LoadDicomd, image_transforms

RNG = np.random.default_rng(7)
RGB8 = RNG.integers(0, 256, size=(6, 5, 3)).astype(np.uint8)


def _bt601(rgb: np.ndarray) -> np.ndarray:
    """Hand-written ITU-R BT.601 luma: 0.299 R + 0.587 G + 0.114 B."""
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _colour_file(path: Path, pixels: np.ndarray, photometric: str, bits: int = 8, **elements) -> Path:
    """An uncompressed colour (3 samples, interleaved) or palette (1 sample) Secondary Capture file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XC"
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --- colour against hand-computed references --------------------------------------------------------------------
def test_rgb_luminance_is_bt601(tmp_path):
    path = _colour_file(tmp_path / "rgb.dcm", RGB8, "RGB")
    out = read_dicom(path)
    assert out.shape == RGB8.shape[:2] and out.dtype == np.float32
    np.testing.assert_allclose(out, _bt601(RGB8) / 255, rtol=0, atol=1e-6)


def test_rgb_three_channels_are_the_planes(tmp_path):
    path = _colour_file(tmp_path / "rgb.dcm", RGB8, "RGB")
    out = read_dicom(path, channels=3)
    assert out.shape == (3, *RGB8.shape[:2])
    np.testing.assert_allclose(out, np.moveaxis(RGB8, -1, 0) / 255, rtol=0, atol=1e-6)


def test_sixteen_bit_rgb_is_scaled_by_its_depth(tmp_path):
    rgb16 = RGB8.astype(np.uint16) * 257  # 8-bit values spread over 16 bits: the same colours
    path = _colour_file(tmp_path / "rgb16.dcm", rgb16, "RGB", bits=16)
    np.testing.assert_allclose(read_dicom(path), _bt601(RGB8) / 255, rtol=0, atol=1e-6)


def test_ybr_full_luminance_is_its_y_plane(tmp_path):
    """YBR_FULL's Y is the BT.601 luma, so after pydicom's YBR -> RGB conversion the luminance gives Y back
    (up to the conversion's rounding to 8 bits)."""
    from pydicom.pixels.processing import convert_color_space

    ybr = convert_color_space(RGB8, "RGB", "YBR_FULL")
    path = _colour_file(tmp_path / "ybr.dcm", ybr, "YBR_FULL")
    np.testing.assert_allclose(read_dicom(path), ybr[..., 0] / 255, rtol=0, atol=2.5 / 255)
    np.testing.assert_allclose(read_dicom(path), _bt601(RGB8) / 255, rtol=0, atol=2.5 / 255)


def test_palette_colour_goes_through_its_lut(tmp_path):
    """8-bit indices into 16-bit red/green/blue LUTs; the display is lut[index] / 65535, then BT.601."""
    lut = RNG.integers(0, 65536, size=(3, 256)).astype(np.uint16)
    index = RNG.integers(0, 256, size=(4, 7)).astype(np.uint8)
    elements = {}
    for colour, table in zip(("Red", "Green", "Blue"), lut, strict=True):
        elements[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        elements[f"{colour}PaletteColorLookupTableData"] = table.tobytes()
    path = _colour_file(tmp_path / "palette.dcm", index, "PALETTE COLOR", **elements)
    rgb = np.moveaxis(lut[:, index], 0, -1) / 65535  # (H, W, 3)
    np.testing.assert_allclose(read_dicom(path), _bt601(rgb), rtol=0, atol=1e-6)
    np.testing.assert_allclose(read_dicom(path, channels=3), np.moveaxis(rgb, -1, 0), rtol=0, atol=1e-6)


def test_grayscale_with_three_channels_repeats_the_display(tmp_path):
    from medforget.datamodules.synthetic import write_dicom

    image = RNG.random((8, 9))
    root = "1.2.826.0.1.3680043.10.1492.9."
    path = tmp_path / "gray.dcm"
    write_dicom(path, image, patient_id="T", study_uid=root + "1", sop_uid=root + "2", series_uid=root + "3")
    gray = read_dicom(path)
    out = read_dicom(path, channels=3)
    assert out.shape == (3, 8, 9)
    for plane in out:
        np.testing.assert_array_equal(plane, gray)


def test_samples_contradicting_photometric_is_named(tmp_path):
    path = _colour_file(tmp_path / "bad.dcm", RGB8[..., 0], "RGB")  # one sample per pixel, RGB announced
    with pytest.raises(DicomError, match=r"SamplesPerPixel=1 does not match PhotometricInterpretation='RGB'") as info:
        read_dicom(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unsupported_photometric_is_named(tmp_path):
    path = _colour_file(tmp_path / "hsv.dcm", RGB8, "HSV")
    with pytest.raises(DicomError, match="PhotometricInterpretation='HSV' is not supported") as info:
        read_dicom(path)
    assert str(info.value).startswith(f"{path}: ")


def test_invalid_channels():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        read_dicom("x.dcm", channels=2)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        LoadDicomd("image", channels=4)


def test_transforms_give_channels_first(tmp_path):
    path = _colour_file(tmp_path / "rgb.dcm", RGB8, "RGB")
    assert tuple(image_transforms(4, channels=3)({"image": str(path)})["image"].shape) == (3, 4, 4)
    out = image_transforms(4, channels=1)({"image": str(path)})["image"]
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 4, 4)
    marked = LoadDicomd("image", on_error="mark", channels=3)({"image": str(tmp_path / "missing.dcm")})
    assert marked["image"].shape == (3, 1, 1) and "file not found" in marked["image_error"]


# --- files without a File Meta header -----------------------------------------------------------------------------
def _bundled(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom (it would need a download)")
    return str(path)


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_file_without_meta_header_is_read(tmp_path, implicit_vr):
    """CT_small written as a bare data set (no preamble, no 'DICM', no File Meta) reads like the original."""
    ds = pydicom.dcmread(_bundled("CT_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)
    path = tmp_path / "bare.dcm"
    path.write_bytes(buffer.getvalue())
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_dicom(path), read_dicom(_bundled("CT_small.dcm")))


@pytest.mark.parametrize("name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"])
def test_bundled_files_without_meta_header_are_parsed(name):
    """Bare RT data sets (no pixels): read with force=True, so the error is about the missing Pixel Data."""
    path = _bundled(name)
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert str(info.value) == f"{path}: no PixelData element"


def test_text_file_is_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("This is a radiology report, not an image.\n" * 20)
    with pytest.raises(DicomError, match="not a readable DICOM file: no File Meta header") as info:
        read_dicom(path)
    assert str(info.value).startswith(f"{path}: ")


# --- every file of pydicom's bundled test data ----------------------------------------------------------------------
#: Bundled files with pixel data that is deliberately corrupt or incomplete (pydicom's test_files/README.txt), and
#: the fragment of the error naming what is wrong.
CORRUPT = {
    "MR_truncated.dcm": "PixelData is corrupt or truncated",
    "JPEG-lossy.dcm": "could not be decoded",  # invalid SOS parameters; JPGExtended.dcm is the fixed version
    "JPEG2000-embedded-sequence-delimiter.dcm": "could not be decoded",  # 4 codestream bytes overwritten
    "badVR.dcm": "invalid NumberOfFrames '1A'",  # an IS value that is not a number
    "no_meta.dcm": "no File Meta header",  # CT_small's data set behind one stray byte of its old File Meta
    "meta_missing_tsyntax.dcm": "missing PhotometricInterpretation",  # Pixel Data without an Image Pixel module
    "nested_priv_SQ.dcm": "missing PhotometricInterpretation",
}


def _bundled_files() -> list[str]:
    from pydicom.data import get_testdata_files

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(str(Path(p).relative_to(root)) for p in get_testdata_files() if os.path.isfile(p)
                  and Path(p).is_relative_to(root))


def _facts(path: str) -> dict[str, str | bool]:
    """What pydicom itself says about a file (independent of our reader): pixel data present, category."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            pixels = "PixelData" in ds
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            return {"pixels": pixels, "modality": str(ds.get("Modality") or "?"),
                    "syntax": ts.name if ts else "(no meta)",
                    "photometric": str(ds.get("PhotometricInterpretation") or "?")}
        except Exception:  # noqa: BLE001 - not parseable at all
            return {"pixels": False, "modality": "?", "syntax": "?", "photometric": "?"}


BUNDLED = _bundled_files()


@pytest.mark.skipif(not BUNDLED, reason="pydicom's test files are not installed with this pydicom")
@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_file(name):
    path = str(Path(pydicom.__file__).parent / "data" / "test_files" / name)
    facts = _facts(path)
    base = Path(name).name
    if base in CORRUPT or not facts["pixels"]:
        with pytest.raises(DicomError) as info:
            read_dicom(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ")
        if base in CORRUPT:
            assert CORRUPT[base] in message
        else:
            assert "no PixelData element" in message or "not a readable DICOM file" in message
        return
    out = read_dicom(path)
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    assert out.shape == (ds.Rows, ds.Columns) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    rgb = read_dicom(path, channels=3)
    assert rgb.shape == (3, ds.Rows, ds.Columns)
    np.testing.assert_allclose(_bt601(np.moveaxis(rgb, 0, -1)), out, rtol=0, atol=1e-5)  # one colour pipeline


def bundled_summary() -> dict[str, collections.Counter]:
    """Counts of decoded / error files by category (modality, transfer syntax, photometric)."""
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in ("modality", "syntax", "photometric")}
    counts["outcome"] = collections.Counter()
    for name in BUNDLED:
        path = str(Path(pydicom.__file__).parent / "data" / "test_files" / name)
        facts = _facts(path)
        try:
            read_dicom(path)
            outcome = "decoded"
        except DicomError:
            outcome = "corrupt pixel data (error)" if Path(name).name in CORRUPT else "no pixel data (error)"
        counts["outcome"][outcome] += 1
        if outcome == "decoded":
            for key in ("modality", "syntax", "photometric"):
                counts[key][facts[key]] += 1
    return counts


@pytest.mark.skipif(not BUNDLED, reason="pydicom's test files are not installed with this pydicom")
def test_bundled_summary(capsys):
    counts = bundled_summary()
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    valid = [name for name in BUNDLED if _facts(str(root / name))["pixels"] and Path(name).name not in CORRUPT]
    assert counts["outcome"]["decoded"] == len(valid)
    with capsys.disabled():
        print(f"\npydicom {pydicom.__version__} bundled test files: {len(BUNDLED)}; " + ", ".join(
            f"{k}: {v}" for k, v in sorted(counts["outcome"].items())))
        for key in ("modality", "syntax", "photometric"):
            print(f"  decoded by {key}: " + ", ".join(f"{k} {v}" for k, v in counts[key].most_common()))


# --- a manifest of colour and grayscale studies through the datamodule ------------------------------------------
def test_mixed_manifest_through_the_datamodule(tmp_path):
    """Colour studies (RGB, YBR JPEG, palette; pydicom's files) beside a grayscale one: channels 1 gives their
    luminance, channels 3 the RGB planes, both resized to (C, 16, 16) batches; the cache holds each decoded once."""
    import pandas as pd

    from medforget.datamodules.dicom_report import DicomReportDataModule

    names = ["SC_rgb_small_odd.dcm", "examples_ybr_color.dcm", "examples_palette.dcm", "CT_small.dcm"]
    rows = []
    for i, name in enumerate(names * 2):
        rows.append({"patient_id": f"P{i}", "study_id": f"S{i}", "image_path": _bundled(name),
                     "report": f"report {i}", "label": i % 4, "split": "train" if i < 6 else "val"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    batches = {}
    for channels in (1, 3):
        dm = DicomReportDataModule(str(manifest), image_size=16, batch_size=8, channels=channels)
        dm.setup()
        batches[channels] = next(iter(dm.part_dataloader("train")))["image"]
        assert batches[channels].shape == (6, channels, 16, 16)
    rgb = batches[3].permute(0, 2, 3, 1).double().numpy()  # (B, 16, 16, 3)
    np.testing.assert_allclose(batches[1][:, 0].double().numpy(), _bt601(rgb), rtol=0, atol=1e-5)
    assert not np.allclose(batches[3][0, 0], batches[3][0, 1])  # a colour study has distinct planes
    np.testing.assert_array_equal(batches[3][3, 0], batches[3][3, 2])  # the CT study is repeated
