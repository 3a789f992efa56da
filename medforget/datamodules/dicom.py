"""DICOM reading: a file to the image a radiologist sees.

:func:`read_dicom` turns a DICOM file into the image a radiologist sees, in ``[0, 1]``. Grayscale images: Modality LUT
(Rescale Slope/Intercept or Modality LUT Sequence), VOI LUT Sequence or window (Window Center/Width with the LINEAR,
LINEAR_EXACT or SIGMOID VOI LUT Function), and MONOCHROME1 inversion. Colour images (RGB, YBR_FULL, YBR_FULL_422,
YBR_RCT/YBR_ICT, PALETTE COLOR): pydicom's colour conversion to RGB (``as_rgb``, ``convert_color_space``,
``apply_color_lut``) scaled by the stored bit depth; with ``channels=1`` the luminance of ITU-R BT.601
(``0.299 R + 0.587 G + 0.114 B``), with ``channels=3`` the RGB planes (grayscale images repeated three times).
Compressed transfer syntaxes are decoded by pydicom's pixel-data handlers (pylibjpeg with its libjpeg, openjpeg and
rle plugins and pyjpegls are installed with medforget; Pillow, GDCM and pydicom's own RLE decoder are used too): when
none is installed for a file's transfer syntax the error names the file and the packages to install. A file without
a File Meta header (no ``DICM`` prefix) is read as a bare data set (``force=True``) when one is there. Every failure
is a :class:`DicomError` naming the file and the failing element.

:class:`~medforget.datamodules.transforms.LoadDicomd` is the MONAI dictionary transform around it.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")  # three samples per pixel
PALETTE = "PALETTE COLOR"
BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B
CHANNELS = (1, 3)
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
PIP_NAMES = {"gdcm": "python-gdcm"}  # import name in pydicom's dependency list -> pip name
MAX_REASON = 300  # characters of a handler's own error message kept in ours


class DicomError(ValueError):
    """A DICOM file could not be read or holds no usable image; the message names the file."""


def short_error(err: BaseException) -> str:
    """``Type: message`` of an exception on one line, cut to :data:`MAX_REASON` characters."""
    text = " ".join(str(err).split())
    if len(text) > MAX_REASON:
        text = text[: MAX_REASON - 3] + "..."
    return f"{type(err).__name__}: {text}"


def install_hint(missing_dependencies: list[str]) -> str:
    """Turn pydicom's ``missing_dependencies`` strings into ``pip install`` commands.

    Args:
        missing_dependencies: Entries such as ``"pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"``
            (``Decoder.missing_dependencies``).

    Returns:
        For example ``"`pip install pylibjpeg pylibjpeg-libjpeg` (pylibjpeg) or `pip install python-gdcm` (gdcm)"``;
        entries that do not follow pydicom's format are passed through unchanged.
    """
    options = []
    for entry in missing_dependencies:
        plugin, sep, needs = entry.partition(" - requires ")
        if not sep:
            options.append(entry)
            continue
        packages = []
        for requirement in re.split(r",\s*|\s+and\s+", needs):
            name = re.split(r"[<>=!~;\[\s]", requirement.strip(), maxsplit=1)[0]
            if name and name != "numpy":
                packages.append(PIP_NAMES.get(name, name))
        options.append(f"`pip install {' '.join(packages)}` ({plugin.strip()})" if packages else entry)
    return " or ".join(options)


def _decode_error(path: Path, ds: Any, err: Exception) -> DicomError:
    """The :class:`DicomError` for a failure of ``pixel_array``: missing handler, handler failure or bad data."""
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not ts:
        return DicomError(f"{path}: no TransferSyntaxUID (0002,0010) in the file meta, so PixelData cannot be "
                          f"decoded ({short_error(err)})")
    name = ts.name
    if not ts.is_transfer_syntax:
        return DicomError(f"{path}: TransferSyntaxUID {str(ts)!r} is not a known transfer syntax; cannot decode "
                          f"PixelData ({short_error(err)})")
    if ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            return DicomError(f"{path}: PixelData uses transfer syntax {name!r}, which no pydicom pixel-data handler "
                              "can decode")
        hint = install_hint(decoder.missing_dependencies)
        if not decoder.is_available:
            return DicomError(f"{path}: cannot decode PixelData: no pixel-data handler for transfer syntax {name!r} "
                              f"is installed; install one: {hint}")
        tried = ", ".join(decoder.available_plugins)
        more = f"; another handler may decode it: {hint}" if hint else ""
        return DicomError(f"{path}: PixelData ({name}) could not be decoded by the installed handler(s) {tried}: "
                          f"{short_error(err)}; the data may be corrupt{more}")
    return DicomError(f"{path}: PixelData is corrupt or truncated ({short_error(err)})")


def _int_element(ds: Any, path: Path, keyword: str, default: int | None = None) -> int:
    """An integer element of the Image Pixel module, or a :class:`DicomError` naming it."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise DicomError(f"{path}: missing {keyword} element")
        return default
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
    except (TypeError, ValueError) as err:
        raise DicomError(f"{path}: invalid {keyword} {str(value)!r} (not an integer)") from err
    return int(number)


