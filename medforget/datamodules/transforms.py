"""DICOM reading and MONAI dictionary transforms.

:func:`read_dicom` turns a DICOM file into the image a radiologist sees, in ``[0, 1]``: Modality LUT (Rescale
Slope/Intercept), VOI LUT or linear window (Window Center/Width), and MONOCHROME1 inversion. :class:`LoadDicomd`
is the MONAI dictionary transform around it; :func:`image_transforms` is the deterministic pipeline that
``CacheDataset`` caches, so DICOM decoding is not repeated every epoch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from monai.config import KeysCollection
from monai.transforms import Compose, EnsureTyped, MapTransform, Resized


class DicomError(ValueError):
    """A DICOM file could not be read or is not a usable single-channel image; the message names the file."""


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI function, mapped to ``[0, 1]``."""
    width = max(float(width), 1.0)
    if width == 1.0:  # the linear segment is empty: a threshold at c - 0.5 (dividing by w - 1 gave NaN there)
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def read_dicom(path: str | Path, multiframe: Literal["first", "error"] = "first") -> np.ndarray:
    """Read a DICOM image as float32 ``(H, W)`` in ``[0, 1]`` (bright = dense), as displayed.

    Args:
        path: DICOM file.
        multiframe: ``"first"`` takes the first frame of a multi-frame image; ``"error"`` rejects it.

    Raises:
        DicomError: naming the file and the failing element (missing pixel data, missing decoder for a compressed
            transfer syntax, truncated file, colour image, ...).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError as err:
        raise DicomError(f"{path}: file not found") from err
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as err:
        raise DicomError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(f"{path}: no PixelData element")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:  # no handler for the transfer syntax
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise DicomError(
            f"{path}: cannot decode PixelData with transfer syntax {name!r}: {err}. "
            "Install a pixel-data handler (e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`)."
        ) from err
    except (ValueError, EOFError, OSError, AttributeError, KeyError) as err:
        raise DicomError(f"{path}: PixelData is corrupt or truncated ({type(err).__name__}: {err})") from err
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if samples != 1:
        raise DicomError(f"{path}: SamplesPerPixel={samples}; only single-channel (grayscale) images are supported")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        if multiframe == "error":
            raise DicomError(f"{path}: NumberOfFrames={frames}; multi-frame images are rejected (multiframe='error')")
        arr = arr[0]
    if arr.ndim != 2:
        raise DicomError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        out = apply_voi_lut(arr if "ModalityLUTSequence" in ds else values, ds, prefer_lut=True)
        img = np.clip(out.astype(np.float64) / (2**bits - 1), 0.0, 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
        width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
        img = _window(values, float(center), float(width))
    else:
        lo, hi = float(values.min()), float(values.max())
        img = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        img = 1.0 - img
    return img.astype(np.float32)


class LoadDicomd(MapTransform):
    """MONAI dictionary transform: replace a DICOM path under ``keys`` by a ``(1, H, W)`` float32 array in [0, 1].

    Args:
        keys: Keys holding DICOM file paths.
        multiframe: See :func:`read_dicom`.
        allow_missing_keys: MONAI's usual flag.
    """

    def __init__(
        self,
        keys: KeysCollection,
        multiframe: Literal["first", "error"] = "first",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.multiframe = multiframe

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_dicom(str(d[key]), self.multiframe)[None]  # (1, H, W)
        return d


def image_transforms(image_size: int, multiframe: Literal["first", "error"] = "first") -> Compose:
    """Deterministic image pipeline: read + window + invert, resize to ``image_size``, plain float tensor."""
    return Compose(
        [
            LoadDicomd("image", multiframe=multiframe),
            Resized("image", spatial_size=(image_size, image_size), mode="area"),
            EnsureTyped("image", track_meta=False),
        ]
    )
