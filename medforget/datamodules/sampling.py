"""Bounded, seeded samples of a hospital's rows: what keeps unlearning and auditing cost independent of its size.

An unlearning run reads the forget patients, a *retain pool* (whole patients, in a seeded order, until the pool holds
enough studies) and a sample of the validation patients; each epoch trains on a fresh seeded draw of studies from the
pool (:class:`EpochSubsetSampler`). The audit scores seeded samples of the retain, validation and test patients.
Samples are drawn by patient, as the audit's bootstrap resamples patients; every draw is a pure function of the seed,
a tag naming its use, and the rows, so a resumed or repeated run draws the same.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Sampler

RETAIN_PER_FORGET = 8  # default retain studies per unlearning epoch: this many per forget study ...
RETAIN_PER_EPOCH_MIN = 256  # ... and at least this many
POOL_FACTOR = 2  # default retain pool: this many epochs' worth of retain studies
MAX_EVAL_PATIENTS = 256  # default patients per part scored by the audit
SELECTION_VAL_PER_FORGET = 4  # default val studies scored per unlearning epoch: this many per forget study ...
SELECTION_VAL_MIN = 128  # ... and at least this many


def _rng(seed: int, tag: str) -> np.random.Generator:
    """A generator for one use (``tag``) of one seed: different uses draw independently."""
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode())])


def default_retain_per_epoch(forget_studies: int, per_forget: int = RETAIN_PER_FORGET) -> int:
    """``max(per_forget x forget studies, 256)`` (``per_forget`` 8 unless configured): retain studies per unlearning
    epoch when not configured."""
    return max(int(per_forget) * int(forget_studies), RETAIN_PER_EPOCH_MIN)


def default_selection_val_studies(forget_studies: int) -> int:
    """``max(4 x forget studies, 128)``: val studies (whole patients) scored for checkpoint selection when not
    configured."""
    return max(SELECTION_VAL_PER_FORGET * int(forget_studies), SELECTION_VAL_MIN)


def patient_sample(patients: pd.Series, rows: np.ndarray, max_patients: int | None, seed: int, tag: str) -> np.ndarray:
    """Rows of a seeded sample of at most ``max_patients`` patients (all rows if ``None`` or there are fewer).

    Args:
        patients: Patient ID of every row of the manifest (indexed by row).
        rows: Candidate rows.
        max_patients: Patients to keep; ``None``: all.
        seed: Seed of the draw.
        tag: Name of the draw's use (e.g. ``"audit:test"``); different tags draw independently.

    Returns:
        The sorted rows of the chosen patients.
    """
    rows = np.asarray(rows, dtype=int)
    ids = patients.loc[rows].astype(str).to_numpy()
    unique = np.unique(ids)
    if max_patients is None or len(unique) <= max_patients:
        return np.sort(rows)
    if max_patients < 1:
        raise ValueError(f"max_patients must be >= 1 or None, got {max_patients}")
    chosen = _rng(seed, tag).choice(unique, size=max_patients, replace=False)
    return np.sort(rows[np.isin(ids, chosen)])


def patient_pool(patients: pd.Series, rows: np.ndarray, min_studies: int, seed: int, tag: str) -> np.ndarray:
    """Rows of whole patients taken in a seeded order until they hold at least ``min_studies`` studies (all rows if
    there are not that many).

    Args:
        patients: Patient ID of every row of the manifest (indexed by row).
        rows: Candidate rows.
        min_studies: Studies the pool should hold.
        seed: Seed of the order.
        tag: Name of the draw's use.

    Returns:
        The sorted rows of the pool.
    """
    rows = np.asarray(rows, dtype=int)
    if len(rows) <= min_studies:
        return np.sort(rows)
    ids = patients.loc[rows].astype(str).to_numpy()
    unique, counts = np.unique(ids, return_counts=True)
    order = _rng(seed, tag).permutation(len(unique))
    taken = int(np.searchsorted(np.cumsum(counts[order]), min_studies) + 1)
    return np.sort(rows[np.isin(ids, unique[order[:taken]])])


class EpochSubsetSampler(Sampler[int]):
    """A fresh seeded draw of ``size`` of ``n`` positions every epoch, in random order.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (as for a ``DistributedSampler``), so the
    draw of epoch ``e`` is a function of ``(seed, e)`` alone: a resumed run draws what an uninterrupted one would.

    Args:
        n: Positions to draw from (the retain pool's studies).
        size: Positions per epoch (all ``n``, shuffled, if ``size >= n``).
        seed: Seed of the draws.
    """

    def __init__(self, n: int, size: int, seed: int) -> None:
        if n < 1 or size < 1:
            raise ValueError(f"EpochSubsetSampler needs n >= 1 and size >= 1, got n={n}, size={size}")
        self.n, self.size, self.seed, self.epoch = int(n), int(min(size, n)), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the sample of ``epoch``."""
        self.epoch = int(epoch)

    def positions(self) -> np.ndarray:
        """The positions of the current epoch's draw, in the order they are served."""
        generator = torch.Generator().manual_seed(int(_rng(self.seed, f"retain-epoch:{self.epoch}").integers(2**62)))
        return torch.randperm(self.n, generator=generator)[: self.size].numpy()

    def __iter__(self) -> Iterator[int]:
        yield from self.positions().tolist()

    def __len__(self) -> int:
        return self.size
