"""Patient-level splits, forget requests and PHI-free identifiers."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import pytest

from medforget.core.privacy import salted_hash
from medforget.datamodules.splits import (
    ForgetRequestError,
    assign_splits,
    patient_split,
    read_patient_ids,
    resolve_forget,
    sample_forget_request,
    write_patient_ids,
)

PATIENTS = [f"P{i:03d}" for i in range(100)]


# --- patient_split --------------------------------------------------------------------------------
def test_patient_split_assigns_every_patient_once():
    rows = PATIENTS + PATIENTS[:40] + PATIENTS[::3]  # several rows (studies) per patient
    split = patient_split(rows, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert set(split) == set(PATIENTS)  # one entry per patient, so no patient can be in two splits
    assert set(split.values()) == {"train", "val", "test"}
    counts = Counter(split.values())
    assert counts == {"train": 70, "val": 10, "test": 20}


@pytest.mark.parametrize(("n", "val", "test"), [(37, 0.1, 0.2), (10, 0.0, 0.3), (53, 0.25, 0.05)])
def test_patient_split_fractions(n, val, test):
    split = patient_split([f"X{i}" for i in range(n)], val, test, seed=3)
    counts = Counter(split.values())
    assert abs(counts["val"] - val * n) <= 0.5
    assert abs(counts["test"] - test * n) <= 0.5
    assert counts["train"] == n - counts["val"] - counts["test"]


def test_patient_split_is_deterministic_and_order_independent():
    a = patient_split(PATIENTS, seed=7)
    b = patient_split(list(reversed(PATIENTS)) + PATIENTS[:5], seed=7)
    assert a == b


def test_patient_split_depends_on_seed():
    a = patient_split(PATIENTS, seed=0)
    b = patient_split(PATIENTS, seed=1)
    assert a != b
    assert Counter(a.values()) == Counter(b.values())  # same sizes, different patients
    assert {p for p, s in a.items() if s == "test"} != {p for p, s in b.items() if s == "test"}


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.1, -0.2), (0.5, 0.5), (0.7, 0.4), (1.0, 0.0)])
def test_patient_split_rejects_invalid_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        patient_split(PATIENTS, val, test)


# --- assign_splits --------------------------------------------------------------------------------
def test_assign_splits_honours_split_column():
    df = pd.DataFrame({"patient_id": ["A", "A", "B", "C"], "split": ["test", "test", "val", "train"]})
    out = assign_splits(df, 0.1, 0.2, seed=0)
    assert out.tolist() == ["test", "test", "val", "train"]
    out_other_seed = assign_splits(df, 0.5, 0.4, seed=99)
    assert out_other_seed.tolist() == ["test", "test", "val", "train"]


def test_assign_splits_without_column_is_patient_level():
    pids = [p for p in PATIENTS for _ in range(1 + int(p[-1]) % 3)]
    df = pd.DataFrame({"patient_id": pids})
    out = assign_splits(df, 0.1, 0.2, seed=5)
    assert len(out) == len(df)
    assert out.notna().all()
    per_patient = pd.Series(out.to_numpy()).groupby(df["patient_id"]).nunique()
    assert (per_patient == 1).all()
    expected = patient_split(PATIENTS, 0.1, 0.2, seed=5)
    assert out.tolist() == [expected[p] for p in pids]


# --- read_patient_ids -----------------------------------------------------------------------------
def test_read_patient_ids_from_file(tmp_path):
    path = tmp_path / "forget.txt"
    path.write_text(
        "# forget request 2026-01\n\nMF0003\n  MF0001  # trailing comment\nMF0003\n\n#MF0009\nMF0002\n"
    )
    assert read_patient_ids(path) == ["MF0003", "MF0001", "MF0002"]
    assert read_patient_ids(str(path)) == ["MF0003", "MF0001", "MF0002"]


def test_read_patient_ids_from_list():
    assert read_patient_ids([" B ", "A", "", "B", "C", "  "]) == ["B", "A", "C"]
    assert read_patient_ids(("X",)) == ["X"]


def test_read_patient_ids_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing to forget\n\n   \n")
    with pytest.raises(ForgetRequestError, match="no patient IDs"):
        read_patient_ids(path)


def test_read_patient_ids_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="forget request file not found"):
        read_patient_ids(tmp_path / "missing.txt")


def test_write_then_read_patient_ids(tmp_path):
    ids = ["MF0010", "MF0002", "MF0007"]
    path = write_patient_ids(ids, tmp_path / "sub" / "ids.txt")
    assert path.is_file()
    assert read_patient_ids(path) == ids


# --- resolve_forget -------------------------------------------------------------------------------
@pytest.fixture()
def table() -> pd.DataFrame:
    # patient IDs without digits, so digits in messages can only be entry numbers
    return pd.DataFrame(
        {
            "patient_id": ["ALPHA", "BRAVO", "ALPHA", "CHARLIE", "DELTA", "BRAVO", "ECHO", "ALPHA"],
            "split": ["train", "train", "train", "test", "train", "train", "val", "train"],
        }
    )


def test_resolve_forget_returns_all_rows_of_the_patients(table):
    rows = resolve_forget(["BRAVO", "ALPHA"], table["split"], table["patient_id"])
    assert rows.tolist() == [0, 1, 2, 5, 7]
    assert resolve_forget(["DELTA"], table["split"], table["patient_id"]).tolist() == [4]


def test_resolve_forget_from_file(table, tmp_path):
    path = write_patient_ids(["DELTA", "ALPHA"], tmp_path / "f.txt")
    rows = resolve_forget(path, table["split"], table["patient_id"])
    assert rows.tolist() == [0, 2, 4, 7]


def test_resolve_forget_unknown_patient_has_no_phi(table):
    with pytest.raises(ForgetRequestError) as info:
        resolve_forget(["ALPHA", "ZULUWHISKEY", "BRAVO"], table["split"], table["patient_id"])
    msg = str(info.value)
    assert "ZULUWHISKEY" not in msg
    assert "ALPHA" not in msg and "BRAVO" not in msg
    assert re.findall(r"\d+", msg) == ["2"]  # the offending entry, by position
    assert "not patients" in msg


def test_resolve_forget_unknown_patient_in_file_names_the_file(table, tmp_path):
    path = write_patient_ids(["YANKEE", "ALPHA"], tmp_path / "request.txt")
    with pytest.raises(ForgetRequestError) as info:
        resolve_forget(path, table["split"], table["patient_id"])
    msg = str(info.value)
    assert str(path) in msg
    assert "YANKEE" not in msg


def test_resolve_forget_rejects_test_and_val_patients(table):
    with pytest.raises(ForgetRequestError) as info:
        resolve_forget(["ALPHA", "DELTA", "CHARLIE"], table["split"], table["patient_id"])
    msg = str(info.value)
    assert "test" in msg
    assert "CHARLIE" not in msg
    assert re.findall(r"\d+", msg) == ["3"]
    with pytest.raises(ForgetRequestError) as info:
        resolve_forget(["ECHO"], table["split"], table["patient_id"])
    assert "val" in str(info.value) and "ECHO" not in str(info.value)


def test_resolve_forget_lists_unknown_and_held_out_together(table):
    with pytest.raises(ForgetRequestError) as info:
        resolve_forget(["CHARLIE", "NOBODY", "ALPHA", "ECHO"], table["split"], table["patient_id"])
    msg = str(info.value)
    assert sorted(re.findall(r"\d+", msg)) == ["1", "2", "4"]
    for pid in ("CHARLIE", "NOBODY", "ECHO"):
        assert pid not in msg


# --- sampling and hashing -------------------------------------------------------------------------
def test_sample_forget_request_size_and_determinism():
    rows = PATIENTS[:50] + PATIENTS[:50]  # duplicates count once
    a = sample_forget_request(rows, 0.1, seed=0)
    assert len(a) == 5 == len(set(a))
    assert set(a) <= set(PATIENTS[:50])
    assert a == sorted(a)
    assert sample_forget_request(list(reversed(rows)), 0.1, seed=0) == a
    draws = {tuple(sample_forget_request(rows, 0.1, seed=s)) for s in range(5)}
    assert len(draws) > 1
    assert len(sample_forget_request(rows, 0.001, seed=0)) == 1  # at least one patient
    assert sample_forget_request(rows, 1.0, seed=2) == sorted(PATIENTS[:50])


def test_salted_hash():
    h = salted_hash("MF0001", "salt-a")
    assert h == salted_hash("MF0001", "salt-a")
    assert h != salted_hash("MF0001", "salt-b")
    assert h != salted_hash("MF0002", "salt-a")
    assert h != "MF0001" and "MF0001" not in h
    assert re.fullmatch(r"[0-9a-f]+", h)
    hashes = {salted_hash(p, "s") for p in PATIENTS}
    assert len(hashes) == len(PATIENTS)
    assert not hashes & set(PATIENTS)



def test_stratified_forget_request_is_proportional():
    from medforget.datamodules.splits import sample_forget_request

    patients = [f"P{i:03d}" for i in range(100)]
    strata = {p: (0 if i < 50 else 1 if i < 80 else 2) for i, p in enumerate(patients)}  # 50 / 30 / 20
    chosen = sample_forget_request(patients, 0.1, seed=3, strata=strata)
    counts = [sum(strata[p] == s for p in chosen) for s in range(3)]
    assert counts == [5, 3, 2]
    assert chosen == sample_forget_request(patients, 0.1, seed=3, strata=strata)
    assert chosen != sample_forget_request(patients, 0.1, seed=4, strata=strata)
    # largest remainders: 7 of (50, 30, 20) -> quotas 3.5, 2.1, 1.4 -> 4, 2, 1
    seven = sample_forget_request(patients, 0.07, seed=0, strata=strata)
    assert [sum(strata[p] == s for p in seven) for s in range(3)] == [4, 2, 1]


def test_patient_strata_is_the_most_frequent_label():
    import pandas as pd

    from medforget.datamodules.splits import patient_strata

    df = pd.DataFrame({"patient_id": ["a", "a", "a", "b", "b"], "label": [2, 2, 1, 3, 0]})
    assert patient_strata(df) == {"a": 2, "b": 0}