def _float_value(ds: Any, path: Path, keyword: str, default: float | None = None) -> float:
    """A finite decimal element (the first value of a multi-valued one), or a :class:`DicomError` naming it."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise DicomError(f"{path}: missing {keyword} element")
        return default
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            raise DicomError(f"{path}: empty {keyword} element")
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise DicomError(f"{path}: invalid {keyword} {str(value)!r} (not a number)") from err
    if not math.isfinite(number):
        raise DicomError(f"{path}: invalid {keyword} {number} (not finite)")
    return number


def _window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI LUT functions (LINEAR, LINEAR_EXACT, SIGMOID), mapped to ``[0, 1]``."""
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflow saturates to 0, as it should
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    width = max(float(width), 1.0)
    if width == 1.0:  # the linear segment is empty: a threshold at c - 0.5 (dividing by w - 1 gave NaN there)
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _modality(arr: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """Modality LUT: Modality LUT Sequence, else Rescale Slope/Intercept (1 and 0 when absent)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        try:
            return apply_modality_lut(arr, ds).astype(np.float64)
        except Exception as err:
            raise DicomError(f"{path}: invalid ModalityLUTSequence ({short_error(err)})") from err
    slope = _float_value(ds, path, "RescaleSlope", 1.0)
    intercept = _float_value(ds, path, "RescaleIntercept", 0.0)
    return arr.astype(np.float64) * slope + intercept


def _lut_table(item: Any, ds: Any, entries: int) -> np.ndarray:
    """The entries of a LUT item's LUT Data as float64 (US values, or OW words in the dataset's byte order)."""
    data = item.LUTData
    if isinstance(data, bytes):
        little = getattr(ds, "original_encoding", (None, None))[1]
        if little is None:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            little = ts.is_little_endian if ts and ts.is_transfer_syntax else True
        table = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if little else ">u2")
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.float64))
    if len(table) < entries:
        raise ValueError(f"LUTData has {len(table)} entries, LUTDescriptor announces {entries}")
    return table[:entries].astype(np.float64)


def _voi_lut(values: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """First VOI LUT of the VOI LUT Sequence applied to modality values, scaled by its nominal output depth.

    PS3.3 C.11.2.1.1: input values below the first mapped value take the first entry, above the last the last; the
    third LUTDescriptor value ``n`` (8 or 10-16) gives the output range ``[0, 2**n - 1]``, mapped to ``[0, 1]``.
    """
    try:
        item = ds.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 2**16
        if not (bits == 8 or 10 <= bits <= 16):
            raise ValueError(f"LUTDescriptor bits per entry {bits} is not 8 or 10-16")
        if "LUTData" not in item:
            raise ValueError("no LUTData")
        table = _lut_table(item, ds, entries)
    except Exception as err:
        raise DicomError(f"{path}: invalid VOILUTSequence (LUTDescriptor/LUTData) ({short_error(err)})") from err
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.int64)
    return np.clip(table[index] / (2**bits - 1), 0.0, 1.0)


def _display(arr: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """Stored values -> displayed image in ``[0, 1]`` (Modality LUT, VOI LUT or window or min-max, inversion)."""
    values = _modality(arr, ds, path)
    if not np.isfinite(values).all():
        raise DicomError(f"{path}: PixelData holds non-finite values (NaN or infinity)")
    if ds.get("VOILUTSequence"):
        img = _voi_lut(values, ds, path)
    elif ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        center = _float_value(ds, path, "WindowCenter")
        width = _float_value(ds, path, "WindowWidth")
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        if function not in VOI_FUNCTIONS:
            raise DicomError(f"{path}: VOILUTFunction {function!r} is not one of {VOI_FUNCTIONS}")
        if function != "LINEAR" and width <= 0:
            raise DicomError(f"{path}: WindowWidth {width} must be > 0 for VOILUTFunction {function}")
        img = _window(values, center, width, function)
    else:
        lo, hi = float(values.min()), float(values.max())
        img = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        img = 1.0 - img
    return img


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` of an ``(..., 3)`` RGB array (float64)."""
    return rgb.astype(np.float64) @ np.asarray(BT601)


