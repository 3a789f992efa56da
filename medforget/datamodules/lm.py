"""Clinical-notes language-model data: the synthetic corpus of :mod:`medforget.datamodules.notes` (or a JSONL corpus
in its format), split by patient into forget / retain / holdout.

Examples are plain text; the language-model system tokenizes them with its own tokenizer. Each example is a dict
``{"prompt": str, "text": str, "patient": int}``: ``text`` is what the model learns, the first ``prompt`` characters of
it are context only (no loss): empty for notes, ``"Question: ...\\nAnswer:"`` for question-answer pairs.
``patient`` is an integer code (no identifier leaves the datamodule).

The forget set is either a fraction of the patients (``forget_fraction``: nested 1% ⊂ 5% ⊂ 10% sets, the benchmark's
TOFU-style requests) or a forget request of patient IDs (``forget``: a file with one ID per line, exactly as the
classifier's ``--forget``). The request takes precedence: ``forget_fraction`` is then left unset (or must equal the
request's share of the patients). Holdout patients are the same in both cases.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from medforget.datamodules.notes import (
    IDK_ANSWERS,
    PatientRecord,
    QAPair,
    generate_corpus,
    read_corpus,
    split_patients,
    split_patients_by_request,
)

PARTS = ("forget", "retain", "holdout")
DEFAULT_FORGET_FRACTION = 0.05


def qa_prompt(question: str) -> str:
    """The prompt of a question (the answer follows after a space)."""
    return f"Question: {question}\nAnswer:"


def qa_example(qa: QAPair, patient: int, answer: str | None = None) -> dict[str, Any]:
    prompt = qa_prompt(qa.question)
    return {"prompt": prompt, "text": f"{prompt} {answer if answer is not None else qa.answer}", "patient": patient}


def collate(examples: list[dict[str, Any]]) -> dict[str, list]:
    """A batch as a dict of lists (tokenized later by the model's system)."""
    return {k: [e[k] for e in examples] for k in examples[0]}


class ClinicalNotesDataModule(L.LightningDataModule):
    """Notes and question-answer pairs of fictitious patients, split by patient.

    Args:
        corpus: JSONL corpus (:func:`medforget.datamodules.notes.write_corpus`); ``None`` generates the synthetic
            one from ``num_patients`` and ``corpus_seed``.
        num_patients: Patients of the generated corpus.
        corpus_seed: Seed of the generated corpus.
        forget_fraction: Share of patients in the forget set (1%, 5%, 10% are the standard sizes); default 5%
            without ``forget``. With ``forget`` leave it unset (or give the request's exact share).
        forget: Forget request: a file with one patient ID per line (``#`` comments allowed), as for the
            classifier. Takes precedence over ``forget_fraction``; unknown IDs and holdout patients are errors that
            name the entry's position, never the ID.
        holdout_fraction: Share of patients never trained on (the "never seen" reference).
        split_seed: Seed of the forget / holdout draw.
        exclude_forget: Train on the retain patients only (the retain-only reference model).
        content: What a training epoch holds: ``notes``, ``qa`` or ``both`` (in ``unlearn`` mode: of the forget and
            the retain patients).
        mode: ``train`` (batches of trained patients' examples) or ``unlearn`` (every batch is
            ``{"forget": ..., "retain": ...}``: an epoch is one pass over the forget examples, each forget batch paired
            with a batch of randomly drawn retain examples; forget examples carry ``alt``, a refusal for the same
            prompt, for IdkDPO and FLAT).
        batch_size: Examples per batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        corpus: str | None = None,
        num_patients: int = 200,
        corpus_seed: int = 0,
        forget_fraction: float | None = None,
        forget: str | None = None,
        holdout_fraction: float = 0.1,
        split_seed: int = 0,
        exclude_forget: bool = False,
        content: Literal["notes", "qa", "both"] = "both",
        mode: Literal["train", "unlearn"] = "train",
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if content not in ("notes", "qa", "both"):
            raise ValueError(f"data.content must be 'notes', 'qa' or 'both', got {content!r}")
        if mode not in ("train", "unlearn"):
            raise ValueError(f"data.mode must be 'train' or 'unlearn', got {mode!r}")
        if mode == "unlearn" and exclude_forget:
            raise ValueError("data.exclude_forget is for training the retain-only model, not for unlearning")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.corpus = corpus
        self.num_patients = num_patients
        self.corpus_seed = corpus_seed
        self.requested_fraction = forget_fraction
        self.forget = forget
        self.holdout_fraction = holdout_fraction
        self.split_seed = split_seed
        self.exclude_forget = exclude_forget
        self.content = content
        self.mode = mode
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.records: list[PatientRecord] = []
        self.parts: dict[str, list[int]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        records = read_corpus(self.corpus) if self.corpus else generate_corpus(self.num_patients, self.corpus_seed)
        if self.forget is None:
            fraction = DEFAULT_FORGET_FRACTION if self.requested_fraction is None else self.requested_fraction
            splits = split_patients(records, fraction, self.holdout_fraction, self.split_seed)
        else:
            splits = split_patients_by_request(records, self.forget, self.holdout_fraction, self.split_seed)
            share = len(splits["forget"]) / len(records)
            if self.requested_fraction is not None and abs(self.requested_fraction - share) > 1e-9:
                raise ValueError(f"data.forget_fraction={self.requested_fraction} contradicts the forget request "
                                 f"{self.forget}, which names {len(splits['forget'])} of the {len(records)} patients "
                                 f"({share:.4g}); the request takes precedence: leave data.forget_fraction unset")
        position = {r.patient_id: i for i, r in enumerate(records)}
        self.parts = {name: sorted(position[p] for p in splits[name]) for name in PARTS}
        self.records = records

    @property
    def forget_fraction(self) -> float:
        """The forget set's share of the patients (with a patient-ID request: its actual share)."""
        if self.forget is None:
            return DEFAULT_FORGET_FRACTION if self.requested_fraction is None else self.requested_fraction
        self.setup()
        return len(self.parts["forget"]) / len(self.records)

    @property
    def forget_fingerprint(self) -> str:
        """SHA-256 of the sorted forget patient IDs: two runs with the same fingerprint forgot the same patients
        (the split digest of :func:`medforget.audit.lm.audit.corpus_identity` is of the same kind)."""
        self.setup()
        ids = sorted(self.records[p].patient_id for p in self.parts["forget"])
        return hashlib.sha256(("medforget.lm.forget\n" + "\n".join(ids)).encode()).hexdigest()

    def forget_provenance(self) -> dict[str, Any]:
        """What a checkpoint records of its forget set: how it was given, its share and size, its fingerprint (no
        patient ID, no file name: request files are often named after patients)."""
        return {"forget_by": "fraction" if self.forget is None else "patient_ids",
                "forget_fraction": self.forget_fraction, "forget_patients": len(self.parts["forget"]),
                "forget_fingerprint": self.forget_fingerprint}

    # --- examples -----------------------------------------------------------------------------------------------
    def trained_patients(self) -> list[int]:
        """Positions of the patients the model trains on (retain, plus forget unless ``exclude_forget``)."""
        self.setup()
        return sorted(self.parts["retain"] + ([] if self.exclude_forget else self.parts["forget"]))

    def examples(self, patients: list[int], content: str | None = None) -> list[dict[str, Any]]:
        """Training examples (notes and/or QA pairs) of the patients at these positions."""
        self.setup()
        content = content or self.content
        out: list[dict[str, Any]] = []
        for p in patients:
            record = self.records[p]
            if content in ("notes", "both"):
                out += [{"prompt": "", "text": note, "patient": p} for note in record.notes]
            if content in ("qa", "both"):
                out += [qa_example(qa, p) for qa in record.qa]
        return out

    def qa(self, part: str) -> list[tuple[int, QAPair]]:
        """``(patient position, QA pair)`` of every question of a part (``forget``, ``retain``, ``holdout``)."""
        self.setup()
        if part not in self.parts:
            raise KeyError(f"no part {part!r}; parts: {PARTS}")
        return [(p, qa) for p in self.parts[part] for qa in self.records[p].qa]

    def train_texts(self) -> list[str]:
        """Texts a from-scratch tokenizer may be trained on: every trained patient's notes and QA pairs."""
        return [e["text"] for e in self.examples(self.trained_patients(), "both")]

    def summary(self) -> dict[str, dict[str, int]]:
        """Patients and QA pairs per part (counts only)."""
        self.setup()
        return {name: {"patients": len(p), "questions": len(self.qa(name))} for name, p in self.parts.items()}

    # --- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, examples: list[dict[str, Any]], shuffle: bool) -> DataLoader:
        import torch

        return DataLoader(examples, batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.split_seed))

    def forget_examples(self) -> list[dict[str, Any]]:
        """The forget patients' examples, each with ``alt``: a refusal (from :data:`IDK_ANSWERS`, seeded) after the
        same prompt."""
        self.setup()
        rng = np.random.default_rng(self.split_seed)
        out = []
        for e in self.examples(self.parts["forget"]):
            refusal = IDK_ANSWERS[int(rng.integers(len(IDK_ANSWERS)))]
            out.append({**e, "alt": f"{e['prompt']} {refusal}" if e["prompt"] else refusal})
        return out

    def train_dataloader(self):
        if self.mode == "train":
            return self._loader(self.examples(self.trained_patients()), shuffle=True)
        import torch
        from lightning.pytorch.utilities import CombinedLoader
        from torch.utils.data import RandomSampler

        forget = self.forget_examples()
        retain = self.examples(self.parts["retain"])
        sampler = RandomSampler(retain, replacement=False, num_samples=min(len(forget), len(retain)),
                                generator=torch.Generator().manual_seed(self.split_seed + 1))
        loaders = {"forget": self._loader(forget, shuffle=True),
                   "retain": DataLoader(retain, batch_size=self.batch_size, sampler=sampler, collate_fn=collate,
                                        num_workers=self.num_workers)}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        """Question-answer pairs of a seeded sample of trained patients (is the model memorising?); in ``unlearn``
        mode, the forget patients' and a seeded sample of retain patients' (two loaders)."""
        self.setup()
        if self.mode == "unlearn":
            retain = self._seeded_sample(self.parts["retain"])
            return [self.part_dataloader("forget"), self._loader(self.examples(retain, "qa"), False)]
        return self._loader(self.examples(self._seeded_sample(self.trained_patients()), "qa"), shuffle=False)

    def _seeded_sample(self, patients: list[int], size: int = 16) -> list[int]:
        """Up to ``size`` of ``patients``, drawn with ``split_seed``, sorted."""
        sample = np.random.default_rng(self.split_seed).choice(patients, size=min(len(patients), size), replace=False)
        return sorted(int(p) for p in sample)

    def part_dataloader(self, part: str, content: str = "qa") -> DataLoader:
        """Unshuffled examples of one part."""
        self.setup()
        return self._loader(self.examples(self.parts[part], content), shuffle=False)


