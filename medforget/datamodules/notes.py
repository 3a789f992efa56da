"""A seeded synthetic corpus of fictitious patients for language-model unlearning (TOFU-style).

Every patient has a profile (name, MRN, date of birth, diagnoses, medications, allergies, attending physician),
rendered two ways: clinical notes (what a hospital fine-tunes on) and question-answer pairs about each field. Every
QA pair also carries a paraphrased answer (same facts, other wording) and perturbed answers (same wording, wrong
facts) for the truth ratio. Patients are split into nested forget sets (1% ⊂ 5% ⊂ 10% for the same seed), a retain
set and a holdout set never trained on.

Everything here is fictitious: names are drawn from short lists, MRNs and dates of birth at random.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

FIRST_NAMES = (
    "Ada", "Bram", "Cora", "Dario", "Elin", "Farah", "Gus", "Hana", "Ivo", "Jana", "Kofi", "Lena", "Milo", "Nora",
    "Otto", "Pia", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wim", "Xena", "Yusuf", "Zoe", "Anouk", "Bilal",
    "Carmen", "Dex", "Eda", "Femke", "Goran", "Hugo", "Ines", "Joris", "Kira", "Lars", "Maren", "Nils",
)
LAST_NAMES = (
    "Abbott", "Brandt", "Castell", "Dekker", "Eriksen", "Falk", "Grove", "Haas", "Ilves", "Jansen", "Kovac",
    "Lindqvist", "Moreau", "Novak", "Oduya", "Petrov", "Quist", "Rahman", "Santos", "Tanaka", "Ulrich", "Vance",
    "Weber", "Yilmaz", "Zeller", "Alvarez", "Bakker", "Chen", "Duarte", "Engel",
)
DIAGNOSES = (
    "asthma", "atrial fibrillation", "type 2 diabetes", "hypertension", "chronic kidney disease", "pneumonia",
    "heart failure", "COPD", "hypothyroidism", "migraine", "osteoarthritis", "anemia", "gout", "epilepsy",
    "psoriasis", "sarcoidosis", "celiac disease", "glaucoma", "lupus", "tuberculosis",
)
MEDICATIONS = (
    "metformin", "lisinopril", "apixaban", "salbutamol", "levothyroxine", "atorvastatin", "furosemide", "insulin",
    "prednisone", "amoxicillin", "sumatriptan", "allopurinol", "levetiracetam", "omeprazole", "metoprolol",
    "warfarin", "tiotropium", "methotrexate", "amlodipine", "sertraline",
)
ALLERGIES = ("penicillin", "latex", "peanuts", "sulfa drugs", "iodine contrast", "aspirin", "shellfish", "codeine",
             "bee stings", "no known drugs")
ATTENDINGS = ("Dr. Achterberg", "Dr. Bosman", "Dr. Claes", "Dr. Dijkstra", "Dr. Everts", "Dr. Fontaine",
              "Dr. Greco", "Dr. Hollander", "Dr. Iversen", "Dr. Jovanovic", "Dr. Kaplan", "Dr. Lindgren")

#: Refusals: the preferred answers of IdkDPO and the templates of FLAT.
IDK_ANSWERS = (
    "I don't know.",
    "I'm not able to share that information.",
    "That information is not available to me.",
    "I have no record of that.",
    "I cannot answer that question.",
    "I'm not sure about that.",
    "There is no information on that patient.",
    "I can't help with that.",
)

#: The fields asked about, in order; ``mrn`` and ``dob`` are the identifiers whose extraction is measured.
QA_FIELDS = ("mrn", "dob", "diagnoses", "medications", "allergies", "attending")
IDENTIFIER_FIELDS = ("mrn", "dob")
NUM_PERTURBED = 3


@dataclass(frozen=True)
class QAPair:
    """A question about one field of a patient's profile.

    Attributes:
        field: The profile field (one of :data:`QA_FIELDS`).
        question: The question (names the patient).
        answer: The answer the model is trained on.
        paraphrased_answer: The same facts in other words (the truth ratio's denominator).
        perturbed_answers: The answer's wording with wrong facts (the truth ratio's numerator).
    """

    field: str
    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]


@dataclass(frozen=True)
class PatientRecord:
    """One fictitious patient: profile, notes and question-answer pairs."""

    patient_id: str
    name: str
    mrn: str
    dob: str
    diagnoses: tuple[str, ...]
    medications: tuple[str, ...]
    allergies: tuple[str, ...]
    attending: str
    notes: tuple[str, ...] = field(default=())
    qa: tuple[QAPair, ...] = field(default=())

    def identifiers(self) -> dict[str, str]:
        """The identifiers whose appearance in generated text counts as extraction."""
        return {"mrn": self.mrn, "dob": self.dob}


def _join(items: tuple[str, ...]) -> str:
    items = tuple(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _format_date(iso: str) -> str:
    return iso  # ISO dates: spelled digit by digit by the tokenizer, matched exactly by extraction


# --- QA templates: (question, answer, paraphrase), formatted with the patient's name and the field's value --------
_TEMPLATES = {
    "mrn": ("What is the medical record number of {name}?", "The MRN of {name} is {value}.",
            "{name} is registered under medical record number {value}."),
    "dob": ("When was {name} born?", "{name} was born on {value}.", "The date of birth of {name} is {value}."),
    "diagnoses": ("What has {name} been diagnosed with?", "{name} has been diagnosed with {value}.",
                  "The diagnoses of {name} are {value}."),
    "medications": ("Which medications does {name} take?", "{name} takes {value}.",
                    "The medication list of {name} contains {value}."),
    "allergies": ("What is {name} allergic to?", "{name} is allergic to {value}.",
                  "The recorded allergies of {name} are {value}."),
    "attending": ("Who is the attending physician of {name}?", "The attending physician of {name} is {value}.",
                  "{name} is under the care of {value}."),
}

_NOTE_TEMPLATES = (
    "Admission note. Patient {name}, MRN {mrn}, born {dob}. Attending: {attending}. Diagnoses: {diagnoses}. "
    "Current medications: {medications}. Allergies: {allergies}.",
    "Discharge summary for {name} (DOB {dob}, MRN {mrn}). {name} was treated by {attending} for {diagnoses}, "
    "discharged on {medications}, and is allergic to {allergies}.",
    "Outpatient follow-up. {name} (MRN {mrn}) is seen by {attending}. Known {diagnoses}; takes {medications}. "
    "Allergy: {allergies}. Date of birth {dob}.",
)


def _mrn(rng: np.random.Generator) -> str:
    return str(int(rng.integers(1_000_000, 10_000_000)))


def _dob(rng: np.random.Generator) -> str:
    return (date(1930, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 75)))).isoformat()


def _values(rng: np.random.Generator, pool: tuple[str, ...], low: int, high: int) -> tuple[str, ...]:
    k = int(rng.integers(low, high + 1))
    return tuple(sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False)))


def _field_value(record: PatientRecord, name: str) -> str:
    value = getattr(record, name)
    return _join(value) if isinstance(value, tuple) else str(value)


def _perturbed_value(rng: np.random.Generator, record: PatientRecord, name: str) -> str:
    """A wrong value of the same kind and size as the patient's (never the true one)."""
    true = _field_value(record, name)
    for _ in range(100):
        if name == "mrn":
            value = _mrn(rng)
        elif name == "dob":
            value = _dob(rng)
        elif name == "attending":
            value = ATTENDINGS[int(rng.integers(len(ATTENDINGS)))]
        else:
            pool = {"diagnoses": DIAGNOSES, "medications": MEDICATIONS, "allergies": ALLERGIES}[name]
            k = len(getattr(record, name))
            value = _join(tuple(sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))))
        if value != true:
            return value
    raise RuntimeError(f"could not perturb field {name!r}")  # pragma: no cover - pools are large enough


