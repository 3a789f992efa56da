"""Bounded unlearning and auditing: only the forget patients, a seeded retain pool and the val/test samples are read."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.sampling import (
    EpochSubsetSampler,
    default_retain_per_epoch,
    default_selection_val_studies,
    patient_pool,
    patient_sample,
)

BOUNDS = {"retain_pool": 12, "retain_per_epoch": 6, "selection_val_studies": 3}


def _patients(dm: DicomReportDataModule, rows) -> set[str]:
    return set(dm.df.loc[rows, "patient_id"].astype(str))


# --- the sampling functions, by hand ------------------------------------------------------------------------------
def test_patient_pool_takes_whole_patients_until_enough_studies():
    patients = pd.Series(["a", "a", "b", "c", "c", "c", "d"])
    rows = np.arange(7)
    pool = patient_pool(patients, rows, min_studies=3, seed=0, tag="t")
    ids = patients.loc[pool]
    assert len(pool) >= 3
    for p in set(ids):  # whole patients only
        assert set(pool) >= set(np.flatnonzero(patients.to_numpy() == p))
    # taking one patient fewer would not reach 3 studies: the pool stops at the first patient that reaches it
    counts = ids.value_counts()
    assert len(pool) - counts.min() < 3 or len(counts) == 1
    assert np.array_equal(pool, patient_pool(patients, rows, 3, seed=0, tag="t"))  # seeded
    assert np.array_equal(patient_pool(patients, rows, 100, 0, "t"), rows)  # fewer studies than asked: all
    draws = {tuple(patient_pool(patients, rows, 3, seed=s, tag="t")) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_patient_sample_keeps_at_most_max_patients():
    patients = pd.Series([f"p{i // 2}" for i in range(20)])  # 10 patients x 2 studies
    rows = np.arange(20)
    sample = patient_sample(patients, rows, 3, seed=1, tag="audit:test")
    assert patients.loc[sample].nunique() == 3 and len(sample) == 6  # whole patients
    assert np.array_equal(sample, patient_sample(patients, rows, 3, seed=1, tag="audit:test"))
    assert not np.array_equal(sample, patient_sample(patients, rows, 3, seed=1, tag="audit:val")) or \
        not np.array_equal(sample, patient_sample(patients, rows, 3, seed=2, tag="audit:test"))
    assert np.array_equal(patient_sample(patients, rows, None, 0, "t"), rows)
    assert np.array_equal(patient_sample(patients, rows, 50, 0, "t"), rows)


def test_default_bounds():
    assert default_retain_per_epoch(1) == 256
    assert default_retain_per_epoch(100) == 800
    assert default_retain_per_epoch(100, per_forget=2) == 256  # the 256 floor holds whatever the ratio
    assert default_retain_per_epoch(200, per_forget=2) == 400
    assert default_selection_val_studies(3) == 128
    assert default_selection_val_studies(50) == 200


def test_epoch_subset_sampler_is_seeded_and_refreshed_per_epoch():
    a, b = EpochSubsetSampler(100, 10, seed=3), EpochSubsetSampler(100, 10, seed=3)
    first = list(a)
    assert len(first) == len(a) == 10 and len(set(first)) == 10 and all(0 <= i < 100 for i in first)
    assert first == list(b)  # same seed, same epoch: same draw (a resumed run draws what an uninterrupted one would)
    a.set_epoch(1)
    assert list(a) != first  # a fresh draw every epoch
    a.set_epoch(0)
    assert list(a) == first
    assert sorted(EpochSubsetSampler(5, 10, seed=0)) == list(range(5))  # more asked than there are: all, shuffled
    with pytest.raises(ValueError, match="size >= 1"):
        EpochSubsetSampler(5, 0, seed=0)


# --- the unlearn datamodule reads only what the method uses -------------------------------------------------------
def test_unlearn_mode_decodes_only_forget_retain_pool_and_val_sample(tiny_datamodule_kwargs, forget_file, monkeypatch):
    from medforget.datamodules import transforms

    calls: list[str] = []
    real = transforms.read_dicom
    monkeypatch.setattr(transforms, "read_dicom", lambda *a, **k: calls.append(str(a[0])) or real(*a, **k))
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs, **BOUNDS)
    dm.setup()
    allowed = np.concatenate([dm.indices["forget"], dm.indices["retain"], dm.indices["val"]])
    allowed_paths = set(dm.df.loc[allowed, "image_path"].astype(str))
    assert calls and set(calls) <= allowed_paths
    assert len(calls) == len(allowed_paths)  # each once
    # and that is less than the whole hospital's retain and val parts: the bounds did something
    everything = np.concatenate([dm.population["forget"], dm.population["retain"], dm.population["val"]])
    assert len(allowed_paths) < len(set(everything))
    assert _patients(dm, dm.indices["forget"]) == set(forget_file.read_text().split())  # every forget patient
    assert 3 <= len(dm.indices["val"]) < len(dm.population["val"])  # whole val patients until 3 studies
    assert BOUNDS["retain_pool"] <= len(dm.indices["retain"]) < len(dm.population["retain"])
    assert _patients(dm, dm.indices[keys.RETAIN_SAMPLE]) <= _patients(dm, dm.indices["retain"])
    # an epoch serves retain_per_epoch retain studies, all from the pool
    calls.clear()
    served = [i for batch, *_ in dm.train_dataloader() for i in batch[keys.RETAIN][keys.INDEX].tolist()]
    assert calls == []  # cached: no epoch decodes again
    assert len(served) >= BOUNDS["retain_per_epoch"] and set(served) <= set(dm.indices["retain"].tolist())
    sampling = dm.sampling()
    assert sampling["bounded"] and sampling["retain_per_epoch"] == BOUNDS["retain_per_epoch"]
    assert sampling["parts"]["retain"]["of_studies"] == len(dm.population["retain"])


def test_retain_per_forget_sets_the_epoch_and_pool(tiny_datamodule_kwargs, forget_file):
    kwargs = {**tiny_datamodule_kwargs, "selection_val_studies": 3}
    # a ratio large enough to lift the epoch above the 256 floor, so the default (8) would give another number
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), retain_per_forget=100, **kwargs)
    dm.setup()
    forget_studies = len(dm.indices["forget"])
    assert 100 * forget_studies > 256
    assert dm.sampling()["retain_per_epoch"] == 100 * forget_studies != default_retain_per_epoch(forget_studies)
    with pytest.raises(ValueError, match="retain_per_forget must be >= 1"):
        DicomReportDataModule(mode="unlearn", forget=str(forget_file), retain_per_forget=0, **kwargs)


def test_unlearn_without_val_reading_decodes_no_val_study(tiny_datamodule_kwargs, forget_file, monkeypatch):
    """``read_val = False`` (what ``medforget unlearn`` sets when nothing reads the val sample): it is not decoded,
    and the counts still say what the hospital has."""
    from medforget.datamodules import transforms

    calls: list[str] = []
    real = transforms.read_dicom
    monkeypatch.setattr(transforms, "read_dicom", lambda *a, **k: calls.append(str(a[0])) or real(*a, **k))
    blind = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs, **BOUNDS)
    assert blind.read_val  # the default: read
    blind.read_val = False
    blind.setup()
    assert len(blind.indices["val"]) == 0 and blind.val_dataloader() == []
    read = set(blind.df.loc[np.concatenate([blind.indices["forget"], blind.indices["retain"]]), "image_path"]
               .astype(str))
    assert set(calls) == read
    assert blind.sampling()["parts"]["val"]["of_studies"] == len(blind.population["val"]) > 0  # reported, not read


@pytest.mark.parametrize(("method", "validation", "reads_val"), [
    ("NegGradPlus", False, False),  # blind, and the method reads no val: skipped
    ("NegGradPlus", True, True),  # checkpoint selection scores the val sample
    ("LossMatch", False, True),  # blind, but its target distribution is the val patients' losses
])
def test_unlearn_command_reads_val_only_when_something_uses_it(method, validation, reads_val, trained_ckpt,
                                                               forget_file, tiny_hospital, tmp_path):
    from medforget.commands import unlearn
    from medforget.core.checkpoint import read_checkpoint

    flags = [] if validation else ["--checkpoint.monitor=null", "--trainer.limit_val_batches=0"]
    path = unlearn([f"--method={method}", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                    f"--data.manifest={tiny_hospital}", "--data.image_size=32", "--data.batch_size=16",
                    "--data.selection_fraction=0", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
                    "--trainer.enable_progress_bar=false", f"--out={tmp_path / 'run'}", *flags])
    val = read_checkpoint(path)["medforget"]["provenance"]["sampling"]["parts"]["val"]
    assert (val["studies"] > 0) == reads_val and val["of_studies"] > 0


def test_unbounded_unlearn_reads_every_retain_study(tiny_datamodule_kwargs, forget_file):
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), bounded=False, **tiny_datamodule_kwargs,
                               **BOUNDS)
    dm.setup()
    assert np.array_equal(dm.indices["retain"], dm.population["retain"])
    assert dm.retain_sampler() is None
    served = [i for batch, *_ in dm.train_dataloader() for i in batch[keys.RETAIN][keys.INDEX].tolist()]
    assert sorted(set(served)) == sorted(dm.indices["retain"].tolist())
    assert dm.sampling()["bounded"] is False


class _Recorder(L.LightningModule):
    """Records the retain rows served in each training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch[keys.RETAIN][keys.INDEX].tolist())
        return (self.weight * 0).sum() + self.weight.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_draws_a_fresh_retain_sample_every_epoch(tiny_datamodule_kwargs, forget_file):
    def run() -> dict[int, list[int]]:
        dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs, **BOUNDS)
        module = _Recorder()
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, datamodule=dm)
        return module.seen

    seen = run()
    retain_epoch = [set(rows) for rows in seen.values()]
    assert len(retain_epoch) == 3
    assert retain_epoch[0] != retain_epoch[1] or retain_epoch[1] != retain_epoch[2]  # refreshed per epoch
    assert seen == run()  # seeded: a second run draws the same samples


