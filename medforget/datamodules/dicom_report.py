"""DataModule over a manifest of DICOM images + radiology reports (train / unlearn / evaluate modes)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import CombinedLoader
from monai.data import CacheDataset, PersistentDataset
from monai.data.utils import pickle_hashing
from torch.utils.data import DataLoader, Dataset, Subset

from medforget.core.console import interactive
from medforget.datamodules import keys
from medforget.datamodules.image_cache import (
    MAX_LISTED,
    ImageErrorProbe,
    ImageSubset,
    UnreadableImagesError,
    file_state_hash,
)
from medforget.datamodules.manifest import load_manifest, manifest_hash
from medforget.datamodules.sampling import (
    MAX_EVAL_PATIENTS,
    POOL_FACTOR,
    RETAIN_PER_FORGET,
    EpochSubsetSampler,
    default_retain_per_epoch,
    default_selection_val_studies,
    patient_pool,
    patient_sample,
)
from medforget.datamodules.splits import assign_splits, resolve_forget, selection_patients
from medforget.datamodules.transforms import image_transforms

Mode = Literal["train", "unlearn", "evaluate"]
RETAIN_SAMPLE_MIN = 8  # patients in the retain sample scored for checkpoint selection (at least)
PROBE_BATCH = 64
PROGRESS_MIN_ITEMS = 200  # MONAI's caching progress bar for more images than this (on a terminal only)
log = logging.getLogger(__name__)


def _items(df: pd.DataFrame, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
    """The dataset items (image path, report, label, identifiers, manifest row) of manifest ``rows``."""
    rows = [int(r) for r in rows]
    part = df.loc[rows, ["image_path", "report", "label", "patient_id", "study_id"]]  # one lookup, not one per cell
    return [
        {keys.IMAGE: image, keys.REPORT: report, keys.LABEL: int(label), keys.PATIENT_ID: patient,
         keys.STUDY_ID: study, keys.INDEX: r}
        for r, image, report, label, patient, study in zip(rows, *(part[c].tolist() for c in part.columns),
                                                           strict=True)
    ]


def default_synthetic_manifest() -> Path:
    """The embedded default: a synthetic hospital generated once under ``$MEDFORGET_CACHE`` (``~/.cache/medforget``)."""
    from dataclasses import asdict

    from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital

    cfg = SyntheticConfig()
    tag = hashlib.sha256(repr(sorted(asdict(cfg).items())).encode()).hexdigest()[:10]
    root = Path(os.environ.get("MEDFORGET_CACHE", Path.home() / ".cache" / "medforget")) / f"synthetic-{tag}"
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        generate_hospital(root, cfg, overwrite=True)
    return manifest


class DicomReportDataModule(L.LightningDataModule):
    """Images + reports from a manifest, split by patient.

    Batches are dicts (see :mod:`medforget.datamodules.keys`): ``image`` (B, C, H, W) in [0, 1], ``report`` (raw
    text; the model's system tokenizes it with its own tokenizer), ``label``, ``patient_id``, ``study_id``, ``index``.

    Args:
        manifest: Manifest CSV/Parquet. ``None`` uses the embedded synthetic hospital (generated once, offline).
        mode: ``train`` (train/val loaders), ``unlearn`` (``{"forget", "retain"}`` training batches) or
            ``evaluate`` (forget / retain / test / val loaders from :meth:`evaluation_dataloaders`).
        forget: Forget request (file of patient IDs). Required for ``unlearn``; optional for ``evaluate``.
        exclude_patients: Patient-ID file removed from the training split (the retrained reference).
        num_classes: Labels must lie in ``[0, num_classes)``.
        image_size: Images are resized to ``image_size x image_size``.
        channels: Image channels ``C``: ``1`` (grayscale; colour images -- RGB, YBR, palette -- become their ITU-R
            BT.601 luminance) or ``3`` (RGB; grayscale images are repeated in the three planes), for encoders that
            take three channels (e.g. ImageNet weights). The model records it (``image_channels``) and refuses data
            read with another value.
        batch_size: Batch size (retain / train / evaluation).
        forget_batch_size: Batch size of forget batches in ``unlearn`` mode (default: ``batch_size``).
        unlearn_epoch: What one ``unlearn``-mode epoch is: a pass over the ``retain`` patients (the forget loader
            cycles alongside) or over the ``forget`` patients (each forget batch paired with a fresh retain batch,
            as in Forget-MI; much shorter, so validation and checkpoint selection happen more often).
        val_fraction: Fraction of patients in the validation split (when the manifest has no ``split`` column).
        test_fraction: Fraction of patients in the test split (when the manifest has no ``split`` column).
        seed: Seed of the patient-level split and of shuffling.
        num_workers: DataLoader workers.
        cache_rate: Fraction of decoded images kept in memory (MONAI ``CacheDataset``).
        cache_dir: If set, decoded images are cached on disk instead (MONAI ``PersistentDataset``).
        multiframe: ``first`` frame of multi-frame DICOMs, or ``error``.
        on_bad_image: What to do with images that cannot be read (corrupt or truncated DICOM, pixel data no installed
            handler can decode, colour images, multi-frame images with ``multiframe: error``, ...). Every image is
            decoded once at :meth:`setup` (the decoded images fill the cache, or are already in ``cache_dir``), so
            these are found before training instead of mid-epoch in a DataLoader worker. ``fail`` raises one
            :class:`UnreadableImagesError` listing every such file and the element at fault; ``skip`` leaves their
            rows out of every part, logs their manifest row numbers (not paths, which often contain patient IDs; no
            report text) and lists their paths in :attr:`skipped_images`.
        selection_fraction: Share of the forget patients (seeded, at least one; see
            :func:`~medforget.datamodules.splits.selection_patients`) that ``unlearn``-mode checkpoint selection may
            score; in ``evaluate`` mode they are left out of the ``forget`` part, so the audit never scores what
            selection saw. 0: selection uses the retain sample and val patients only (needed for requests of fewer
            than 3 patients). The audit takes it from the unlearned checkpoint.
        bounded: Read, decode and score only a bounded part of the hospital, so that unlearning and auditing cost the
            same whatever its size: in ``unlearn`` mode the forget patients, a seeded retain pool
            (``retain_pool``) and at most ``max_eval_patients`` val patients, each epoch a fresh seeded draw of
            ``retain_per_epoch`` retain studies from the pool (an epoch's steps are set by the forget request, not
            by the hospital); in ``evaluate`` mode seeded samples of at most ``max_eval_patients`` retain, val and
            test patients (the audit's ``audit.json`` records the sample sizes under ``data.sampling``). ``False``:
            every retain, val and test study (each unlearning epoch a pass over every retain study).
        retain_per_epoch: Retain studies per ``unlearn``-mode epoch (``bounded``); default
            ``max(retain_per_forget x forget studies, 256)``.
        retain_per_forget: Retain studies per forget study in each ``unlearn``-mode epoch when ``retain_per_epoch``
            is not given (``bounded``); default 8. A ratio, so one setting fits requests of any size: fewer retain
            studies make an epoch (and the retain pool decoded for it) cheaper, at the cost of fewer retain
            gradient steps per forget step.
        retain_pool: Retain studies decoded and cached in ``unlearn`` mode (``bounded``): whole patients in a seeded
            order until the pool holds this many; default ``2 x retain_per_epoch``. Methods that estimate statistics
            over the retain set (Fisher information, SSD's importances, SalUn's saliency) estimate them on the pool.
        max_eval_patients: Patients per part (retain, val, test) that the audit scores (``bounded``); seeded samples,
            drawn by patient. ``None``: all.
        selection_val_studies: Val studies scored after every ``unlearn``-mode epoch for checkpoint selection
            (``bounded``; whole patients in a seeded order until this many); default ``max(4 x forget studies,
            128)``. With these defaults every bound is set by the forget request: an unlearning run reads about the
            same in a hospital of 300 patients as in one of 3,000.

    Attributes:
        read_val: Whether a bounded ``unlearn``-mode setup reads (decodes) the val sample; ``True`` unless set before
            :meth:`setup`. ``medforget unlearn`` sets it ``False`` when nothing would read it: no validation
            (``--trainer.limit_val_batches 0``) and a method that does not read the val part itself
            (``UnlearningMethod.reads_val``).
    """

    def __init__(
        self,
        manifest: str | None = None,
        mode: Mode = "train",
        forget: str | None = None,
        exclude_patients: str | None = None,
        num_classes: int = 4,
        image_size: int = 64,
        channels: Literal[1, 3] = 1,
        batch_size: int = 32,
        forget_batch_size: int | None = None,
        unlearn_epoch: Literal["retain", "forget"] = "retain",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        cache_dir: str | None = None,
        multiframe: Literal["first", "error"] = "first",
        on_bad_image: Literal["fail", "skip"] = "fail",
        selection_fraction: float = 0.25,
        bounded: bool = True,
        retain_per_epoch: int | None = None,
        retain_per_forget: int = RETAIN_PER_FORGET,
        retain_pool: int | None = None,
        max_eval_patients: int | None = MAX_EVAL_PATIENTS,
        selection_val_studies: int | None = None,
    ) -> None:
        super().__init__()
        if mode == "unlearn" and forget is None:
            raise ValueError("data.mode='unlearn' needs a forget request (data.forget / --forget)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.manifest = manifest
        self.mode = mode
        self.forget = forget
        self.exclude_patients = exclude_patients
        self.num_classes = num_classes
        self.image_size = image_size
        if channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {channels!r}")
        self.channels = channels
        self.batch_size = batch_size
        self.forget_batch_size = forget_batch_size or batch_size
        if unlearn_epoch not in ("retain", "forget"):
            raise ValueError(f"data.unlearn_epoch must be 'retain' or 'forget', got {unlearn_epoch!r}")
        self.unlearn_epoch = unlearn_epoch
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.cache_rate = cache_rate
        self.cache_dir = cache_dir
        if multiframe not in ("first", "error"):
            raise ValueError(f"data.multiframe must be 'first' or 'error', got {multiframe!r}")
        self.multiframe = multiframe
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"data.on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        if not 0.0 <= selection_fraction < 1.0:
            raise ValueError(f"--data.selection_fraction must lie in [0, 1), got {selection_fraction}")
        self.selection_fraction = selection_fraction
        for flag, value in (("retain_per_epoch", retain_per_epoch), ("retain_per_forget", retain_per_forget),
                            ("retain_pool", retain_pool),
                            ("max_eval_patients", max_eval_patients),
                            ("selection_val_studies", selection_val_studies)):
            if value is not None and value < 1:
                raise ValueError(f"--data.{flag} must be >= 1 (or null for the default), got {value}")
        self.bounded = bool(bounded)
        self.retain_per_epoch = retain_per_epoch
        self.retain_per_forget = int(retain_per_forget)
        self.retain_pool = retain_pool
        self.max_eval_patients = max_eval_patients
        self.selection_val_studies = selection_val_studies
        self.population: dict[str, np.ndarray] = {}
        self.read_val = True
        self._epoch_retain: int | None = None
        self.skipped_images: list[str] = []
        self.df: pd.DataFrame | None = None
        self.indices: dict[str, np.ndarray] = {}
        self._dataset: Dataset | None = None
        self._position: dict[int, int] = {}

    # --- setup --------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.manifest is None:
            default_synthetic_manifest()

    def setup(self, stage: str | None = None) -> None:
        if self.df is not None:
            return
        manifest = Path(self.manifest) if self.manifest is not None else default_synthetic_manifest()
        self.manifest_path = manifest
        df = load_manifest(manifest, self.num_classes)
        df["split"] = assign_splits(df, self.val_fraction, self.test_fraction, self.seed).to_numpy()
        split = df["split"].to_numpy()
        idx = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
        self.split_fingerprint = hashlib.sha256(
            "\n".join(sorted(set(df.loc[idx["train"], "patient_id"]))).encode()
        ).hexdigest()[:16]
        if self.exclude_patients is not None:
            excluded = resolve_forget(self.exclude_patients, df["split"], df["patient_id"])
            idx["excluded"] = excluded
            idx["train"] = np.setdiff1d(idx["train"], excluded)
        if self.forget is not None:
            idx["forget"] = resolve_forget(self.forget, df["split"], df["patient_id"])
            idx["retain"] = np.setdiff1d(idx["train"], idx["forget"])
            chosen = selection_patients(df.loc[idx["forget"], "patient_id"], self.selection_fraction, self.seed)
            in_selection = np.isin(df.loc[idx["forget"], "patient_id"].astype(str).to_numpy(), chosen)
            idx[keys.FORGET_SELECTION] = idx["forget"][in_selection]
            if self.mode == "evaluate":  # the audit never scores what checkpoint selection saw
                idx["forget"] = idx["forget"][~in_selection]
        self._check_parts(manifest, idx)  # before decoding any image
        self.population = {name: rows.copy() for name, rows in idx.items()}  # every row of each part (not decoded)
        if self.bounded:
            idx = self._bounded(df, idx)
        needed = {
            "train": ("train", "val", "test"),
            "unlearn": ("forget", "retain", "val"),  # forget_selection is a subset of forget
            "evaluate": ("forget", "retain", "val", "test") if "forget" in idx else ("train", "val", "test"),
        }[self.mode]
        rows = np.unique(np.concatenate([idx[k] for k in needed if k in idx]))
        items = _items(df, rows)
        transform = image_transforms(self.image_size, self.multiframe, channels=self.channels)
        if self.cache_dir is not None:
            # hash_transform: the cache key covers image_size/multiframe/channels (no stale images after a change);
            # the item hash covers the file's size and mtime. Errors are raised, so only readable images are written.
            dataset: Dataset = PersistentDataset(items, transform, cache_dir=self.cache_dir,
                                                 hash_func=file_state_hash, hash_transform=pickle_hashing)
        else:  # unreadable images are cached as marked items (a crash would abort the whole cache fill)
            transform = image_transforms(self.image_size, self.multiframe, on_error="mark", channels=self.channels)
            # MONAI's "Loading dataset" bar only on a terminal: in a log file it is hundreds of carriage returns
            bar = len(items) > PROGRESS_MIN_ITEMS and interactive()
            if len(items) > PROGRESS_MIN_ITEMS and not bar and self.cache_rate > 0:
                print(f"decoding and caching {len(items)} images", file=sys.stderr, flush=True)  # one line, no bar
            dataset = CacheDataset(items, transform, cache_rate=self.cache_rate, num_workers=None, progress=bar)
        bad = self._unreadable_images(dataset, items)
        if bad:
            paths = {str(items[p][keys.IMAGE]): message for p, message in bad.items()}
            if self.on_bad_image == "fail":
                raise UnreadableImagesError(paths, len(items))
            self.skipped_images = sorted(paths)
            dropped = rows[sorted(bad)]
            # the log names manifest rows, not paths: hospital paths often contain patient identifiers
            numbers = [str(int(r) + 1) for r in dropped[:MAX_LISTED]]
            more = f" ... and {len(dropped) - MAX_LISTED} more" if len(dropped) > MAX_LISTED else ""
            log.warning("skipping %d of %d image(s) that cannot be read (data.on_bad_image='skip'): manifest rows "
                        "%s%s (1-based, header not counted); their paths are in skipped_images",
                        len(dropped), len(items), ", ".join(numbers), more)
            idx = {name: np.setdiff1d(part, dropped) for name, part in idx.items()}
            self._check_parts(manifest, idx, after_skipping=True)
        if "forget" in idx:
            idx[keys.RETAIN_SAMPLE] = self._retain_sample(df, idx["retain"], idx["forget"])
            if not len(idx[keys.FORGET_SELECTION]):
                del idx[keys.FORGET_SELECTION]
        self._position = {int(r): p for p, r in enumerate(rows)}
        self._dataset = dataset
        self.indices = idx
        self.df = df  # last: a failed setup is not mistaken for a finished one

    def _bounded(self, df: pd.DataFrame, idx: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The parts a bounded run reads (see ``bounded``): seeded samples by patient, drawn before any decoding."""
        idx = dict(idx)
        patients = df["patient_id"]
        if self.mode == "unlearn":
            self._epoch_retain = self.retain_per_epoch or default_retain_per_epoch(len(idx["forget"]),
                                                                                   self.retain_per_forget)
            pool = self.retain_pool or POOL_FACTOR * self._epoch_retain
            idx["retain"] = patient_pool(patients, idx["retain"], pool, self.seed, "unlearn:retain-pool")
            if self.read_val:
                n_val = self.selection_val_studies or default_selection_val_studies(len(idx["forget"]))
                idx["val"] = patient_pool(patients, idx["val"], n_val, self.seed, "unlearn:val")
            else:  # nothing reads it (no validation, a method that does not read val): not decoded
                idx["val"] = idx["val"][:0]
        elif self.mode == "evaluate":
            for part in ("retain", "val", "test") if "forget" in idx else ("train", "val", "test"):
                idx[part] = patient_sample(patients, idx[part], self.max_eval_patients, self.seed, f"audit:{part}")
        return idx

    def sampling(self) -> dict[str, Any]:
        """What this run reads of each part: patients and studies read, out of how many (counts only), and the
        bounds in force -- what the audit records as ``data.sampling``."""
        if self.df is None:
            self.setup()
        parts = {}
        for name, rows in self.indices.items():
            everything = self.population.get(name, rows)
            parts[name] = {"patients": int(self.df.loc[rows, "patient_id"].nunique()), "studies": len(rows),
                           "of_patients": int(self.df.loc[everything, "patient_id"].nunique()),
                           "of_studies": len(everything)}
        out: dict[str, Any] = {"bounded": self.bounded, "parts": parts}
        if self.bounded:
            out["max_eval_patients"] = self.max_eval_patients
            if self.mode == "unlearn":
                out["retain_per_epoch"] = self._epoch_retain
                out["selection_val_studies"] = len(self.indices["val"])
        return out

    def _check_parts(self, manifest: Path, idx: dict[str, np.ndarray], after_skipping: bool = False) -> None:
        """Reject a setup whose training, retain or forget part is empty."""
        why = " once the unreadable images are skipped" if after_skipping else ""
        if "forget" in idx:
            if len(idx["retain"]) == 0:
                raise ValueError(f"the forget request covers every training patient{why}; nothing would be retained")
            if len(idx["forget"]) == 0:
                raise ValueError(f"no image of the forget request's patients is left{why}")
        if len(idx["train"]) == 0:
            raise ValueError(f"{manifest}: the training split is empty{why}")

    def _unreadable_images(self, dataset: Dataset, items: list[dict]) -> dict[int, str]:
        """``{position: message}`` of the items whose image cannot be read. Cached images are not decoded again;
        the others are decoded here (with ``num_workers`` processes), which fills a ``cache_dir``."""
        probe = ImageErrorProbe(dataset, items)
        decodes = self.cache_dir is not None or self.cache_rate < 1.0
        loader = DataLoader(probe, batch_size=PROBE_BATCH, shuffle=False, collate_fn=list,
                            num_workers=self.num_workers if decodes else 0)
        errors = [message for batch in loader for message in batch]
        return {p: message for p, message in enumerate(errors) if message is not None}

    def _retain_sample(self, df: pd.DataFrame, retain: np.ndarray, forget: np.ndarray) -> np.ndarray:
        """Rows of a seeded sample of retain patients, as many patients as the forget part (at least
        ``RETAIN_SAMPLE_MIN``; all retain patients if fewer): the retain side of the validation used for checkpoint
        selection, kept small because it is scored after every unlearning epoch."""
        patients = np.array(sorted(set(df.loc[retain, "patient_id"])))
        wanted = max(df.loc[forget, "patient_id"].nunique(), RETAIN_SAMPLE_MIN)
        if wanted < len(patients):
            patients = np.random.default_rng(self.seed).choice(patients, size=wanted, replace=False)
        return retain[np.isin(df.loc[retain, "patient_id"].to_numpy(), patients)]

    # --- info ---------------------------------------------------------------------------------------------------
    def subset(self, name: str) -> Subset:
        """The dataset of one part: ``train``, ``val``, ``test``, ``forget``, ``retain``."""
        if self.df is None:
            self.setup()
        if name not in self.indices:
            raise KeyError(f"no {name!r} part in mode {self.mode!r} (forget request given: {self.forget is not None})")
        return ImageSubset(self._dataset, [self._position[int(r)] for r in self.indices[name]])

    def rows_dataset(self, rows: Sequence[int] | np.ndarray) -> Dataset:
        """The decoded studies of manifest ``rows``: this datamodule's cached items when it holds them all, else a
        cache of just these rows (the same transform, so the same tensors). SISA's retraining reads the retrained
        shards' studies through it, beyond the bounded parts an ``unlearn`` run decodes."""
        if self.df is None:
            self.setup()
        if self._dataset is not None and all(int(r) in self._position for r in rows):
            return ImageSubset(self._dataset, [self._position[int(r)] for r in rows])
        transform = image_transforms(self.image_size, self.multiframe, channels=self.channels)
        return CacheDataset(_items(self.df, rows), transform, cache_rate=1.0, num_workers=None, progress=False)

    def provenance(self) -> dict[str, Any]:
        """The data facts a checkpoint records: the manifest and its SHA-256, the split and image settings, and the
        patients and studies of each part (counts only)."""
        if self.df is None:
            self.setup()
        return {
            "manifest": str(self.manifest_path),
            "manifest_sha256": self.dataset_hash(),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "image_size": self.image_size,
            "channels": self.channels,
            "batch_size": self.batch_size,
            "parts": self.summary(),
        }

    def train_reports(self) -> list[str]:
        """Reports of the training rows (excluded patients removed): what a tokenizer may be trained on."""
        if self.df is None:
            self.setup()
        part = "retain" if self.mode == "unlearn" else "train"
        return self.df.loc[self.indices[part], "report"].tolist()

    def summary(self) -> dict[str, dict[str, int]]:
        """Patients and studies per part (counts only; no identifiers)."""
        if self.df is None:
            self.setup()
        return {
            name: {"patients": int(self.df.loc[rows, "patient_id"].nunique()), "studies": len(rows)}
            for name, rows in self.indices.items()
        }

    def dataset_hash(self) -> str:
        """SHA-256 of the manifest file."""
        if self.df is None:
            self.setup()
        return manifest_hash(self.manifest_path)

    # --- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, name: str, shuffle: bool, batch_size: int | None = None,
                sampler: EpochSubsetSampler | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        subset, batch_size = self.subset(name), batch_size or self.batch_size
        served = len(sampler) if sampler is not None else len(subset)
        return DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            # a last training batch of one image would stop BatchNorm ("expected more than 1 value per channel"); as
            # the order is reshuffled every epoch, the image left out differs from epoch to epoch
            drop_last=shuffle and served > 1 and served % batch_size == 1,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def part_dataloader(self, name: str, shuffle: bool = False) -> DataLoader:
        """A loader over one part (``forget``, ``retain``, ``val``, ...): what methods that need a full pass over a
        part (saliency masks, Fisher information, noise learning) iterate in their setup."""
        if self.df is None:
            self.setup()
        return self._loader(name, shuffle)

    def train_dataloader(self):
        if self.mode == "unlearn":
            loaders = {
                keys.FORGET: self._loader("forget", True, self.forget_batch_size),
                keys.RETAIN: self._loader("retain", True, sampler=self.retain_sampler()),
            }
            if self.unlearn_epoch == "forget" and len(loaders[keys.FORGET]) <= len(loaders[keys.RETAIN]):
                return CombinedLoader(loaders, mode="min_size")  # retain is reshuffled every epoch
            return CombinedLoader(loaders, mode="max_size_cycle")
        return self._loader("train", True)

    def retain_sampler(self) -> EpochSubsetSampler | None:
        """``unlearn`` mode, ``bounded``: the sampler drawing each epoch's ``retain_per_epoch`` studies from the retain
        pool (seeded by ``seed`` and the epoch); ``None`` otherwise (every retain study, reshuffled each epoch)."""
        if self.df is None:
            self.setup()
        if not (self.bounded and self.mode == "unlearn"):
            return None
        return EpochSubsetSampler(len(self.indices["retain"]), self._epoch_retain, self.seed)

    def val_dataloader(self):
        """``train``/``evaluate`` mode: the val patients. ``unlearn`` mode: forget, retain-sample and val loaders in
        the order of :data:`keys.UNLEARN_VALIDATION_PARTS` (what checkpoint selection compares); none without val
        patients."""
        if not len(self.indices.get("val", [])):
            return []
        if self.mode == "unlearn":
            return [self._loader(name, False) for name in self.validation_parts]
        return self._loader("val", False)

    @property
    def validation_parts(self) -> tuple[str, ...]:
        """The ``unlearn``-mode validation parts present, in dataloader order: :data:`keys.UNLEARN_VALIDATION_PARTS`
        without the forget selection part when ``selection_fraction`` is 0."""
        return tuple(p for p in keys.UNLEARN_VALIDATION_PARTS if len(self.indices.get(p, [])))

    def test_dataloader(self):
        return self._loader("test", False)

    def evaluation_dataloaders(self) -> dict[str, DataLoader]:
        """Ordered, unshuffled loaders of every part present: forget, retain, test, val (and train)."""
        if self.df is None:
            self.setup()
        order = ("forget", "retain", "test", "val") if "forget" in self.indices else ("train", "test", "val")
        return {name: self._loader(name, False) for name in order if len(self.indices.get(name, []))}
