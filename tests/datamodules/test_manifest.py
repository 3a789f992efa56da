"""Validation of hospital manifests (``load_manifest``) and ``manifest_hash``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medforget.datamodules.manifest import MAX_LISTED, ManifestError, load_manifest, manifest_hash
from medforget.datamodules.synthetic import write_dicom

NUM_CLASSES = 4


def _dicom(path: Path, seed: int) -> Path:
    image = np.random.default_rng(seed).random((8, 8))
    uid = f"1.2.826.0.1.3680043.10.1492.99.{seed}"
    write_dicom(path, image, patient_id=f"PAT{seed}", study_uid=uid + ".1", sop_uid=uid + ".2",
                series_uid=uid + ".3")
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A folder with three DICOM files under ``img/``."""
    for i in range(3):
        _dicom(tmp_path / "img" / f"s{i}.dcm", i)
    return tmp_path


def _rows() -> list[dict]:
    rows = [
        {"patient_id": "ALPHA", "study_id": "S0", "image_path": "img/s0.dcm", "report": "No edema.",
         "label": "0"},
        {"patient_id": "ALPHA", "study_id": "S1", "image_path": "img/s1.dcm", "report": "Mild congestion.",
         "label": "1"},
        {"patient_id": "BRAVO", "study_id": "S2", "image_path": "img/s2.dcm", "report": "Alveolar edema.",
         "label": "3"},
    ]
    return rows