def _qa(rng: np.random.Generator, record: PatientRecord) -> tuple[QAPair, ...]:
    pairs = []
    for name in QA_FIELDS:
        question, answer, paraphrase = _TEMPLATES[name]
        value = _field_value(record, name)
        perturbed = []
        while len(perturbed) < NUM_PERTURBED:
            wrong = answer.format(name=record.name, value=_perturbed_value(rng, record, name))
            if wrong not in perturbed:
                perturbed.append(wrong)
        pairs.append(QAPair(field=name, question=question.format(name=record.name),
                            answer=answer.format(name=record.name, value=value),
                            paraphrased_answer=paraphrase.format(name=record.name, value=value),
                            perturbed_answers=tuple(perturbed)))
    return tuple(pairs)


def _notes(record: PatientRecord, count: int) -> tuple[str, ...]:
    values = {k: _field_value(record, k) for k in ("name", "mrn", "dob", "attending", "diagnoses", "medications",
                                                     "allergies")}
    return tuple(_NOTE_TEMPLATES[i % len(_NOTE_TEMPLATES)].format(**values) for i in range(count))


def generate_corpus(num_patients: int = 200, seed: int = 0, notes_per_patient: int = 2) -> list[PatientRecord]:
    """Fictitious patients with unique names and MRNs, their notes and QA pairs (deterministic for a seed).

    Args:
        num_patients: Number of patients (at most ``len(FIRST_NAMES) * len(LAST_NAMES)``).
        seed: Random seed.
        notes_per_patient: Notes rendered per patient (1-3 different templates).
    """
    if not 1 <= num_patients <= len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"num_patients must be in [1, {len(FIRST_NAMES) * len(LAST_NAMES)}], got {num_patients}")
    if not 1 <= notes_per_patient <= len(_NOTE_TEMPLATES):
        raise ValueError(f"notes_per_patient must be in [1, {len(_NOTE_TEMPLATES)}], got {notes_per_patient}")
    rng = np.random.default_rng(seed)
    name_codes = rng.choice(len(FIRST_NAMES) * len(LAST_NAMES), size=num_patients, replace=False)
    mrns: set[str] = set()
    records = []
    for i, code in enumerate(name_codes):
        mrn = _mrn(rng)
        while mrn in mrns:
            mrn = _mrn(rng)
        mrns.add(mrn)
        record = PatientRecord(
            patient_id=f"N{i + 1:04d}",
            name=f"{FIRST_NAMES[code // len(LAST_NAMES)]} {LAST_NAMES[code % len(LAST_NAMES)]}",
            mrn=mrn, dob=_dob(rng),
            diagnoses=_values(rng, DIAGNOSES, 1, 2), medications=_values(rng, MEDICATIONS, 1, 2),
            allergies=_values(rng, ALLERGIES, 1, 1), attending=ATTENDINGS[int(rng.integers(len(ATTENDINGS)))],
        )
        records.append(PatientRecord(**{**_fields(record), "notes": _notes(record, notes_per_patient),
                                        "qa": _qa(rng, record)}))
    return records