# --- the audit scores bounded samples and says so ---------------------------------------------------------------
def test_evaluate_mode_scores_bounded_samples(tiny_datamodule_kwargs, forget_file):
    dm = DicomReportDataModule(mode="evaluate", forget=str(forget_file), **tiny_datamodule_kwargs,
                               max_eval_patients=3)
    dm.setup()
    for part in ("retain", "val", "test"):
        assert dm.df.loc[dm.indices[part], "patient_id"].nunique() == 3
        assert _patients(dm, dm.indices[part]) < _patients(dm, dm.population[part])
    assert np.array_equal(dm.indices["forget"], dm.population["forget"])  # every audited forget patient
    loaders = dm.evaluation_dataloaders()
    assert sum(len(b[keys.INDEX]) for b in loaders["test"]) == len(dm.indices["test"])
    sampling = dm.sampling()
    assert sampling["max_eval_patients"] == 3 and sampling["parts"]["test"]["patients"] == 3
    assert sampling["parts"]["test"]["of_patients"] == dm.df.loc[dm.population["test"], "patient_id"].nunique()
    full = DicomReportDataModule(mode="evaluate", forget=str(forget_file), bounded=False, max_eval_patients=3,
                                 **tiny_datamodule_kwargs)
    full.setup()
    for part in ("retain", "val", "test"):
        assert np.array_equal(full.indices[part], full.population[part])


def test_bad_bounds_name_the_flag(tiny_datamodule_kwargs, forget_file):
    for flag in BOUNDS:
        with pytest.raises(ValueError, match=f"--data.{flag}"):
            DicomReportDataModule(mode="unlearn", forget=str(forget_file), **tiny_datamodule_kwargs, **{flag: 0})