def _write(folder: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


def _problems(path: Path, num_classes: int = NUM_CLASSES, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, num_classes, **kwargs)
    err = info.value
    assert err.path == str(path)
    for problem in err.problems[:MAX_LISTED]:  # every shown problem is in the message
        assert problem in str(err)
    return err.problems


# --- valid manifests ------------------------------------------------------------------------------
def test_valid_manifest_resolves_paths_and_types(folder):
    path = _write(folder, _rows())
    df = load_manifest(path, NUM_CLASSES)
    assert list(df.index) == [0, 1, 2]
    assert df["patient_id"].tolist() == ["ALPHA", "ALPHA", "BRAVO"]
    assert df["label"].tolist() == [0, 1, 3]
    assert all(isinstance(v, (int, np.integer)) for v in df["label"])
    assert df["report"].tolist() == ["No edema.", "Mild congestion.", "Alveolar edema."]
    for i, image in enumerate(df["image_path"]):
        assert Path(image).is_absolute()
        assert Path(image) == folder / "img" / f"s{i}.dcm"
    assert "split" not in df.columns


def test_absolute_image_paths_and_extra_columns_are_kept(folder, tmp_path_factory):
    rows = _rows()
    for row in rows:
        row["image_path"] = str(folder / row["image_path"])
        row["site"] = "north"
    other = tmp_path_factory.mktemp("elsewhere")  # manifest in a different folder than the images
    df = load_manifest(_write(other, rows), NUM_CLASSES)
    assert df["image_path"].tolist() == [r["image_path"] for r in rows]
    assert df["site"].tolist() == ["north"] * 3


def test_tsv_manifest_and_integer_like_labels(folder):
    rows = _rows()
    rows[0]["label"] = "2.0"
    rows[1]["label"] = " 1 "
    df = load_manifest(_write(folder, rows, "manifest.tsv"), NUM_CLASSES)
    assert df["label"].tolist() == [2, 1, 3]


def test_split_column_is_normalised(folder):
    rows = _rows()
    for row, split in zip(rows, (" Train", "TRAIN", "test "), strict=True):
        row["split"] = split
    df = load_manifest(_write(folder, rows), NUM_CLASSES)
    assert df["split"].tolist() == ["train", "train", "test"]


def test_missing_manifest_and_unsupported_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv", NUM_CLASSES)
    bad = tmp_path / "manifest.xlsx"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unsupported format"):
        load_manifest(bad, NUM_CLASSES)


# --- single problems ------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["patient_id", "study_id", "image_path", "label"])
def test_missing_required_column(folder, column):
    rows = [{k: v for k, v in row.items() if k != column} for row in _rows()]
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert "missing required column" in problems[0]
    assert column in problems[0].split(";")[0]


def test_missing_report_and_report_path_columns(folder):
    rows = [{k: v for k, v in row.items() if k != "report"} for row in _rows()]
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert "report (or report_path)" in problems[0]


def test_image_file_not_found(folder):
    rows = _rows()
    rows[1]["image_path"] = "img/missing.dcm"
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 3 ")  # header is line 1, so the second data row is line 3
    assert "'S1'" in problems[0]
    assert "image_path" in problems[0] and "not found" in problems[0]
    assert str(folder / "img" / "missing.dcm") in problems[0]


def test_missing_images_are_ignored_without_check_files(folder):
    rows = _rows()
    rows[1]["image_path"] = "img/missing.dcm"
    df = load_manifest(_write(folder, rows), NUM_CLASSES, check_files=False)
    assert df["image_path"].iloc[1] == str(folder / "img" / "missing.dcm")


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_report(folder, text):
    rows = _rows()
    rows[0]["report"] = text
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 2 ")
    assert "'S0'" in problems[0]
    assert "empty report" in problems[0]


def test_empty_field(folder):
    rows = _rows()
    rows[2]["patient_id"] = "  "
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 4 ") and "empty patient_id" in problems[0]


def test_report_path_reads_reports_from_files(folder):
    rows = _rows()
    (folder / "reports").mkdir()
    for i, row in enumerate(rows):
        (folder / "reports" / f"r{i}.txt").write_text(f"FINDINGS: report number {i}.\n", encoding="utf-8")
        row["report_path"] = f"reports/r{i}.txt"
        del row["report"]
    df = load_manifest(_write(folder, rows), NUM_CLASSES)
    assert df["report"].tolist() == [f"FINDINGS: report number {i}.\n" for i in range(3)]
    assert "report_path" not in df.columns


def test_report_column_falls_back_to_report_path(folder):
    rows = _rows()
    (folder / "fallback.txt").write_text("From the file.", encoding="utf-8")
    for row in rows:
        row["report_path"] = ""
    rows[1]["report"] = ""
    rows[1]["report_path"] = str(folder / "fallback.txt")  # absolute report path
    df = load_manifest(_write(folder, rows), NUM_CLASSES)
    assert df["report"].tolist() == ["No edema.", "From the file.", "Alveolar edema."]


def test_missing_report_path_file(folder):
    rows = _rows()
    (folder / "r.txt").write_text("ok", encoding="utf-8")
    for row in rows:
        del row["report"]
        row["report_path"] = "r.txt"
    rows[2]["report_path"] = "reports/gone.txt"
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1  # not additionally reported as an empty report
    assert problems[0].startswith("row 4 ")
    assert "report_path file not found" in problems[0]
    assert str(folder / "reports" / "gone.txt") in problems[0]


def test_empty_report_file(folder):
    rows = _rows()
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    for row in rows:
        del row["report"]
        row["report_path"] = "empty.txt"
    (folder / "full.txt").write_text("text", encoding="utf-8")
    rows[0]["report_path"] = rows[2]["report_path"] = "full.txt"
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 3 ") and "empty report" in problems[0]


@pytest.mark.parametrize("label", ["4", "-1", "17"])
def test_label_out_of_range(folder, label):
    rows = _rows()
    rows[1]["label"] = label
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 3 ")
    assert f"label {int(label)} out of range" in problems[0]
    assert "4)" in problems[0]  # names the number of classes


def test_label_range_depends_on_num_classes(folder):
    path = _write(folder, _rows())  # labels 0, 1, 3
    problems = _problems(path, num_classes=3)
    assert len(problems) == 1
    assert problems[0].startswith("row 4 ") and "label 3 out of range" in problems[0]


@pytest.mark.parametrize("label", ["abc", "1.5", "", "nan", "one"])
def test_non_integer_label(folder, label):
    rows = _rows()
    rows[0]["label"] = label
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 2 ")
    assert f"label {label!r} is not an integer" in problems[0]


def test_duplicate_row(folder):
    rows = _rows()
    rows.append(dict(rows[0]))
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 5 ")  # the later copy is the duplicate
    assert "duplicate" in problems[0]


def test_duplicate_row_with_the_path_written_differently(folder):
    rows = _rows()
    rows.append(dict(rows[1], image_path=str(folder / "img" / "s1.dcm")))  # absolute path of row 3's image
    rows.append(dict(rows[2], image_path="img/../img/./s2.dcm"))  # row 4's image, path not normalised
    problems = _problems(_write(folder, rows))
    assert problems == [
        "row 5 (study_id='S1'): duplicate of an earlier row",
        "row 6 (study_id='S2'): duplicate of an earlier row",
    ]


def test_invalid_split_value(folder):
    rows = _rows()
    for row in rows:
        row["split"] = "train"
    rows[2]["split"] = "validation"
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert problems[0].startswith("row 4")
    assert "'validation'" in problems[0]


def test_patient_in_two_splits(folder):
    rows = _rows()
    rows[0]["split"], rows[1]["split"], rows[2]["split"] = "train", "test", "val"
    problems = _problems(_write(folder, rows))
    assert len(problems) == 1
    assert "rows 2, 3" in problems[0]
    assert "'test'" in problems[0] and "'train'" in problems[0]
    assert "ALPHA" not in problems[0]  # rows are named, the patient ID is not


def test_several_problems_are_all_listed(folder):
    rows = _rows()
    for row in rows:
        row["split"] = "train"
    rows[0]["image_path"] = "img/nope.dcm"  # 1: missing image
    rows[0]["label"] = "x"  # 2: non-integer label (same row)
    rows[1]["report"] = ""  # 3: empty report
    rows[1]["split"] = "test"  # 4: ALPHA in two splits
    rows[2]["label"] = "9"  # 5: out of range
    rows.append(dict(_rows()[2], split="train"))  # 6: duplicate of row 4
    rows.append(dict(_rows()[2], study_id="S3", split="holdout"))  # 7: invalid split (BRAVO: 2 "splits" -> 8)
    problems = _problems(_write(folder, rows))
    assert len(problems) == 8
    text = "\n".join(problems)
    for fragment in ("image_path file not found", "label 'x' is not an integer", "empty report",
                     "several splits", "label 9 out of range", "duplicate", "'holdout'"):
        assert fragment in text
    with pytest.raises(ManifestError, match="has 8 problem"):
        load_manifest(folder / "manifest.csv", NUM_CLASSES)


def test_long_problem_lists_are_truncated_in_the_message(folder):
    rows = [dict(_rows()[0], study_id=f"S{i}", image_path="img/s0.dcm" if i == 0 else f"img/x{i}.dcm")
            for i in range(MAX_LISTED + 11)]
    problems = _problems(_write(folder, rows))
    assert len(problems) == MAX_LISTED + 10
    with pytest.raises(ManifestError) as info:
        load_manifest(folder / "manifest.csv", NUM_CLASSES)
    assert "... and 10 more" in str(info.value)
    assert problems[-1] not in str(info.value)


# --- formats and hashing --------------------------------------------------------------------------
def test_parquet_manifest(folder):
    pytest.importorskip("pyarrow")
    rows = _rows()
    frame = pd.DataFrame(rows).assign(label=lambda d: d["label"].astype(int))
    path = folder / "manifest.parquet"
    frame.to_parquet(path)
    df = load_manifest(path, NUM_CLASSES)
    assert df["label"].tolist() == [0, 1, 3]
    assert df["image_path"].tolist() == [str(folder / r["image_path"]) for r in rows]
    frame.loc[1, "label"] = 7
    frame.to_parquet(path)
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith("row 3 ")


def test_manifest_hash_changes_with_any_byte(folder):
    path = _write(folder, _rows())
    copy = folder / "copy.csv"
    shutil.copy(path, copy)
    digest = manifest_hash(path)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert manifest_hash(copy) == digest  # content, not path
    assert manifest_hash(str(path)) == digest
    data = bytearray(path.read_bytes())
    data[-2] ^= 1  # flip one bit of one byte
    copy.write_bytes(bytes(data))
    assert manifest_hash(copy) != digest
