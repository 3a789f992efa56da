"""The decoded-image datasets behind :class:`~medforget.datamodules.dicom_report.DicomReportDataModule`: the disk
cache key, the check that finds unreadable images before training, and the subset that names a bad file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from torch.utils.data import Dataset, Subset

from medforget.datamodules import keys
from medforget.datamodules.dicom import DicomError

MAX_LISTED = 50  # unreadable images named in an error message or log line (all are in the exception / attribute)


class UnreadableImagesError(DicomError):
    """Images of the manifest cannot be read (``on_bad_image="fail"``); ``problems`` names every file and why.

    Args:
        problems: ``{image path: message}``; each message names the file and the failing element.
        total: Number of images checked.
    """

    def __init__(self, problems: dict[str, str], total: int) -> None:
        self.paths = list(problems)
        self.problems = list(problems.values())
        shown = self.problems[:MAX_LISTED]
        more = f"\n  ... and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        super().__init__(
            f"{len(self.problems)} of {total} image(s) cannot be read (data.on_bad_image='skip' leaves them out):\n  "
            + "\n  ".join(shown) + more
        )


def file_state_hash(item: dict) -> bytes:
    """Disk-cache key of an item: the item and its image file's size and modification time, so that a repaired or
    replaced DICOM file is decoded again instead of being served stale from ``cache_dir``."""
    try:
        stat = os.stat(str(item[keys.IMAGE]))
        state: tuple[int, int] | None = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        state = None
    return pickle_hashing({**item, "_image_file_state": state})


def image_error(err: BaseException, path: object) -> str:
    """The message of the :class:`DicomError` behind ``err`` (MONAI wraps transform errors), else a generic one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, DicomError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return f"{path}: cannot be loaded ({type(err).__name__}: {' '.join(str(err).split())[:300]})"


class ImageErrorProbe(Dataset):
    """``None`` or the error message of each item of a MONAI dataset, decoding only what is not cached yet."""

    def __init__(self, dataset: Dataset, items: Sequence[dict]) -> None:
        self.dataset = dataset
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def _cached_on_disk(self, i: int) -> bool:
        ds = self.dataset
        if not isinstance(ds, PersistentDataset) or ds.cache_dir is None:
            return False
        name = ds.hash_func(self.items[i]).decode("utf-8") + ds.transform_hash
        return (Path(ds.cache_dir) / f"{name}.pt").is_file()  # only successfully decoded items are written

    def __getitem__(self, i: int) -> str | None:
        if self._cached_on_disk(i):
            return None
        try:
            item = self.dataset[i]
        except Exception as err:  # any failure of one file is reported, by file
            return image_error(err, self.items[i][keys.IMAGE])
        return item.get(keys.IMAGE_ERROR)


class ImageSubset(Subset):
    """A :class:`~torch.utils.data.Subset` that raises the :class:`DicomError` of an unreadable image (an item that
    ``image_transforms(on_error="mark")`` marked), naming the file, instead of collating a blank image."""

    def __getitem__(self, idx: Any) -> Any:
        item = super().__getitem__(idx)
        if isinstance(item, dict) and keys.IMAGE_ERROR in item:
            raise DicomError(item[keys.IMAGE_ERROR])
        return item

    def __getitems__(self, indices: list[int]) -> list:
        return [self[i] for i in indices]