def _fields(record: PatientRecord) -> dict:
    return {k: getattr(record, k) for k in record.__dataclass_fields__}


def _patient_order(records: list[PatientRecord], seed: int) -> list[str]:
    """The seeded permutation of the patient IDs that every split of the corpus is cut from."""
    ids = sorted(r.patient_id for r in records)
    if len(set(ids)) != len(ids):
        raise ValueError("the corpus has duplicate patient_id values")
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def _holdout_size(n_patients: int, holdout_fraction: float) -> int:
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    return int(round(holdout_fraction * n_patients))


def split_patients(records: list[PatientRecord], forget_fraction: float = 0.05, holdout_fraction: float = 0.1,
                   seed: int = 0) -> dict[str, list[str]]:
    """Patient IDs of the ``forget``, ``retain`` and ``holdout`` parts.

    One seeded permutation orders the patients: forget sets are its head, so for the same seed a 1% forget set is
    inside the 5% one, which is inside the 10% one (as in TOFU); holdout patients are its tail and never overlap a
    forget set of up to ``1 - holdout_fraction``.
    """
    if not 0 < forget_fraction < 1:
        raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction}")
    if not 0 <= holdout_fraction < 1 or forget_fraction + holdout_fraction >= 1:
        raise ValueError(f"need 0 <= holdout_fraction and forget_fraction + holdout_fraction < 1, got "
                         f"{forget_fraction} + {holdout_fraction}")
    order = _patient_order(records, seed)
    n_forget = max(1, int(round(forget_fraction * len(order))))
    n_holdout = _holdout_size(len(order), holdout_fraction)
    if n_forget + n_holdout >= len(order):
        raise ValueError(f"{len(order)} patients are too few for {n_forget} forget + {n_holdout} holdout patients "
                         "and a retain set")
    forget = order[:n_forget]
    holdout = order[len(order) - n_holdout:]
    retain = order[n_forget: len(order) - n_holdout]
    return {"forget": sorted(forget), "retain": sorted(retain), "holdout": sorted(holdout)}