def _read_dataset(path: Path) -> Any:
    """``dcmread``; a file without a File Meta header is read as a bare data set (``force=True``) when it holds one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except FileNotFoundError as err:
        raise DicomError(f"{path}: file not found") from err
    except InvalidDicomError as err:  # no 'DICM' prefix: a bare data set (written without File Meta) or no DICOM
        no_header = err
    except Exception as err:  # EOFError, struct errors, ...: all mean "not readable"
        raise DicomError(f"{path}: not a readable DICOM file ({short_error(err)})") from err
    try:
        with warnings.catch_warnings():  # pydicom warns about every unknown VR of a file that is not DICOM
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            # a real data set starts with known elements; text, JSON or a shifted file parse into unknown tags
            known = [elem.tag for elem in ds if elem.keyword]
    except Exception as err:
        raise DicomError(f"{path}: not a readable DICOM file ({short_error(no_header)}; read without the header: "
                         f"{short_error(err)})") from err
    if not known or ("SOPClassUID" not in ds and "PixelData" not in ds):
        first = next(iter(ds.keys()), None)
        raise DicomError(f"{path}: not a readable DICOM file: no File Meta header ('DICM' prefix) and no valid data "
                         f"set when read without it (first element {first}, not a known DICOM element)")
    return ds


def _transfer_syntax(ds: Any) -> None:
    """Give a data set read without a Transfer Syntax UID (no File Meta, or one without (0002,0010)) the syntax it
    was parsed with, so that its uncompressed Pixel Data can be decoded."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    from pydicom.dataset import FileMetaDataset

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _decode(ds: Any, path: Path) -> tuple[np.ndarray, str]:
    """The first frame, decoded, and its Photometric Interpretation after pydicom's YBR -> RGB conversion."""
    from pydicom.pixels import get_decoder
    from pydicom.pixels.processing import convert_color_space

    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a failing plugin logs its traceback; our error names file and reason
    try:
        ts = ds.file_meta.TransferSyntaxUID
        arr, meta = get_decoder(ts).as_array(ds, index=0, as_rgb=True)
    except Exception as err:
        raise _decode_error(path, ds, err) from err
    finally:
        quiet.setLevel(level)
    photometric = str(meta.get("photometric_interpretation") or ds.PhotometricInterpretation).strip()
    if arr.ndim == 3 and photometric in ("YBR_FULL", "YBR_FULL_422"):  # not converted by the decoder
        arr = convert_color_space(arr, photometric, "RGB")
        photometric = "RGB"
    return arr, photometric


