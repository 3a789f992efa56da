"""DicomReportDataModule: batches, patient-level splits, forget / exclude requests, modes and caching."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import CacheDataset, PersistentDataset

from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import ForgetRequestError, read_patient_ids, write_patient_ids


def _patients(dm: DicomReportDataModule, part: str) -> set[str]:
    return set(dm.df.loc[dm.indices[part], "patient_id"])


@pytest.fixture(scope="module")
def train_dm(tiny_datamodule_kwargs) -> DicomReportDataModule:
    dm = DicomReportDataModule(**tiny_datamodule_kwargs)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def forget_ids(forget_file) -> set[str]:
    ids = set(read_patient_ids(forget_file))
    assert len(ids) == 3
    return ids


@pytest.fixture(scope="module")
def unlearn_dm(tiny_datamodule_kwargs, forget_file) -> DicomReportDataModule:
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, mode="unlearn", forget=str(forget_file),
                               forget_batch_size=2)
    dm.setup()
    return dm


# --- train mode -----------------------------------------------------------------------------------
def test_train_batch(train_dm):
    assert isinstance(train_dm._dataset, CacheDataset)
    batch = next(iter(train_dm.train_dataloader()))
    assert set(batch) == {keys.IMAGE, keys.REPORT, keys.LABEL, keys.PATIENT_ID, keys.STUDY_ID, keys.INDEX}
    image = batch[keys.IMAGE]
    assert isinstance(image, torch.Tensor)
    assert tuple(image.shape) == (16, 1, 32, 32)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.std()) > 0.01  # actual radiographs, not blanks
    assert isinstance(batch[keys.REPORT], list) and len(batch[keys.REPORT]) == 16
    assert all(isinstance(r, str) and r for r in batch[keys.REPORT])
    assert batch[keys.LABEL].dtype == torch.long and tuple(batch[keys.LABEL].shape) == (16,)
    assert batch[keys.INDEX].dtype == torch.long and tuple(batch[keys.INDEX].shape) == (16,)
    assert isinstance(batch[keys.PATIENT_ID], list) and len(batch[keys.PATIENT_ID]) == 16
    # every field of the batch belongs to the same manifest row
    df = train_dm.df
    for i, row in enumerate(batch[keys.INDEX].tolist()):
        assert row in set(train_dm.indices["train"])
        assert batch[keys.PATIENT_ID][i] == df.at[row, "patient_id"]
        assert batch[keys.STUDY_ID][i] == df.at[row, "study_id"]
        assert batch[keys.REPORT][i] == df.at[row, "report"]
        assert int(batch[keys.LABEL][i]) == int(df.at[row, "label"])


def test_one_epoch_covers_the_training_split_once(train_dm):
    seen = [i for batch in train_dm.train_dataloader() for i in batch[keys.INDEX].tolist()]
    assert sorted(seen) == sorted(train_dm.indices["train"].tolist())
    val = [i for batch in train_dm.val_dataloader() for i in batch[keys.INDEX].tolist()]
    assert val == train_dm.indices["val"].tolist()  # unshuffled


def test_image_matches_the_dicom(train_dm):
    from medforget.datamodules.dicom import read_dicom

    row = int(train_dm.indices["val"][0])
    item = train_dm.subset("val")[0]
    assert item[keys.INDEX] == row
    expected = read_dicom(train_dm.df.at[row, "image_path"])  # the hospital is already 32x32
    np.testing.assert_allclose(item[keys.IMAGE][0].numpy(), expected, rtol=0, atol=1e-5)


def test_splits_are_patient_disjoint_and_complete(train_dm, tiny_hospital):
    parts = {name: _patients(train_dm, name) for name in ("train", "val", "test")}
    assert not parts["train"] & parts["val"]
    assert not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    manifest = pd.read_csv(tiny_hospital)
    assert parts["train"] | parts["val"] | parts["test"] == set(manifest["patient_id"])
    rows = np.concatenate([train_dm.indices[n] for n in ("train", "val", "test")])
    assert sorted(rows.tolist()) == list(range(len(manifest)))
    n = manifest["patient_id"].nunique()
    assert len(parts["test"]) == round(0.2 * n) and len(parts["val"]) == round(0.1 * n)


def test_split_is_seeded(tiny_datamodule_kwargs, train_dm):
    same = DicomReportDataModule(**tiny_datamodule_kwargs, cache_rate=0.0)
    same.setup()
    assert same.split_fingerprint == train_dm.split_fingerprint
    assert _patients(same, "test") == _patients(train_dm, "test")
    other = DicomReportDataModule(**{**tiny_datamodule_kwargs, "seed": 1}, cache_rate=0.0)
    other.setup()
    assert other.split_fingerprint != train_dm.split_fingerprint
    assert _patients(other, "test") != _patients(train_dm, "test")


def test_manifest_split_column_is_used(tiny_hospital, tmp_path):
    df = pd.read_csv(tiny_hospital)
    df["image_path"] = [str(tiny_hospital.parent / p) for p in df["image_path"]]
    patients = sorted(df["patient_id"].unique())
    chosen = {p: ("test" if i < 5 else "val" if i < 7 else "train") for i, p in enumerate(patients)}
    df["split"] = df["patient_id"].map(chosen)
    path = tmp_path / "with_split.csv"
    df.to_csv(path, index=False)
    dm = DicomReportDataModule(str(path), image_size=32, cache_rate=0.0)
    dm.setup()
    assert _patients(dm, "test") == set(patients[:5])
    assert _patients(dm, "val") == set(patients[5:7])
    assert _patients(dm, "train") == set(patients[7:])


def test_summary_counts_without_identifiers(train_dm):
    summary = train_dm.summary()
    assert set(summary) == {"train", "val", "test"}
    for name, counts in summary.items():
        assert counts == {"patients": len(_patients(train_dm, name)), "studies": len(train_dm.indices[name])}
    text = repr(summary)
    for pid in train_dm.df["patient_id"].unique():
        assert pid not in text
    for sid in train_dm.df["study_id"]:
        assert sid not in text
    assert sum(c["studies"] for c in summary.values()) == len(train_dm.df)


def test_subset_errors(train_dm):
    with pytest.raises(KeyError, match="forget"):
        train_dm.subset("forget")
    assert len(train_dm.subset("train")) == len(train_dm.indices["train"])


def test_dataset_hash(train_dm, tiny_hospital):
    from medforget.datamodules.manifest import manifest_hash

    assert train_dm.dataset_hash() == manifest_hash(tiny_hospital)


def test_invalid_batch_size(tiny_datamodule_kwargs):
    with pytest.raises(ValueError, match="batch_size"):
        DicomReportDataModule(**{**tiny_datamodule_kwargs, "batch_size": 0})


# --- exclude_patients (the retrained reference) ---------------------------------------------------
def test_exclude_patients(tiny_datamodule_kwargs, train_dm, forget_file, forget_ids):
    assert forget_ids <= _patients(train_dm, "train")
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, exclude_patients=str(forget_file), cache_rate=0.0)
    dm.setup()
    assert _patients(dm, "train") == _patients(train_dm, "train") - forget_ids
    assert _patients(dm, "excluded") == forget_ids
    excluded_rows = set(np.flatnonzero(dm.df["patient_id"].isin(forget_ids)))
    assert set(dm.indices["excluded"].tolist()) == excluded_rows
    assert set(dm.indices["train"].tolist()) == set(train_dm.indices["train"].tolist()) - excluded_rows
    summary = dm.summary()
    base = train_dm.summary()
    assert summary["excluded"] == {"patients": 3, "studies": len(excluded_rows)}
    assert summary["train"]["patients"] == base["train"]["patients"] - 3
    assert summary["train"]["studies"] == base["train"]["studies"] - len(excluded_rows)
    assert summary["val"] == base["val"] and summary["test"] == base["test"]
    assert len(dm.train_reports()) == summary["train"]["studies"]
    seen = {p for batch in dm.train_dataloader() for p in batch[keys.PATIENT_ID]}
    assert not seen & forget_ids


# --- unlearn mode ---------------------------------------------------------------------------------
def test_unlearn_needs_forget(tiny_datamodule_kwargs):
    with pytest.raises(ValueError, match="forget"):
        DicomReportDataModule(**tiny_datamodule_kwargs, mode="unlearn")


def test_unlearn_parts(unlearn_dm, train_dm, forget_ids):
    assert _patients(unlearn_dm, "forget") == forget_ids
    assert _patients(unlearn_dm, "retain") == _patients(train_dm, "train") - forget_ids
    forget_rows = set(unlearn_dm.indices["forget"].tolist())
    assert forget_rows == set(np.flatnonzero(unlearn_dm.df["patient_id"].isin(forget_ids)))
    assert not forget_rows & set(unlearn_dm.indices["retain"].tolist())
    assert len(unlearn_dm.train_reports()) == len(unlearn_dm.indices["retain"])
    assert "test" in unlearn_dm.indices  # known, though not loaded in this mode
    with pytest.raises(KeyError):  # test images are not part of the unlearn dataset
        unlearn_dm.subset("test")[0]


def test_unlearn_train_dataloader(unlearn_dm, forget_ids):
    loader = unlearn_dm.train_dataloader()
    n_retain = len(unlearn_dm.indices["retain"])
    n_batches = math.ceil(n_retain / 16)
    assert n_retain > len(unlearn_dm.indices["forget"])  # retain is the longer loader
    items = list(loader)
    assert len(items) == n_batches  # max_size_cycle: one pass over the longer (retain) loader
    retain_rows, forget_rows = [], []
    for step, item in enumerate(items):
        # Lightning 2: iterating a CombinedLoader yields (batch, batch_idx, dataloader_idx)
        assert isinstance(item, tuple) and len(item) == 3
        batch, batch_idx, dataloader_idx = item
        assert batch_idx == step and dataloader_idx == 0
        assert isinstance(batch, dict) and set(batch) == {keys.FORGET, keys.RETAIN}
        forget, retain = batch[keys.FORGET], batch[keys.RETAIN]
        assert forget[keys.IMAGE].shape[1:] == (1, 32, 32) and retain[keys.IMAGE].shape[1:] == (1, 32, 32)
        assert len(forget[keys.PATIENT_ID]) <= 2  # forget_batch_size
        assert set(forget[keys.PATIENT_ID]) <= forget_ids
        assert not set(retain[keys.PATIENT_ID]) & forget_ids
        retain_rows += retain[keys.INDEX].tolist()
        forget_rows += forget[keys.INDEX].tolist()
    assert sorted(retain_rows) == sorted(unlearn_dm.indices["retain"].tolist())  # each retain row once
    assert set(forget_rows) == set(unlearn_dm.indices["forget"].tolist())  # forget rows cycled


# --- evaluate mode --------------------------------------------------------------------------------
def test_evaluate_loaders(tiny_datamodule_kwargs, forget_file, forget_ids):
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, mode="evaluate", forget=str(forget_file))
    loaders = dm.evaluation_dataloaders()
    assert list(loaders) == ["forget", "retain", "test", "val"]
    for name, loader in loaders.items():
        rows = [i for batch in loader for i in batch[keys.INDEX].tolist()]
        assert rows == dm.indices[name].tolist()  # complete and unshuffled
        again = [i for batch in loader for i in batch[keys.INDEX].tolist()]
        assert again == rows
    # the audited forget part: the request without the patient(s) set aside for checkpoint selection
    seen = {p for batch in loaders["forget"] for p in batch[keys.PATIENT_ID]}
    selection = set(dm.df.loc[dm.indices[keys.FORGET_SELECTION], "patient_id"])
    assert seen | selection == forget_ids and not seen & selection and len(selection) == 1
    summary = dm.summary()
    assert summary["forget"]["patients"] == 2
    assert (summary["forget"]["studies"] + summary[keys.FORGET_SELECTION]["studies"] + summary["retain"]["studies"]
            == summary["train"]["studies"])
    everything = DicomReportDataModule(**tiny_datamodule_kwargs, mode="evaluate", forget=str(forget_file),
                                       selection_fraction=0.0)
    everything.setup()
    assert set(everything.df.loc[everything.indices["forget"], "patient_id"]) == forget_ids


def test_evaluate_without_forget(tiny_datamodule_kwargs):
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, mode="evaluate", cache_rate=0.0)
    assert list(dm.evaluation_dataloaders()) == ["train", "test", "val"]


def test_forget_request_with_test_patient(tiny_datamodule_kwargs, train_dm, forget_ids, tmp_path):
    test_patient = sorted(_patients(train_dm, "test"))[0]
    path = write_patient_ids([*sorted(forget_ids), test_patient], tmp_path / "bad.txt")
    for mode in ("unlearn", "evaluate"):
        dm = DicomReportDataModule(**tiny_datamodule_kwargs, mode=mode, forget=str(path), cache_rate=0.0)
        with pytest.raises(ForgetRequestError) as info:
            dm.setup()
        assert "test" in str(info.value)
        assert "#4" in str(info.value)  # the 4th entry of the request
        assert test_patient not in str(info.value)


def test_forget_request_with_unknown_patient(tiny_datamodule_kwargs, tmp_path):
    path = write_patient_ids(["NOT-A-PATIENT"], tmp_path / "unknown.txt")
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, mode="unlearn", forget=str(path), cache_rate=0.0)
    with pytest.raises(ForgetRequestError) as info:
        dm.setup()
    assert "NOT-A-PATIENT" not in str(info.value)


def test_forget_everything_is_rejected(tiny_datamodule_kwargs, train_dm, tmp_path):
    path = write_patient_ids(sorted(_patients(train_dm, "train")), tmp_path / "all.txt")
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, mode="unlearn", forget=str(path), cache_rate=0.0)
    with pytest.raises(ValueError, match="every training patient"):
        dm.setup()


# --- persistent cache -----------------------------------------------------------------------------
def test_cache_dir_uses_persistent_dataset(tiny_datamodule_kwargs, tmp_path):
    cache = tmp_path / "cache"
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, cache_dir=str(cache))
    dm.setup()
    assert isinstance(dm._dataset, PersistentDataset)
    # every image is decoded once at setup (the check for unreadable files), which fills the cache
    assert len(list(cache.glob("*.pt"))) == len(dm._position) == len(dm.df)
    first = {i: img for batch in dm.val_dataloader()
             for i, img in zip(batch[keys.INDEX].tolist(), batch[keys.IMAGE], strict=True)}
    assert len(list(cache.glob("*.pt"))) == len(dm.df)
    # a second datamodule reads the same images back from the cache (its setup decodes nothing)
    dm2 = DicomReportDataModule(**tiny_datamodule_kwargs, cache_dir=str(cache))
    dm2.setup()
    for batch in dm2.val_dataloader():
        for i, img in zip(batch[keys.INDEX].tolist(), batch[keys.IMAGE], strict=True):
            torch.testing.assert_close(img, first[i])
    assert len(list(cache.glob("*.pt"))) == len(dm.df)


def test_cache_dir_is_keyed_by_image_size(tiny_datamodule_kwargs, tmp_path):
    """Changing image_size with the same cache_dir must not return stale, wrongly sized images."""
    cache = tmp_path / "cache"
    for size in (32, 16):
        dm = DicomReportDataModule(**{**tiny_datamodule_kwargs, "image_size": size}, cache_dir=str(cache))
        dm.setup()
        batch = next(iter(dm.val_dataloader()))
        assert tuple(batch[keys.IMAGE].shape[1:]) == (1, size, size)


@pytest.mark.parametrize("epoch", ["retain", "forget"])
def test_unlearn_epoch_is_a_pass_over_retain_or_forget(epoch, forget_file, tiny_datamodule_kwargs):
    dm = DicomReportDataModule(mode="unlearn", forget=str(forget_file), unlearn_epoch=epoch,
                               forget_batch_size=2, **tiny_datamodule_kwargs)
    dm.setup()
    loader = dm.train_dataloader()
    steps = sum(1 for _ in loader)
    n_forget, n_retain = len(dm.indices["forget"]), len(dm.indices["retain"])
    expected = -(-n_forget // 2) if epoch == "forget" else -(-n_retain // tiny_datamodule_kwargs["batch_size"])
    assert steps == expected
    with pytest.raises(ValueError, match="unlearn_epoch"):
        DicomReportDataModule(mode="unlearn", forget=str(forget_file), unlearn_epoch="patients")


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_epochs_after_setup_decode_no_dicom(cache, tiny_datamodule_kwargs, tmp_path, monkeypatch):
    """Decoded, transformed images are cached: once set up, no epoch reads a DICOM file again (in memory with MONAI's
    CacheDataset, or on disk with PersistentDataset, also for a new datamodule in a later run)."""
    from medforget.datamodules import transforms

    calls = []
    real = transforms.read_dicom
    monkeypatch.setattr(transforms, "read_dicom", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    options = {"cache_dir": str(tmp_path / "cache")} if cache == "disk" else {"cache_rate": 1.0}
    dm = DicomReportDataModule(**tiny_datamodule_kwargs, **options)
    dm.setup()
    assert len(calls) == len(dm._position)  # setup decodes each image once
    if cache == "disk":  # a later run: a new datamodule reads the disk cache
        calls.clear()
        dm = DicomReportDataModule(**tiny_datamodule_kwargs, **options)
        dm.setup()
        assert calls == []
    calls.clear()
    for _ in range(2):
        seen = sum(len(batch[keys.INDEX]) for batch in dm.train_dataloader())
        assert seen == len(dm.indices["train"])
    assert calls == []
    # without a cache every epoch decodes again (the counter does count)
    uncached = DicomReportDataModule(**tiny_datamodule_kwargs, cache_rate=0.0)
    uncached.setup()
    calls.clear()
    sum(len(batch[keys.INDEX]) for batch in uncached.train_dataloader())
    assert len(calls) == len(uncached.indices["train"])