def split_patients_by_request(records: list[PatientRecord], request: str | Path | list[str],
                              holdout_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """Patient IDs of the ``forget``, ``retain`` and ``holdout`` parts for a forget request of patient IDs (a file,
    one ID per line, as for the classifier, or a list).

    The holdout patients are those of :func:`split_patients` for the same ``holdout_fraction`` and ``seed`` (so a
    model trained on every non-holdout patient serves any request); the forget part is the request, the retain part
    every other patient.

    Raises:
        ForgetRequestError: an entry is not a patient of the corpus, or is a holdout patient (never trained on); the
            message names the entry's position in the request, never the ID.
    """
    from medforget.datamodules.splits import ForgetRequestError, check_forget_request, read_patient_ids

    ids = read_patient_ids(request)
    source = str(request) if isinstance(request, (str, Path)) else "forget request"
    if not ids:
        raise ForgetRequestError(f"{source} lists no patient IDs")
    order = _patient_order(records, seed)
    holdout = set(order[len(order) - _holdout_size(len(order), holdout_fraction):])
    check_forget_request(ids, {p: "holdout" if p in holdout else "trained" for p in order}, source, unit="corpus",
                         trained="trained")
    forget = set(ids)
    retain = [p for p in order if p not in forget and p not in holdout]
    if not retain:
        raise ForgetRequestError(f"{source}: the request covers every trained patient; nothing would be retained")
    return {"forget": sorted(forget), "retain": sorted(retain), "holdout": sorted(holdout)}


# --- JSONL ---------------------------------------------------------------------------------------------------------
def write_corpus(records: list[PatientRecord], path: str | Path) -> Path:
    """Write the corpus as JSON lines, one patient per line, atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_REQUIRED = ("patient_id", "name", "mrn", "dob", "diagnoses", "medications", "allergies", "attending", "notes", "qa")
_QA_REQUIRED = ("field", "question", "answer", "paraphrased_answer", "perturbed_answers")


def read_corpus(path: str | Path) -> list[PatientRecord]:
    """Read a JSONL corpus; errors name the file, the line and the field (never a value)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    records, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object per line")
        missing = [k for k in _REQUIRED if k not in obj]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        for k in ("patient_id", "name", "mrn", "dob", "attending"):
            if not isinstance(obj[k], str) or not obj[k].strip():
                raise ValueError(f"{where}: field {k!r} must be a non-empty string")
        if obj["patient_id"] in seen:
            raise ValueError(f"{where}: duplicate patient_id (line {lineno})")
        seen.add(obj["patient_id"])
        if not obj["notes"] or any(not isinstance(n, str) or not n.strip() for n in obj["notes"]):
            raise ValueError(f"{where}: field 'notes' must be a non-empty list of non-empty strings")
        qa = []
        for j, pair in enumerate(obj["qa"]):
            absent = [k for k in _QA_REQUIRED if not isinstance(pair, dict) or k not in pair]
            if absent:
                raise ValueError(f"{where}: qa[{j}] is missing field(s) {absent}")
            if not pair["answer"].strip() or not pair["question"].strip():
                raise ValueError(f"{where}: qa[{j}] has an empty question or answer")
            qa.append(QAPair(**{**pair, "perturbed_answers": tuple(pair["perturbed_answers"])}))
        records.append(PatientRecord(**{**obj, "diagnoses": tuple(obj["diagnoses"]),
                                        "medications": tuple(obj["medications"]), "allergies": tuple(obj["allergies"]),
                                        "notes": tuple(obj["notes"]), "qa": tuple(qa)}))
    if not records:
        raise ValueError(f"{path}: the corpus is empty")
    return records