def _colour(arr: np.ndarray, ds: Any, path: Path, photometric: str) -> np.ndarray:
    """Decoded colour pixels -> RGB ``(H, W, 3)`` in ``[0, 1]`` (palette through its LUT, scaled by bit depth)."""
    if photometric == PALETTE:
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as err:
            raise DicomError(f"{path}: invalid palette colour lookup tables ({short_error(err)})") from err
        return rgb.astype(np.float64) / (2**bits - 1)
    if photometric != "RGB" or arr.ndim != 3 or arr.shape[-1] != 3:
        raise DicomError(f"{path}: PhotometricInterpretation={photometric!r} decoded to shape {arr.shape}; expected "
                         "an RGB image (H, W, 3)")
    bits = _int_element(ds, path, "BitsStored", 8)
    return np.clip(arr.astype(np.float64) / (2**bits - 1), 0.0, 1.0)


def read_dicom(path: str | Path, multiframe: Literal["first", "error"] = "first", channels: int = 1) -> np.ndarray:
    """Read a DICOM image as float32 in ``[0, 1]`` (bright = dense), as displayed.

    Args:
        path: DICOM file.
        multiframe: ``"first"`` takes the first frame of a multi-frame image (only that frame is decoded);
            ``"error"`` rejects multi-frame images.
        channels: ``1``: an ``(H, W)`` image; colour images (RGB, YBR, palette) give their ITU-R BT.601 luminance.
            ``3``: ``(3, H, W)`` RGB planes; grayscale images are repeated in the three planes.

    Raises:
        DicomError: naming the file and the failing element (missing file, not DICOM, truncated or corrupt
            PixelData, missing pixel-data handler for a compressed transfer syntax and the package to install,
            unsupported Photometric Interpretation, invalid Rows/NumberOfFrames/window/LUT elements, ...).
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    path = Path(path)
    ds = _read_dataset(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(f"{path}: no PixelData element")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if not photometric:
        raise DicomError(f"{path}: missing PhotometricInterpretation element (no Image Pixel module)")
    samples = _int_element(ds, path, "SamplesPerPixel", 1)
    wanted = 3 if photometric in COLOUR else 1
    if photometric not in (*GRAYSCALE, *COLOUR, PALETTE):
        raise DicomError(f"{path}: PhotometricInterpretation={photometric!r} is not supported (supported: "
                         f"{', '.join((*GRAYSCALE, *COLOUR, PALETTE))})")
    if samples != wanted:
        raise DicomError(f"{path}: SamplesPerPixel={samples} does not match PhotometricInterpretation="
                         f"{photometric!r} ({wanted} expected)")
    for keyword in ("Rows", "Columns"):
        if _int_element(ds, path, keyword) < 1:
            raise DicomError(f"{path}: {keyword}={ds.get(keyword)} (an image needs at least one)")
    frames = _int_element(ds, path, "NumberOfFrames", 1)
    if frames < 1:
        raise DicomError(f"{path}: invalid NumberOfFrames {frames}")
    if frames > 1 and multiframe == "error":
        raise DicomError(f"{path}: NumberOfFrames={frames}; multi-frame images are rejected (multiframe='error')")
    _transfer_syntax(ds)
    arr, decoded = _decode(ds, path)
    if photometric in GRAYSCALE:
        if arr.ndim != 2:
            raise DicomError(f"{path}: expected a 2-D image, got shape {arr.shape}")
        try:
            img = _display(arr, ds, path)
        except DicomError:
            raise
        except Exception as err:  # an unforeseen malformed element: still name the file
            raise DicomError(f"{path}: cannot compute the displayed image ({short_error(err)})") from err
        out = img if channels == 1 else np.repeat(img[None], 3, axis=0)  # (H, W) or (3, H, W)
    else:
        rgb = _colour(arr, ds, path, decoded)  # (H, W, 3)
        out = luminance(rgb) if channels == 1 else np.moveaxis(rgb, -1, 0)
    return np.ascontiguousarray(out, dtype=np.float32)


