"""MONAI dictionary transforms of the images: :class:`LoadDicomd` around
:func:`~medforget.datamodules.dicom.read_dicom`, and :func:`image_transforms`, the deterministic pipeline that
``CacheDataset`` caches, so DICOM decoding is not repeated every epoch."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Literal

import numpy as np
from monai.config import KeysCollection
from monai.transforms import Compose, EnsureTyped, MapTransform, Resized

from medforget.datamodules import keys
from medforget.datamodules.dicom import CHANNELS, DicomError, read_dicom, short_error


class LoadDicomd(MapTransform):
    """MONAI dictionary transform: replace a DICOM path under ``keys`` by a ``(C, H, W)`` float32 array in [0, 1].

    Args:
        keys: Keys holding DICOM file paths.
        multiframe: See :func:`read_dicom`.
        channels: ``C``, 1 (grayscale; colour images as BT.601 luminance) or 3 (RGB); see :func:`read_dicom`.
        on_error: ``"raise"`` raises the :class:`DicomError`; ``"mark"`` stores its message under
            ``f"{key}_error"`` (:data:`medforget.datamodules.keys.IMAGE_ERROR` for ``image``) and a blank ``(C, 1, 1)``
            image, so that a dataset can list every unreadable file at once instead of stopping at the first.
        allow_missing_keys: MONAI's usual flag.
    """

    def __init__(
        self,
        keys: KeysCollection,
        multiframe: Literal["first", "error"] = "first",
        on_error: Literal["raise", "mark"] = "raise",
        allow_missing_keys: bool = False,
        channels: int = 1,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if on_error not in ("raise", "mark"):
            raise ValueError(f"on_error must be 'raise' or 'mark', got {on_error!r}")
        if channels not in CHANNELS:
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.multiframe = multiframe
        self.on_error = on_error
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                img = read_dicom(str(d[key]), self.multiframe, self.channels)
                d[key] = img[None] if img.ndim == 2 else img  # (C, H, W)
            except Exception as caught:  # noqa: BLE001 - pydicom also fails on malformed headers in unforeseen ways
                err = caught if isinstance(caught, DicomError) else DicomError(
                    f"{d[key]}: not a readable DICOM file ({short_error(caught)})")  # e.g. a bit flip in a VR
                if self.on_error == "raise":
                    raise err from (caught.__cause__ if err is caught else caught)
                d[f"{key}_error"] = str(err)
                d[key] = np.zeros((self.channels, 1, 1), np.float32)
        return d


def image_transforms(
    image_size: int,
    multiframe: Literal["first", "error"] = "first",
    on_error: Literal["raise", "mark"] = "raise",
    channels: int = 1,
) -> Compose:
    """Deterministic image pipeline: read + window + invert (+ colour), resize to ``image_size``, plain float tensor.

    Args:
        image_size: Output images are ``(channels, image_size, image_size)``.
        multiframe: See :func:`read_dicom`.
        on_error: See :class:`LoadDicomd` (``"mark"`` puts the error under :data:`keys.IMAGE_ERROR`).
        channels: 1 or 3, see :func:`read_dicom`.
    """
    return Compose(
        [
            LoadDicomd(keys.IMAGE, multiframe=multiframe, on_error=on_error, channels=channels),
            Resized(keys.IMAGE, spatial_size=(image_size, image_size), mode="area"),
            EnsureTyped(keys.IMAGE, track_meta=False),
        ]
    )