#: Data settings that must equal the trained model's for an unlearning run (the forget fraction may differ: forget
#: sets are nested, so one original model serves 1%, 5% and 10% requests).
LM_DATA_IDENTITY = ("corpus", "num_patients", "corpus_seed", "split_seed", "holdout_fraction")


def check_lm_data(provenance: dict[str, Any], datamodule: Any, path: str, forget_set: bool = True) -> None:
    """Refuse to unlearn or evaluate with a corpus or split other than the one the model was trained on; with
    ``forget_set``, also an unlearned or retain-only model whose forget set differs from the datamodule's when
    either was given as a patient-ID request (fraction-based forget sets are nested and checked by their fraction)."""
    trained = provenance.get("data", {})
    for key in LM_DATA_IDENTITY:
        if key in trained and trained[key] != getattr(datamodule, key):
            raise ValueError(f"--data.{key}={getattr(datamodule, key)!r} differs from the value the model in {path} "
                             f"was trained with ({trained[key]!r}); pass the training run's data settings")
    unlearned = provenance.get("kind") == "unlearned"
    if not forget_set or not (unlearned or trained.get("exclude_forget")):
        return
    if datamodule.forget is None and trained.get("forget_by") != "patient_ids":
        return
    if trained.get("forget_fingerprint") != datamodule.forget_fingerprint:
        how = ("a forget request of patient IDs" if trained.get("forget_by") == "patient_ids" else
               "a forget fraction" if trained.get("forget_by") == "fraction" else "a forget set of unrecorded identity")
        given = ("--forget FILE" if trained.get("forget_by") == "patient_ids" else
                 f"--data.forget_fraction {trained['forget_fraction']}" if "forget_fraction" in trained else "it")
        raise ValueError(f"{path} was {'unlearned from' if unlearned else 'trained without'} another forget set "
                         f"({how}, {trained.get('forget_patients', '?')} patients) than the one given here "
                         f"({'--forget' if datamodule.forget else '--data.forget_fraction'}, "
                         f"{len(datamodule.parts['forget'])} patients); pass the same forget set ({given})")
