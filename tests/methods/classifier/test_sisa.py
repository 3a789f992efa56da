"""SISA exact unlearning: layout, ensemble, bit-for-bit equality with retraining, bad input."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medforget.commands import evaluate, train, unlearn
from medforget.core.checkpoint import CheckpointError, read_checkpoint
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import write_patient_ids
from medforget.methods.classifier.sharding import assign, slice_rows
from medforget.systems.classifier import FusionEnsemble, load_classifier
from tests.conftest import TINY_DATA, TINY_MODEL

SHARDS, SLICES = 3, 2
QUIET = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
# requests of 2 patients: no forget patient set aside for checkpoint selection (SISA selects nothing anyway)
NO_SELECTION = "--data.selection_fraction=0"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _train(hospital: Path, out: Path, *extra: str) -> Path:
    return train([f"--data.manifest={hospital}", *TINY_DATA, *TINY_MODEL, *QUIET, "--trainer.max_epochs=1",
                  f"--shards={SHARDS}", f"--slices={SLICES}", "--seed_everything=7", f"--out={out}", *extra])


@pytest.fixture(scope="module")
def train_patients(tiny_hospital) -> list[str]:
    dm = DicomReportDataModule(str(tiny_hospital), image_size=32, seed=0, cache_rate=0.0)
    dm.setup()
    return sorted(set(dm.df.loc[dm.indices["train"], "patient_id"].astype(str)))


@pytest.fixture(scope="module")
def ensemble_ckpt(tiny_hospital, tmp_path_factory) -> Path:
    return _train(tiny_hospital, tmp_path_factory.mktemp("sisa") / "ensemble")


@pytest.fixture(scope="module")
def sisa_request(train_patients, tmp_path_factory) -> Path:
    """A request that hits shard 0 in slice 1 (continuation from slice 0's checkpoint) and shard 1 in slice 0
    (retrain from scratch), and leaves shard 2 alone."""
    where = {p: assign(p, 7, SHARDS, SLICES) for p in train_patients}
    chosen = [next(p for p in train_patients if where[p] == (0, 1)), next(p for p in train_patients
                                                                            if where[p] == (1, 0))]
    return write_patient_ids(chosen, tmp_path_factory.mktemp("sisa_request") / "forget.txt")


@pytest.fixture(scope="module")
def sisa_unlearned(ensemble_ckpt, sisa_request, tiny_hospital, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sisa_unlearned") / "u"
    return unlearn(["--method=SISA", f"--ckpt={ensemble_ckpt}", f"--forget={sisa_request}",
                    f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION, f"--out={out}"])


def test_layout_is_a_salted_hash_that_removals_do_not_change(tiny_hospital, train_patients):
    dm = DicomReportDataModule(str(tiny_hospital), image_size=32, seed=0, cache_rate=0.0)
    dm.setup()
    rows = dm.indices["train"]
    full = slice_rows(dm.df, rows, 7, SHARDS, SLICES)
    gone = set(train_patients[:5])
    kept = rows[~np.isin(dm.df.loc[rows, "patient_id"].astype(str), sorted(gone))]
    reduced = slice_rows(dm.df, kept, 7, SHARDS, SLICES)
    for k in range(SHARDS):
        for i in range(SLICES):
            ids = dm.df.loc[full[k][i], "patient_id"].astype(str)
            assert np.array_equal(reduced[k][i], full[k][i][~ids.isin(gone).to_numpy()])
    # every study of a patient is in one (shard, slice); the cells partition the training rows
    cells = np.concatenate([c for shard in full for c in shard])
    assert sorted(cells.tolist()) == sorted(rows.tolist())
    for k in range(SHARDS):
        for i in range(SLICES):
            for p in set(dm.df.loc[full[k][i], "patient_id"].astype(str)):
                assert assign(p, 7, SHARDS, SLICES) == (k, i)
    # a hand computation of the documented rule
    h = int(hashlib.sha256(f"medforget-sisa/7/{train_patients[0]}".encode()).hexdigest(), 16)
    assert assign(train_patients[0], 7, SHARDS, SLICES) == (h % SHARDS, (h // SHARDS) % SLICES)


def test_ensemble_checkpoint_is_the_mean_of_shard_probabilities(ensemble_ckpt, tiny_datamodule_kwargs):
    ensemble = load_classifier(ensemble_ckpt)
    assert isinstance(ensemble, FusionEnsemble) and ensemble.num_members == SHARDS
    record = ensemble.provenance["sisa"]
    assert (record["shards"], record["slices"], record["seed"]) == (SHARDS, SLICES, 7)
    base = ensemble_ckpt.parent
    for shard in record["shard_records"]:
        for s in shard["slices"]:  # every slice checkpoint is there with its sidecar
            path = base / s["path"]
            assert path.is_file() and _sha(path) == s["sha256"]
            assert (path.parent / (path.name + ".sha256")).read_text().split()[0] == s["sha256"]
    assert (base / "model.ckpt.sha256").read_text().split()[0] == _sha(ensemble_ckpt)
    dm = DicomReportDataModule(mode="evaluate", **tiny_datamodule_kwargs)
    dm.setup()
    batch = next(iter(dm.part_dataloader("test")))
    members = [load_classifier(base / shard["slices"][-1]["path"]) for shard in record["shard_records"]]
    with torch.no_grad():
        fused = ensemble(ensemble.prepare_batch(batch))["fused"]
        probs = torch.stack([m(m.prepare_batch(batch))["fused"].softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(fused.softmax(-1), probs)
    torch.testing.assert_close(fused, probs.log())
    assert set(ensemble(batch)) == {"fused", "image", "text"}


def test_sisa_unlearning_equals_training_the_shards_without_the_patients(
        ensemble_ckpt, sisa_unlearned, sisa_request, tiny_hospital, tmp_path):
    reference = _train(tiny_hospital, tmp_path / "reference", f"--data.exclude_patients={sisa_request}")
    got, want = read_checkpoint(sisa_unlearned), read_checkpoint(reference)
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    assert got["medforget"]["ensemble"] == want["medforget"]["ensemble"]  # the shards' tokenizers too
    original = read_checkpoint(ensemble_ckpt)["state_dict"]
    changed = {k.split(".")[1] for k, v in original.items() if not torch.equal(v, got["state_dict"][k])}
    assert changed == {"0", "1"}  # shard 2 holds no forget patient and is kept as is
    provenance = got["medforget"]["provenance"]
    assert provenance["method"] == "SISA" and provenance["kind"] == "unlearned"
    assert provenance["retrained"] == [{"shard": 0, "from_slice": 1, "slices": [1]},
                                       {"shard": 1, "from_slice": 0, "slices": [0, 1]}]
    assert provenance["parent_sha256"] == _sha(ensemble_ckpt)
    assert provenance["sisa"]["removed_sha256"] == want["medforget"]["provenance"]["sisa"]["removed_sha256"]
    # the new slice checkpoints live under the unlearning run's --out; the kept ones are the input's, untouched
    records = {r["shard"]: r for r in provenance["sisa"]["shard_records"]}
    base = sisa_unlearned.parent
    assert (base / records[0]["slices"][0]["path"]).resolve() == (
        ensemble_ckpt.parent / "shards/shard_0/slice_0.ckpt").resolve()
    assert (base / records[0]["slices"][1]["path"]).resolve() == (base / "shards/shard_0/slice_1.ckpt").resolve()
    assert not (base / "shards" / "shard_2").exists()
    for shard in records.values():
        for s in shard["slices"]:
            assert _sha(base / s["path"]) == s["sha256"]


def test_a_second_request_keeps_the_first_requests_patients_out(sisa_unlearned, sisa_request, train_patients,
                                                                 tiny_hospital, tmp_path):
    where = {p: assign(p, 7, SHARDS, SLICES) for p in train_patients}
    first = set(sisa_request.read_text().split())
    second = write_patient_ids([next(p for p in train_patients if where[p] == (0, 0) and p not in first)],
                               tmp_path / "second.txt")
    twice = unlearn(["--method=SISA", f"--ckpt={sisa_unlearned}", f"--forget={second}",
                     f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION, f"--out={tmp_path / 'u2'}"])
    both = write_patient_ids(sorted(first | set(second.read_text().split())), tmp_path / "both.txt")
    reference = _train(tiny_hospital, tmp_path / "reference", f"--data.exclude_patients={both}")
    got, want = read_checkpoint(twice)["state_dict"], read_checkpoint(reference)["state_dict"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert read_checkpoint(twice)["medforget"]["provenance"]["retrained"] == [
        {"shard": 0, "from_slice": 0, "slices": [0, 1]}]


def test_ensemble_is_audited_like_any_model(ensemble_ckpt, sisa_unlearned, sisa_request, tiny_hospital, tmp_path):
    out = tmp_path / "audit"
    report = evaluate([f"--original={ensemble_ckpt}", f"--unlearned={sisa_unlearned}", f"--forget={sisa_request}",
                       f"--data.manifest={tiny_hospital}", *TINY_DATA, f"--out={out}", "--accelerator=cpu",
                       "--audit.relearn_steps=2", "--audit.quantization=[int4]", "--audit.plots=false"])
    run = report["runs"][0]
    assert run["models"]["unlearned"]["provenance"]["method"] == "SISA"
    assert run["models"]["unlearned"]["checkpoint_sha256"] == _sha(sisa_unlearned)
    metrics = run["models"]["unlearned"]["metrics"]["test"]["fused"]
    assert 0.0 <= metrics["auc"] <= 1.0
    assert "relearning" in run["models"]["original"] and "quantization" in run["models"]["original"]
    # no checkpoint selection saw forget patients: the audit scores all of them
    assert report["runs"][0]["data"]["parts"]["forget"]["patients"] == 2


def test_gradient_methods_refuse_an_ensemble(ensemble_ckpt, sisa_request, tiny_hospital, tmp_path):
    with pytest.raises(ValueError, match="--method SISA"):
        unlearn(["--method=FineTune", f"--ckpt={ensemble_ckpt}", f"--forget={sisa_request}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION, "--trainer.max_steps=1",
                 f"--out={tmp_path / 'u'}"])
    assert not (tmp_path / "u" / "model.ckpt").exists()


def test_sisa_refuses_a_single_model(trained_ckpt, forget_file, tiny_hospital, tmp_path):
    digest = _sha(trained_ckpt)
    with pytest.raises(ValueError, match=r"--method SISA needs a sharded ensemble.*--ckpt"):
        unlearn(["--method=SISA", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION,
                 f"--out={tmp_path / 'u'}"])
    assert not (tmp_path / "u" / "model.ckpt").exists() and _sha(trained_ckpt) == digest


def test_more_shards_than_patients_is_refused(tiny_hospital, train_patients, tmp_path):
    too_many = len(train_patients) + 1
    with pytest.raises(ValueError, match=f"--shards {too_many} is larger than the number of training patients"):
        train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, *QUIET, f"--shards={too_many}",
               f"--out={tmp_path / 'e'}"])
    assert not (tmp_path / "e" / "model.ckpt").exists()
    with pytest.raises(ValueError, match="--slices"):
        train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, *QUIET, "--shards=2", "--slices=0",
               f"--out={tmp_path / 'e'}"])


def test_missing_slice_checkpoint_is_named(ensemble_ckpt, sisa_request, tiny_hospital, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ensemble_ckpt.parent, copy, ignore=shutil.ignore_patterns("*.lock", "lightning_logs"))
    missing = copy / "shards" / "shard_2" / "slice_0.ckpt"
    missing.unlink()
    with pytest.raises(CheckpointError, match=f"slice checkpoint {missing} is missing"):
        unlearn(["--method=SISA", f"--ckpt={copy / 'model.ckpt'}", f"--forget={sisa_request}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION,
                 f"--out={tmp_path / 'u'}"])
    assert not (tmp_path / "u" / "model.ckpt").exists() and not (tmp_path / "u" / "shards").exists()
    # a changed slice checkpoint (its sidecar no longer matches) is refused too
    changed = copy / "shards" / "shard_0" / "slice_0.ckpt"
    changed.write_bytes(changed.read_bytes() + b"x")
    shutil.copy(ensemble_ckpt.parent / "shards" / "shard_2" / "slice_0.ckpt", missing)
    with pytest.raises(CheckpointError, match="does not match its SHA-256 sidecar"):
        unlearn(["--method=SISA", f"--ckpt={copy / 'model.ckpt'}", f"--forget={sisa_request}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION,
                 f"--out={tmp_path / 'u'}"])


def test_sisa_never_overwrites_the_input_slices(ensemble_ckpt, sisa_request, tiny_hospital):
    before = {p: _sha(p) for p in ensemble_ckpt.parent.rglob("*.ckpt")}
    with pytest.raises(FileExistsError, match="input"):
        unlearn(["--method=SISA", f"--ckpt={ensemble_ckpt}", f"--forget={sisa_request}",
                 f"--data.manifest={tiny_hospital}", *TINY_DATA, *QUIET, NO_SELECTION, f"--out={ensemble_ckpt.parent}",
                 "--overwrite=true"])
    assert {p: _sha(p) for p in ensemble_ckpt.parent.rglob("*.ckpt")} == before


def test_ensemble_members_must_share_one_recipe():
    from medforget.systems.classifier import FusionClassifier

    tiny = {"image_width": 8, "text_hidden": 32, "vocab_size": 256, "max_length": 48}
    with pytest.raises(ValueError, match="member 1 has another recipe"):
        FusionEnsemble([FusionClassifier(joint_dim=32, **tiny), FusionClassifier(joint_dim=16, **tiny)])
    with pytest.raises(ValueError, match="at least one member"):
        FusionEnsemble([])


def test_sharded_training_refuses_a_multi_process_launch(tiny_hospital, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--shards trains the shards one after another"):
        train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, *QUIET, "--shards=2",
               f"--out={tmp_path / 'e'}"])
    assert not (tmp_path / "e" / "model.ckpt").exists()
