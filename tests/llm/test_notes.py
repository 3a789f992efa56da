"""The synthetic clinical-notes corpus, its splits and its JSONL format."""

from __future__ import annotations

import json

import pytest

from medforget.datamodules.notes import (
    IDENTIFIER_FIELDS,
    NUM_PERTURBED,
    QA_FIELDS,
    generate_corpus,
    read_corpus,
    split_patients,
    write_corpus,
)


def test_corpus_is_seeded_and_consistent():
    a, b = generate_corpus(40, seed=3), generate_corpus(40, seed=3)
    assert a == b
    assert a != generate_corpus(40, seed=4)
    assert len({r.patient_id for r in a}) == len({r.name for r in a}) == len({r.mrn for r in a}) == 40
    for r in a:
        assert len(r.mrn) == 7 and r.mrn.isdigit()
        assert [q.field for q in r.qa] == list(QA_FIELDS)
        for note in r.notes:  # every note states the identifiers the model may memorise
            assert r.name in note and r.mrn in note and r.dob in note
        for q in r.qa:
            assert r.name in q.question and r.name in q.answer
            assert len(q.perturbed_answers) == len(set(q.perturbed_answers)) == NUM_PERTURBED
            assert q.answer not in q.perturbed_answers and q.paraphrased_answer != q.answer
            if q.field in IDENTIFIER_FIELDS:
                value = getattr(r, q.field)
                assert value in q.answer and value in q.paraphrased_answer
                assert all(value not in p for p in q.perturbed_answers)


@pytest.mark.parametrize("seed", [0, 1])
def test_forget_sets_are_nested_and_disjoint_from_holdout(seed):
    records = generate_corpus(200, seed=0)
    splits = {f: split_patients(records, f, 0.1, seed) for f in (0.01, 0.05, 0.1)}
    assert [len(s["forget"]) for s in splits.values()] == [2, 10, 20]
    assert set(splits[0.01]["forget"]) < set(splits[0.05]["forget"]) < set(splits[0.1]["forget"])
    for s in splits.values():
        assert s["holdout"] == splits[0.05]["holdout"] and len(s["holdout"]) == 20
        assert not set(s["forget"]) & set(s["retain"]) and not set(s["forget"]) & set(s["holdout"])
        assert len(s["forget"]) + len(s["retain"]) + len(s["holdout"]) == 200


def test_split_rejects_bad_fractions():
    records = generate_corpus(10)
    with pytest.raises(ValueError, match="forget_fraction"):
        split_patients(records, 0.0)
    with pytest.raises(ValueError, match="too few"):
        split_patients(records[:2], 0.5, 0.4)


def test_jsonl_round_trip_and_errors(tmp_path):
    records = generate_corpus(5, seed=2)
    path = write_corpus(records, tmp_path / "corpus.jsonl")
    assert read_corpus(path) == records
    lines = path.read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["mrn"]
    (tmp_path / "missing.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(bad)]) + "\n")
    with pytest.raises(ValueError, match=r"missing\.jsonl, line 3: missing field\(s\) \['mrn'\]"):
        read_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "dup.jsonl").write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(ValueError, match="line 2: duplicate patient_id"):
        read_corpus(tmp_path / "dup.jsonl")
    (tmp_path / "trunc.jsonl").write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_corpus(tmp_path / "trunc.jsonl")
    empty_note = json.loads(lines[0])
    empty_note["notes"] = [""]
    (tmp_path / "empty.jsonl").write_text(json.dumps(empty_note) + "\n")
    with pytest.raises(ValueError, match="line 1: field 'notes'"):
        read_corpus(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError):
        read_corpus(tmp_path / "nope.jsonl")
